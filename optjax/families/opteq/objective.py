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

from typing import Any

import jax
import jax.numpy as jnp

from optjax.convex.activations import Activation
from optjax.families.opteq.map import value_and_map
from optjax.families.opteq.problem import OptEqProblem, injection
from optjax.linalg import linear_map

__all__ = ["objective", "dual_objective", "primal_value", "dual_value"]


def primal_value(activation: Activation, z: jax.Array, params: Any, data: Any) -> jax.Array:
    """F(z) = G(z) + R(z) for one sample (``params = (weight, prior)``, ``data = (c, feature)``)."""
    return value_and_map(activation, z, params, data)[0]


def dual_value(activation: Activation, weight: Any, s: jax.Array, c: jax.Array) -> jax.Array:
    """H(s) for one sample."""
    if activation.penalty is None:
        raise ValueError(
            f"the dual objective needs the penalty f of activation {activation.name!r}; "
            "pass penalty= to optjax.activations.from_function"
        )
    wts = linear_map.transpose(weight, s)
    quad = 0.5 * (jnp.sum(s * s) - jnp.sum(wts * wts))
    return jnp.sum(activation.penalty(s)) + quad - jnp.sum(c * s)


def objective(problem: OptEqProblem, z: jax.Array, x: jax.Array,
              feature: jax.Array | None = None) -> jax.Array:
    """Per-sample primal objective F(z; x) = G(z; x) + R(z), shape ``(B,)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
      >>> problem = optjax.OptEqProblem(W, "relu")
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
      >>> z, info = optjax.equilibrium(problem, x)
      >>> F = optjax.objective(problem, z, x)                   # per sample
      >>> F.shape, bool(jnp.allclose(F, info.objective))
      ((2,), True)
      >>> bool((F <= optjax.objective(problem, jnp.zeros_like(z), x)).all())   # z* minimises F
      True
    """
    map_fn = problem.equilibrium_map()
    return jax.vmap(map_fn.objective, in_axes=(0, None, 0))(
        z, problem.parameters(), problem.sample_data(x, feature))


def dual_objective(problem: OptEqProblem, s: jax.Array, x: jax.Array) -> jax.Array:
    """Per-sample dual objective H(s; x), shape ``(B,)``; defined for problems without a prior.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
      >>> problem = optjax.OptEqProblem(W, "relu")
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
      >>> z, info = optjax.equilibrium(problem, x)
      >>> s = jax.nn.relu(z @ W.T + optjax.injection(problem, x))   # s* = sigma(W z* + c)
      >>> H = optjax.dual_objective(problem, s, x)
      >>> bool(jnp.allclose(H, optjax.objective(problem, z, x), atol=1e-4))   # min H = min F
      True
    """
    if problem.prior is not None:
        raise ValueError("dual_objective is defined for problems without a prior (R = 0)")
    c = injection(problem, x)
    return jax.vmap(lambda si, ci: dual_value(problem.activation, problem.weight, si, ci))(s, c)
