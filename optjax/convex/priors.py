r"""Priors that change the convex problem (docs/maths.md, section 5).

Minimising :math:`F(z) = G(z) + R(z)` with :math:`R` convex and prox-friendly by
forward-backward splitting with step 1 gives the layer

.. math:: z = \operatorname{prox}_R(T(z)),

whose fixed points are exactly :math:`\arg\min (G + R)`. Each prior below is a pytree holding
its parameters (differentiable where they are real numbers) and gives, for one sample,

* ``value(z, feature)``: :math:`R(z)` (``+inf`` outside the domain of an indicator),
* ``prox(v, feature)``: :math:`\operatorname{prox}_R(v) = \arg\min_z R(z) + \|z - v\|^2/2`,
* ``strong_convexity``: the modulus :math:`R` adds to :math:`G` (``mu`` for the quadratic prior),
* ``scalar_jacobian``: whether the Jacobian of the prox is a multiple of the identity, which keeps
  the backward system symmetric so conjugate gradients still apply,
* ``defects()``: the :class:`optjax.Defect` bits of its parameters (traceable): a
  negative weight makes R nonconvex, empty bounds make it infeasible.

``feature`` is the per-sample vector ``u`` of the quadratic prior and is ignored by the others.
Parameters that are concrete numbers are checked on construction (a ValueError says what to
change); traced ones are checked by the engine, which reports ``Status.NONCONVEX`` or
``Status.INFEASIBLE`` with the reason.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> import optjax
  >>> from optjax import priors
  >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
  >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
  >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
  >>> sparse = optjax.OptEqProblem(W, "relu", prior=priors.L1(0.5))   # R(z) = 0.5 ||z||_1
  >>> z, info = optjax.equilibrium(sparse, x)
  >>> bool(info.converged.all())
  True
  >>> priors.Box(-1.0, 1.0).prox(jnp.array([-2.0, 0.5, 3.0]))        # clipping
  Array([-1. ,  0.5,  1. ], dtype=float32)
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Prior", "L1", "Nonnegative", "Box", "Ball", "Quadratic"]


def _slack(x: jax.Array) -> np.floating:
    # Indicators accept points within rounding of the set: a projection computed in floating
    # point may land a few ulps outside it.
    return 64 * jnp.finfo(x.dtype).eps


# Defect bits (the values of optjax.Defect, which imports this module).
_NONCONVEX, _INFEASIBLE = 2, 4


def _concrete(value: Any) -> np.ndarray | None:
    """``value`` as a numpy array when it is a concrete number or array, else None (a tracer,
    or a placeholder during pytree unflattening)."""
    if isinstance(value, jax.core.Tracer) or not isinstance(
            value, (int, float, np.ndarray, np.generic, jax.Array)):
        return None
    return np.asarray(value)


def _flag(condition: jax.Array, bit: int) -> jax.Array:
    return jnp.where(jnp.any(condition), bit, 0).astype(jnp.int32)


class Prior:
    """Base class of the priors; see the module docstring for the interface."""

    scalar_jacobian: ClassVar[bool] = False
    needs_feature: ClassVar[bool] = False

    def defects(self) -> jax.Array:
        """int32 bit set of :class:`optjax.Defect` for the parameters (0: valid)."""
        return jnp.zeros((), jnp.int32)

    @property
    def strong_convexity(self) -> jax.Array | float:
        return 0.0

    def value(self, z: jax.Array,
              feature: jax.Array | None = None) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def prox(self, v: jax.Array,
             feature: jax.Array | None = None) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class L1(Prior):
    r""":math:`R(z) = \lambda \|z\|_1` (sparse code); prox is soft-thresholding at :math:`\lambda`."""

    lam: jax.Array | float

    def __post_init__(self) -> None:
        lam = _concrete(self.lam)
        if lam is not None and not np.all(lam >= 0):
            raise ValueError(f"L1(lam) needs lam >= 0 (lam ||z||_1 is convex only then); got "
                             f"lam = {self.lam!r}")

    def defects(self) -> jax.Array:
        return _flag(~(jnp.asarray(self.lam) >= 0), _NONCONVEX)

    def value(self, z: jax.Array, feature: jax.Array | None = None) -> jax.Array:
        return self.lam * jnp.sum(jnp.abs(z))

    def prox(self, v: jax.Array, feature: jax.Array | None = None) -> jax.Array:
        return jnp.sign(v) * jnp.maximum(jnp.abs(v) - self.lam, 0.0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Nonnegative(Prior):
    r""":math:`R` = indicator of :math:`z \ge 0`; prox is ReLU."""

    def value(self, z: jax.Array, feature: jax.Array | None = None) -> jax.Array:
        inside = jnp.all(z >= -_slack(z) * (1 + jnp.max(jnp.abs(z))))
        return jnp.where(inside, 0.0, jnp.inf).astype(z.dtype)

    def prox(self, v: jax.Array, feature: jax.Array | None = None) -> jax.Array:
        return jnp.maximum(v, 0.0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Box(Prior):
    r""":math:`R` = indicator of :math:`\text{lower} \le z \le \text{upper}`; prox is clipping."""

    lower: jax.Array | float
    upper: jax.Array | float

    def __post_init__(self) -> None:
        lo, hi = _concrete(self.lower), _concrete(self.upper)
        if lo is not None and hi is not None and not np.all(lo <= hi):
            raise ValueError(f"Box(lower, upper) needs lower <= upper everywhere (else the box "
                             f"is empty); got lower = {self.lower!r}, upper = {self.upper!r}")

    def defects(self) -> jax.Array:
        return _flag(~(jnp.asarray(self.lower) <= jnp.asarray(self.upper)), _INFEASIBLE)

    def value(self, z: jax.Array, feature: jax.Array | None = None) -> jax.Array:
        tol = _slack(z) * (1 + jnp.max(jnp.abs(z)))
        inside = jnp.all((z >= self.lower - tol) & (z <= self.upper + tol))
        return jnp.where(inside, 0.0, jnp.inf).astype(z.dtype)

    def prox(self, v: jax.Array, feature: jax.Array | None = None) -> jax.Array:
        return jnp.clip(v, self.lower, self.upper)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Ball(Prior):
    r""":math:`R` = indicator of :math:`\|z\|_2 \le r`; prox is the radial projection
    :math:`v \min(1, r / \|v\|)`."""

    radius: jax.Array | float

    def __post_init__(self) -> None:
        r = _concrete(self.radius)
        if r is not None and not np.all(r >= 0):
            raise ValueError(f"Ball(radius) needs radius >= 0 (else the ball is empty); got "
                             f"radius = {self.radius!r}")

    def defects(self) -> jax.Array:
        return _flag(~(jnp.asarray(self.radius) >= 0), _INFEASIBLE)

    def value(self, z: jax.Array, feature: jax.Array | None = None) -> jax.Array:
        inside = jnp.linalg.norm(z) <= self.radius * (1 + _slack(z))
        return jnp.where(inside, 0.0, jnp.inf).astype(z.dtype)

    def prox(self, v: jax.Array, feature: jax.Array | None = None) -> jax.Array:
        norm = jnp.linalg.norm(v)
        # Safe division: the gradient at v = 0 must not be NaN.
        scale = jnp.where(norm > self.radius, self.radius / jnp.where(norm > 0, norm, 1.0), 1.0)
        return v * scale


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Quadratic(Prior):
    r""":math:`R(z) = \frac{\mu}{2}\|z - u\|^2` (stay near a per-sample feature ``u``).

    The prox is :math:`(v + \mu u)/(1 + \mu)`, so the layer is the skip connection
    :math:`z = (T(z) + \mu u)/(1 + \mu)`; it adds :math:`\mu` to the strong-convexity modulus,
    so the problem is strongly convex for any :math:`\|W\| \le 1`.
    """

    mu: jax.Array | float

    scalar_jacobian: ClassVar[bool] = True
    needs_feature: ClassVar[bool] = True

    def __post_init__(self) -> None:
        mu = _concrete(self.mu)
        if mu is not None and not np.all(mu >= 0):
            raise ValueError(f"Quadratic(mu) needs mu >= 0 (mu/2 ||z - u||^2 is convex only "
                             f"then); got mu = {self.mu!r}")

    def defects(self) -> jax.Array:
        return _flag(~(jnp.asarray(self.mu) >= 0), _NONCONVEX)

    @property
    def strong_convexity(self) -> jax.Array | float:
        return self.mu

    # feature (u) is required here (needs_feature: the engine refuses None), which the base
    # signature shared by every prior cannot say; hence the two ignores.
    def value(self, z: jax.Array, feature: jax.Array | None = None) -> jax.Array:
        return 0.5 * self.mu * jnp.sum((z - feature) ** 2)  # type: ignore[operator]

    def prox(self, v: jax.Array, feature: jax.Array | None = None) -> jax.Array:
        return (v + self.mu * feature) / (1.0 + self.mu)  # type: ignore[operator]
