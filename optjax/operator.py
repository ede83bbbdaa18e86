r"""The unit operator and the equilibrium map, for one sample.

.. math::

    T(z) = W^\top \sigma(W z + c) = \nabla \psi(z), \quad \psi(z) = \textstyle\sum_i \Phi((Wz + c)_i),

    S(z) = \operatorname{prox}_R(T(z)) = \operatorname{prox}_R\big(z - \nabla(G - R)(z)\big).

:math:`S` is one forward-backward step with step 1 on :math:`G + R`; its fixed points are the
minimisers. The batched, public form is :func:`operator`.
"""

from __future__ import annotations

import jax

from optjax import linear_map
from optjax.problem import OptEqProblem, injection

__all__ = ["unit_operator", "equilibrium_map", "operator"]


def unit_operator(weight, activation, z: jax.Array, c: jax.Array, compute_dtype=None) -> jax.Array:
    r""":math:`T(z) = W^\top \sigma(W z + c)` for one sample.

    With ``compute_dtype`` (mixed precision) the two products with W run in that dtype; the
    activation, the state and the result stay in ``z``'s dtype."""
    pre = linear_map.apply(weight, z, compute_dtype) + c
    return linear_map.transpose(weight, activation(pre), compute_dtype)


def equilibrium_map(activation, z: jax.Array, params, data, compute_dtype=None) -> jax.Array:
    r""":math:`S(z) = \operatorname{prox}_R(T(z))` for one sample.

    ``params = (weight, prior)`` are shared by the batch; ``data = (c, feature)`` is per sample.
    """
    weight, prior = params
    c, feature = data
    t = unit_operator(weight, activation, z, c, compute_dtype)
    return t if prior is None else prior.prox(t, feature)


def operator(problem: OptEqProblem, z: jax.Array, x: jax.Array, feature=None) -> jax.Array:
    """The batched equilibrium map ``S(z)`` (``T(z)`` when the problem has no prior)."""
    c = injection(problem, x)
    params = (problem.weight, problem.prior)
    return jax.vmap(
        lambda zi, ci, fi: equilibrium_map(
            problem.activation, zi, params, (ci, fi), problem.compute_dtype
        )
    )(z, c, feature)
