r"""Activations as proximal operators.

A scalar map :math:`\sigma` is :math:`\operatorname{prox}_f` of a proper, lower semicontinuous,
convex :math:`f` iff :math:`\sigma` is nondecreasing and 1-Lipschitz. Then, on the range of
:math:`\sigma`,

.. math::

    f'(y) = \sigma^{-1}(y) - y, \qquad f = +\infty \text{ outside the closure of the range},

and the potential :math:`\Phi = (f + |\cdot|^2/2)^*` is convex and 1-smooth with
:math:`\Phi' = \sigma`. The pair is fixed up to one constant by the Fenchel--Young equality
:math:`\Phi(t) + f(\sigma(t)) + \sigma(t)^2/2 = t\,\sigma(t)`.

============  =============================================  ======================================
sigma         penalty f(y)                                   potential Phi(t)
============  =============================================  ======================================
relu          0 on y >= 0                                    max(t, 0)^2 / 2
leaky_relu a  0 (y >= 0), (1/a - 1) y^2/2 (y < 0)            t^2/2 (t >= 0), a t^2/2 (t < 0)
hardtanh      0 on abs(y) <= 1                               Huber: t^2/2 (abs(t)<=1), abs(t) - 1/2
tanh          ((1+y)log(1+y) + (1-y)log(1-y))/2 - y^2/2      log cosh t
sigmoid       y log y + (1-y) log(1-y) - y^2/2, y in [0, 1]  softplus(t)
softplus      Li2(e^{-y}) - pi^2/6, y >= 0                   -Li2(-e^t)
softsign      -abs(y) - log(1 - abs(y)) - y^2/2, abs(y) < 1  abs(t) - log(1 + abs(t))
arctan        -log cos y - y^2/2, abs(y) < pi/2              t arctan t - log(1 + t^2)/2
identity      0                                              t^2 / 2
============  =============================================  ======================================

(``Li2`` is the dilogarithm; the ``-pi^2/6`` makes the softplus pair satisfy Fenchel--Young.)
``identity`` (the prox of :math:`f = 0`) makes a layer linear (in a deep OptEq chain, an identity
tier under a relu tier gives it the unit layer's recurrence: docs/maths.md, section 4).
GELU, SiLU/swish and Mish are not proximal operators: they decrease on a half-line and have slope
above 1 somewhere.

Examples:
  >>> import jax.numpy as jnp
  >>> from optjax import activations
  >>> print(*activations.available())
  relu leaky_relu hardtanh tanh sigmoid softplus softsign arctan identity
  >>> activations.get("sigmoid").slope_bound        # s_sigma = sup sigma'
  0.25
  >>> half_tanh = activations.from_function(lambda t: 0.5 * jnp.tanh(t), name="half_tanh")
  >>> half_tanh.name, half_tanh.slope_bound          # checked: nondecreasing, 1-Lipschitz
  ('half_tanh', 1.0)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from optjax.convex.closed_forms import (
    arctan_fused, arctan_penalty, arctan_potential, fused_with_derivative, hardtanh_fused,
    hardtanh_penalty, huber, identity, identity_penalty, identity_potential, leaky_relu_penalty,
    leaky_relu_potential, log_cosh, relu_fused, relu_penalty, relu_potential, sigmoid_fused,
    sigmoid_penalty, softplus_penalty_derivative, softplus_penalty_value, softplus_potential,
    softsign_penalty, softsign_potential, tanh_fused, tanh_penalty, with_derivative)

__all__ = ["Activation", "NotAProxError", "available", "from_function", "get"]


class NotAProxError(ValueError):
    """The map is not a proximal operator (not nondecreasing, or not 1-Lipschitz).

    Examples:
      >>> import optjax
      >>> optjax.activations.get("gelu")
      Traceback (most recent call last):
      ...
      optjax.convex.activations.NotAProxError: gelu is not a proximal operator ...
    """


@dataclasses.dataclass(frozen=True, eq=False)
class Activation:
    """sigma = prox_f, with penalty f and potential Phi (Phi' = sigma).

    Attributes:
      name: registry name, or the user's name for a :func:`from_function` activation.
      prox: sigma, elementwise, on arrays of any shape and float dtype (the dtype is kept).
      potential: Phi, elementwise, convex and 1-smooth with Phi' = sigma.
      penalty: f, elementwise, ``+inf`` outside its domain; ``None`` if unknown.
      slope_bound: an upper bound on sup sigma' (1/4 for the sigmoid), used for strong
        convexity moduli.
      params: hashable parameters, e.g. ``(("slope", 0.1),)``.
      fused: ``t -> (Phi(t), sigma(t))`` sharing work between the two (for tanh, Phi from
        ``tanh t`` costs one ``log1p``; separately it costs ``sinh``, ``exp`` and two ``log1p``),
        or ``None``: :meth:`potential_and_prox` then evaluates both.

    Equality and hashing use ``(name, params)`` only, so an activation can be a static jit
    argument and ``get("leaky_relu", slope=0.1)`` twice gives equal activations.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optjax
      >>> act = optjax.activations.get("leaky_relu", slope=0.1)
      >>> act
      Activation('leaky_relu', slope=0.1)
      >>> t = jnp.array([-1.0, 2.0])
      >>> act(t), act.potential(t)                 # sigma = prox_f, and Phi with Phi' = sigma
      (Array([-0.1,  2. ], dtype=float32), Array([0.05, 2.  ], dtype=float32))
    """

    name: str
    prox: Callable
    potential: Callable
    penalty: Callable | None
    slope_bound: float = 1.0
    params: tuple = ()
    fused: Callable | None = None

    def __call__(self, t: jax.Array) -> jax.Array:
        return self.prox(t)

    def potential_and_prox(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(Phi(t), sigma(t))``, elementwise: what the objective and the map of one
        evaluation need, at the cost of sigma plus what Phi adds to it."""
        if self.fused is None:
            return self.potential(t), self.prox(t)
        return self.fused(t)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Activation):
            return NotImplemented
        return (self.name, self.params) == (other.name, other.params)

    def __hash__(self) -> int:
        return hash((self.name, self.params))

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.params)
        return f"Activation({self.name!r}{args})"


