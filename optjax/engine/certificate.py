r"""Suboptimality certificates at any point.

Let :math:`S = \operatorname{prox}_R \circ T`, :math:`z^+ = S(z)` and :math:`r = \|z - z^+\|`.
From :math:`z - T(z) - z^+ \in \partial R(z^+)` one gets
:math:`T(z) - T(z^+) \in \partial F(z^+)`, and :math:`T` is nonexpansive, so
:math:`\operatorname{dist}(0, \partial F(z^+)) \le r`. If :math:`F` is
:math:`\mu`-strongly convex:

.. math::

    F(z^+) - F^\star \le \frac{r^2}{2\mu}, \qquad \|z^+ - z^\star\| \le \frac{r}{\mu}.

Without a prior the same bounds also hold at :math:`z` itself (:math:`r = \|\nabla G(z)\|`), and,
:math:`G` being 1-smooth, :math:`G(z) - G^\star \ge r^2/2`: the bound is tight within the factor
:math:`1/\mu`. The engine returns :math:`z^+`, so the certificate describes the returned point.

:class:`Certificate` is the one certificate type of every problem: problems without an objective
or a modulus report NaN and infinite bounds (see :mod:`optjax.engine.problem`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

if TYPE_CHECKING:  # problem.py imports this module (the full names keep the docs' links unique)
    import optjax.engine.problem

__all__ = ["Certificate", "certificate", "bounds"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Certificate:
    """What is certified about the returned points, per sample (``modulus`` and
    ``weight_norm`` are shared by the batch).

    Attributes:
      residual: r = ||z - S(z)|| at the solver's last point z (the returned point is S(z)).
      objective: the problem's objective at the returned point (NaN if it has none).
      modulus: the strong-convexity (or contraction) modulus the bounds use (<= 0 or NaN:
        nothing certified).
      suboptimality_bound: F(returned) - F* <= this (inf when nothing is certified).
      distance_bound: ||returned - z*|| <= this (inf when nothing is certified).
      weight_norm: the operator norm the modulus was computed from (||W|| for OptEq; NaN
        when no norm was computed).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
      >>> problem = optjax.OptEqProblem(W, "relu")
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
      >>> z, info = optjax.equilibrium(problem, x)
      >>> cert = info.certificate
      >>> round(float(cert.weight_norm), 3), round(float(cert.modulus), 3)   # ||W||, 1 - ||W||^2
      (0.9, 0.19)
      >>> bool((cert.distance_bound < 1e-4).all())          # ||z - z*|| <= r / mu, per sample
      True
      >>> bool((cert.suboptimality_bound < 1e-8).all())     # F(z) - F* <= r^2 / (2 mu)
      True
    """

    residual: jax.Array
    objective: jax.Array
    modulus: jax.Array
    suboptimality_bound: jax.Array
    distance_bound: jax.Array
    weight_norm: jax.Array


def bounds(residual: jax.Array, modulus: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(r^2 / (2 mu), r / mu), or (inf, inf) where mu <= 0 or is NaN."""
    ok = modulus > 0  # False for NaN
    safe = jnp.where(ok, modulus, 1.0)
    sub = jnp.where(ok, residual**2 / (2 * safe), jnp.inf)
    dist = jnp.where(ok, residual / safe, jnp.inf)
    return sub.astype(residual.dtype), dist.astype(residual.dtype)


def make_certificate(problem: optjax.engine.problem.EquilibriumProblem, point: jax.Array,
                     residual: jax.Array, params: Any, data: Any,
                     conditions: optjax.engine.problem.Conditions) -> Certificate:
    """The certificate of an OptEq problem's returned points ``point = S(z)`` whose residual
    ``||z - S(z)||`` is known (the objective costs one product with W per sample)."""
    frozen = jax.lax.stop_gradient
    map_fn = problem.equilibrium_map()
    value = jax.vmap(map_fn.objective, in_axes=(0, None, 0))(
        frozen(point), frozen(params), frozen(data))
    residual = frozen(residual)
    sub, dist = bounds(residual, frozen(conditions.modulus))
    return Certificate(
        residual=residual,
        objective=value.astype(residual.dtype),
        modulus=frozen(conditions.modulus),
        suboptimality_bound=sub,
        distance_bound=dist,
        weight_norm=frozen(conditions.norm),
    )


def certificate(problem: optjax.engine.problem.EquilibriumProblem, z: jax.Array, x: jax.Array,
                feature: jax.Array | None = None) -> Certificate:
    """The certificate of a batch of points ``z`` of an OptEq problem (costs one evaluation of
    S and, unless ``problem.weight_norm`` is set, the norm of W): residual and bounds describe
    ``S(z)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
      >>> problem = optjax.OptEqProblem(W, "relu")
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
      >>> z, info = optjax.equilibrium(problem, x)
      >>> at_zero = optjax.certificate(problem, jnp.zeros((2, 4)), x)   # of any points, here 0
      >>> at_star = optjax.certificate(problem, z, x)                   # of the equilibrium
      >>> bool((at_star.distance_bound < 1e-4).all()), at_star.residual.shape
      (True, (2,))
      >>> bool((at_zero.distance_bound > at_star.distance_bound).all())
      True
    """
    params = problem.parameters()
    data = problem.sample_data(x, feature)
    image = jax.vmap(problem.equilibrium_map(), in_axes=(0, None, 0))(z, params, data)
    residual = jnp.sqrt(jnp.sum((z - image) ** 2, axis=tuple(range(1, z.ndim))))
    return make_certificate(problem, image, residual, params, data,
                            problem.conditions(certify=True))
