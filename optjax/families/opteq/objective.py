r"""The explicit convex objective whose minimiser is the equilibrium, and its dual.

Primal (docs/maths.md, section 3, with the prior of section 5):

.. math::

    F(z) = G(z) + R(z), \qquad G(z) = \tfrac12\|z\|^2 - \textstyle\sum_i \Phi\big((W z + c)_i\big),
    \qquad \nabla G(z) = z - T(z).

Dual, in the variable :math:`s = \sigma(W z + c)` (no prior):

.. math::

    H(s) = \textstyle\sum_i f(s_i) + \tfrac12 s^\top (I - W W^\top) s - c^\top s,

with :math:`s^\star = \sigma(W W^\top s^\star + c)`, :math:`z^\star = W^\top s^\star` and
:math:`\min G = \min H`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from optjax.families.opteq.map import value_and_map
from optjax.families.opteq.problem import OptEqProblem, injection
from optjax.linalg import linear_map

__all__ = ["objective", "dual_objective", "primal_value", "dual_value"]


def primal_value(activation, z, params, data) -> jax.Array:
    """F(z) = G(z) + R(z) for one sample (``params = (weight, prior)``, ``data = (c, feature)``)."""
    return value_and_map(activation, z, params, data)[0]


def dual_value(activation, weight, s, c) -> jax.Array:
    """H(s) for one sample."""
    if activation.penalty is None:
        raise ValueError(
            f"the dual objective needs the penalty f of activation {activation.name!r}; "
            "pass penalty= to optjax.activations.from_function"
        )
    wts = linear_map.transpose(weight, s)
    quad = 0.5 * (jnp.sum(s * s) - jnp.sum(wts * wts))
    return jnp.sum(activation.penalty(s)) + quad - jnp.sum(c * s)


def objective(problem: OptEqProblem, z: jax.Array, x: jax.Array, feature=None) -> jax.Array:
    """Per-sample primal objective F(z; x) = G(z; x) + R(z), shape ``(B,)``."""
    map_fn = problem.equilibrium_map()
    return jax.vmap(map_fn.objective, in_axes=(0, None, 0))(
        z, problem.parameters(), problem.sample_data(x, feature))


def dual_objective(problem: OptEqProblem, s: jax.Array, x: jax.Array) -> jax.Array:
    """Per-sample dual objective H(s; x), shape ``(B,)``; defined for problems without a prior."""
    if problem.prior is not None:
        raise ValueError("dual_objective is defined for problems without a prior (R = 0)")
    c = injection(problem, x)
    return jax.vmap(lambda si, ci: dual_value(problem.activation, problem.weight, si, ci))(s, c)