def _make(name: str, prox: Callable, potential: Callable, penalty: Callable | None,
          slope_bound: float = 1.0, params: tuple = (), fused: Callable | None = None
          ) -> Activation:
    fused = None if fused is None else fused_with_derivative(fused, prox)
    return Activation(name, prox, with_derivative(potential, prox), penalty, slope_bound, params,
                      fused)


def _leaky_relu(slope: float) -> Activation:
    prox = functools.partial(jax.nn.leaky_relu, negative_slope=slope)
    return _make(
        "leaky_relu",
        prox,
        functools.partial(leaky_relu_potential, slope),
        functools.partial(leaky_relu_penalty, slope),
        params=(("slope", slope),),
    )


_REGISTRY: dict[str, Callable[..., Activation]] = {
    "relu": lambda: _make("relu", jax.nn.relu, relu_potential, relu_penalty, fused=relu_fused),
    "leaky_relu": _leaky_relu,
    "hardtanh": lambda: _make("hardtanh", jax.nn.hard_tanh, huber, hardtanh_penalty,
                              fused=hardtanh_fused),
    "tanh": lambda: _make("tanh", jnp.tanh, log_cosh, tanh_penalty, fused=tanh_fused),
    "sigmoid": lambda: _make(
        "sigmoid", jax.nn.sigmoid, jax.nn.softplus, sigmoid_penalty, slope_bound=0.25,
        fused=sigmoid_fused,
    ),
    "softplus": lambda: _make(
        "softplus",
        jax.nn.softplus,
        softplus_potential,
        with_derivative(softplus_penalty_value, softplus_penalty_derivative),
    ),
    "softsign": lambda: _make("softsign", jax.nn.soft_sign, softsign_potential, softsign_penalty),
    "arctan": lambda: _make("arctan", jnp.arctan, arctan_potential, arctan_penalty,
                            fused=arctan_fused),
    "identity": lambda: _make("identity", identity, identity_potential, identity_penalty),
}

_DEFAULTS: dict[str, dict] = {"leaky_relu": {"slope": 0.01}}

_NOT_PROX = {
    "gelu": "it decreases on (-inf, -0.75] (minimum gelu(-0.75) = -0.17) and its slope reaches "
    "1.13 > 1 near t = 1.41",
    "silu": "it decreases on (-inf, -1.28] (minimum silu(-1.28) = -0.28) and its slope reaches "
    "1.10 > 1 near t = 2.40",
    "mish": "it decreases on (-inf, -1.19] (minimum mish(-1.19) = -0.31) and its slope reaches "
    "1.09 > 1 near t = 1.49",
}
_NOT_PROX["swish"] = _NOT_PROX["silu"]


def available() -> tuple[str, ...]:
    """Names of the registry activations (all of them proximal operators)."""
    return tuple(_REGISTRY)


