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
:math:`1/\mu`. Solvers in optjax return :math:`z^+`, so the certificate describes the returned
point.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from optjax.objective import objective
from optjax.operator import operator
from optjax.problem import OptEqProblem, strong_convexity

__all__ = ["Certificate", "certificate", "bounds"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Certificate:
    """What is certified about a point, per sample (``modulus`` and ``weight_norm`` are shared).

    Attributes:
      residual: r = ||z - S(z)||.
      objective: F at the certified point S(z).
      modulus: the strong-convexity modulus mu of F used for the bounds (<= 0: none certified).
      suboptimality_bound: F(S(z)) - F* <= r^2 / (2 mu) (inf when mu <= 0).
      distance_bound: ||S(z) - z*|| <= r / mu (inf when mu <= 0).
      weight_norm: the ||W|| the modulus was computed from.
    """

    residual: jax.Array
    objective: jax.Array
    modulus: jax.Array
    suboptimality_bound: jax.Array
    distance_bound: jax.Array
    weight_norm: jax.Array


def bounds(residual: jax.Array, modulus: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(r^2 / (2 mu), r / mu), or (inf, inf) where mu <= 0."""
    ok = modulus > 0
    safe = jnp.where(ok, modulus, 1.0)
    sub = jnp.where(ok, residual**2 / (2 * safe), jnp.inf)
    dist = jnp.where(ok, residual / safe, jnp.inf)
    return sub, dist


def certificate(problem: OptEqProblem, z: jax.Array, x: jax.Array, feature=None) -> Certificate:
    """The certificate of a batch of points ``z`` (costs one evaluation of S)."""
    image = operator(problem, z, x, feature)
    residual = jnp.sqrt(jnp.sum((z - image).reshape(z.shape[0], -1) ** 2, axis=1))
    return make_certificate(problem, image, residual, x, feature)


def make_certificate(problem, image, residual, x, feature=None, *, certified=True) -> Certificate:
    """The certificate of points whose image S(z) = ``image`` and residual are already known.

    ``certified=False`` skips ``||W||``: modulus and norm are NaN, the bounds infinite."""
    if certified:
        norm = problem.spectral_norm()
        mu = strong_convexity(dataclasses.replace(problem, weight_norm=norm))
    else:
        norm = mu = jnp.asarray(jnp.nan, residual.dtype)
    sub, dist = bounds(residual, mu)
    return Certificate(
        residual=residual,
        objective=objective(problem, image, x, feature),
        modulus=mu,
        suboptimality_bound=sub,
        distance_bound=dist,
        weight_norm=norm,
    )