def get(name: str, **params: float) -> Activation:
    """The registry activation ``name``; ``leaky_relu`` takes ``slope`` in (0, 1] (default 0.01).

    Raises:
      NotAProxError: for known activations that are not proximal operators (gelu, silu, swish,
        mish).
      ValueError: for an unknown name, unknown parameters, or a slope outside (0, 1].
    """
    if name in _NOT_PROX:
        raise NotAProxError(
            f"{name} is not a proximal operator (a prox must be nondecreasing and 1-Lipschitz): "
            f"{_NOT_PROX[name]}. The equilibrium would not minimise a convex objective. Use a "
            f"prox activation instead, e.g. softplus (a smooth ReLU), relu or tanh; available: "
            f"{', '.join(available())}."
        )
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown activation {name!r}; available: {', '.join(available())} "
            "(or wrap your own map with optjax.activations.from_function)"
        )
    defaults = _DEFAULTS.get(name, {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        takes = f"it takes: {', '.join(defaults)}" if defaults else "it takes no parameters"
        raise ValueError(
            f"activation {name!r} got unknown parameter(s) {', '.join(unknown)}; {takes}"
        )
    values = {**defaults, **params}
    if name == "leaky_relu":
        slope = float(values["slope"])
        if not 0 < slope <= 1:
            raise ValueError(
                f"leaky_relu slope must be in (0, 1] (slope > 1 is not 1-Lipschitz, slope < 0 not "
                f"monotone, slope 0 is relu), got {slope}"
            )
        values["slope"] = slope
    return _REGISTRY[name](**values)


_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(64)
_GL_NODES = (_GL_NODES + 1) / 2  # mapped from [-1, 1] to [0, 1]
_GL_WEIGHTS = _GL_WEIGHTS / 2


def _quadrature_potential(fn: Callable, offset: float) -> Callable:
    """Phi(t) = offset + int_0^t fn = offset + t int_0^1 fn(t x) dx by 64-node Gauss--Legendre.

    Elementwise; exact to rounding for analytic fn on moderate |t|; a kink of fn inside (0, t)
    costs accuracy (pass ``potential=`` then). The derivative is fn itself (custom JVP), not the
    quadrature's.
    """

    def value(t: jax.typing.ArrayLike) -> jax.Array:
        t = jnp.asarray(t, jnp.result_type(t, float))
        x = jnp.asarray(_GL_NODES, t.dtype)
        w = jnp.asarray(_GL_WEIGHTS, t.dtype)
        return offset + t * jnp.sum(w * fn(t[..., None] * x), axis=-1)

    return with_derivative(value, fn)


def _check_grid(lo: float, hi: float, num_points: int, far: float = 0.0) -> np.ndarray:
    """A dense uniform grid on [lo, hi], a fine grid around 0 (uniform and geometric), and
    geometric tails from the interval's ends out to ``-far`` and ``far`` (where the map of a
    large pre-activation is decided: monotone and 1-Lipschitz must hold there too).

    Points closer than 1e-6 relative are merged: their difference quotients would be rounding.
    """
    geometric = np.logspace(-9, 0, 181)
    fine = np.concatenate([np.linspace(-1, 1, 4001), geometric, -geometric, [0.0]])
    fine = fine[(fine >= lo) & (fine <= hi)]
    tails = []
    if far > max(hi, 0.0):
        tails.append(np.geomspace(max(hi, 1.0), far, 600))
    if -far < min(lo, 0.0):
        tails.append(-np.geomspace(max(-lo, 1.0), far, 600))
    t = np.sort(np.concatenate([np.linspace(lo, hi, num_points), fine, *tails]))
    gap = np.diff(t) > 1e-6 * np.maximum(np.abs(t[1:]), np.abs(t[:-1]))
    return t[np.concatenate([[True], gap])]


def _check_prox(fn: Callable, name: str, check_interval: tuple[float, float], num_points: int,
                far: float = 0.0) -> float:
    """Check numerically that fn is nondecreasing and 1-Lipschitz; return its max slope.

    Evaluated in float64 when jax_enable_x64 is on (float32 otherwise). The tolerances allow
    rounding: a drop of 1e-10 relative, and a slope of 1 + 1e-6 once the rounding of the
    difference quotient is taken off.
    """
    lo, hi = map(float, check_interval)
    t = jnp.unique(jnp.asarray(_check_grid(lo, hi, num_points, far)))  # float32 may merge
    s = fn(t)
    if jnp.shape(s) != t.shape or jnp.shape(fn(t[:6].reshape(2, 3))) != (2, 3):
        raise NotAProxError(
            f"{name} is not elementwise: it maps an array of shape {t.shape} to shape "
            f"{jnp.shape(s)}; an activation must keep the shape of its input"
        )
    eps = float(max(jnp.finfo(t.dtype).eps, jnp.finfo(jnp.result_type(s, float)).eps))
    t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
    bad = ~np.isfinite(s)
    if bad.any():
        i = np.argmax(bad)
        raise NotAProxError(
            f"{name} returned a non-finite value sigma({t[i]:.4g}) = {s[i]} on the checked "
            f"points (dense on [{lo}, {hi}], geometric out to +-{far:g}); an activation must be "
            "finite everywhere"
        )
    ds, dt = np.diff(s), np.diff(t)
    scale = np.abs(s[1:]) + np.abs(s[:-1])
    problems = []
    if np.any(ds < -max(1e-10, 8 * eps) * (1 + scale)):
        # Report the maximal nonincreasing stretch around the largest drop.
        k = np.argmin(ds)
        rises = np.flatnonzero(ds > 0)
        a = rises[rises < k].max(initial=-1) + 1
        b = rises[rises > k].min(initial=ds.size)
        problems.append(
            f"it is not nondecreasing: {name} decreases on [{t[a]:.3g}, {t[b]:.3g}]: "
            f"sigma({t[b]:.3g}) = {s[b]:.3g} < sigma({t[a]:.3g}) = {s[a]:.3g}"
        )
    slope = ds / dt
    slope_low = slope - 8 * eps * scale / dt  # a lower bound despite rounding
    if np.any(slope_low > 1 + 1e-6):
        k = np.argmax(slope_low)
        problems.append(
            f"it is not 1-Lipschitz: slope {slope[k]:.4g} > 1 near t = {(t[k] + t[k + 1]) / 2:.3g}"
        )
    if problems:
        raise NotAProxError(
            f"{name} is not a proximal operator (a prox must be nondecreasing and 1-Lipschitz): "
            + "; and ".join(problems)
            + ". Use a registry activation (optjax.activations.available()), or make it monotone "
            "and rescale it, e.g. t -> sigma(t) / L for a map with slope at most L."
        )
    return float(slope_low.max())


def from_function(
    fn: Callable,
    name: str | None = None,
    *,
    potential: Callable | None = None,
    penalty: Callable | None = None,
    slope_bound: float | None = None,
    check_interval: tuple[float, float] = (-30.0, 30.0),
    num_points: int = 20001,
    far: float = 1e6,
) -> Activation:
    """Wrap an elementwise map ``fn`` as an :class:`Activation`, after checking it is a prox.

    ``fn`` is evaluated on ``num_points`` points of ``check_interval``, a fine grid around 0, and
    geometric tails out to ``-far`` and ``far`` (1200 more points); it must keep shapes, be
    finite, nondecreasing and 1-Lipschitz there (else :class:`NotAProxError`), and its slope must
    not exceed ``slope_bound`` (else ``ValueError``). A numerical check on finitely many points
    cannot prove the property everywhere: a map that misbehaves only between the checked points,
    or beyond ``far``, passes it.

    Args:
      fn: sigma, elementwise on jax arrays; may be an :class:`Activation`, whose name, potential,
        penalty and slope bound are then the defaults.
      name: defaults to ``fn.__name__``.
      potential: Phi with Phi' = fn; default: Phi(0) + int_0^t fn by 64-node Gauss--Legendre
        (jit-able, derivative fn), with Phi(0) = 0, or -f(sigma(0)) - sigma(0)^2/2 when a penalty
        f is given, so that Phi = (f + (.)^2/2)^*.
      penalty: f with fn = prox_f, ``+inf`` outside its domain; default ``None`` (unknown).
      slope_bound: an upper bound on sup fn'; default 1.

    Equality (hence jit caching) is on ``fn``'s identity and the arguments given, so two
    different maps never share a compiled function.
    """
    base = fn if isinstance(fn, Activation) else None
    if name is None:
        name = base.name if base else getattr(fn, "__name__", type(fn).__name__)
    bound = slope_bound if slope_bound is not None else (base.slope_bound if base else 1.0)
    max_slope = _check_prox(fn, name, check_interval, num_points, far)
    if max_slope > bound * (1 + 1e-6):
        raise ValueError(
            f"slope_bound={bound} is below the observed slope {max_slope:.6g} of {name}; "
            "pass slope_bound >= sup sigma' (it sets the strong convexity modulus)"
        )
    params = (
        ("fn", fn),
        ("potential", potential),
        ("penalty", penalty),
        ("slope_bound", slope_bound),
    )
    if base is not None and penalty is None:
        penalty = base.penalty
        potential = base.potential if potential is None else potential
    if potential is None:
        offset = 0.0
        if penalty is not None:
            # Fenchel--Young at t = 0 fixes Phi(0) = -f(sigma(0)) - sigma(0)^2/2.
            s0 = fn(jnp.zeros(()))
            offset = -float(penalty(s0) + s0 * s0 / 2)
            if not math.isfinite(offset):
                raise ValueError(f"penalty(sigma(0)) of {name} must be finite, got {-offset}")
        potential = _quadrature_potential(fn, offset)
    return Activation(name, fn, potential, penalty, float(bound), params)
