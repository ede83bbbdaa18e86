r"""The closed forms of the registry's activations, elementwise: each potential
:math:`\Phi` (with :math:`\Phi' = \sigma` as a custom JVP), each penalty :math:`f`, and the
fused :math:`(\Phi(t), \sigma(t))` pairs (see :mod:`optjax.convex.activations` for the table).

The potentials are computed to a few units in the last place of their own value (tested against
50-digit arithmetic in tests/convex/test_closed_forms.py), not merely to a few ulp of 1: the
objective F sums them, and the safeguarded Anderson solver compares values of F whose
differences near convergence are far below 1 (its rounding slack assumes this accuracy).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import spence

def with_derivative(value: Callable, derivative: Callable) -> Callable:
    """``value`` with its derivative replaced by ``derivative`` (a custom JVP).

    Used for potentials with derivative sigma: jax then differentiates Phi exactly as sigma
    (Phi'' = sigma' in Hessians), whatever kinks (``|t|``) or NaN-gradient special functions
    (spence) the closed form goes through.
    """
    fn = jax.custom_jvp(value)

    @fn.defjvp
    def _jvp(primals: tuple[jax.Array],
             tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
        (t,), (dt,) = primals, tangents
        return fn(t), derivative(t) * dt

    return fn


def log1p(x: jax.Array) -> jax.Array:
    """log(1 + x) to 2 ulp: XLA's float64 log1p is off by up to 127 ulp near x = -0.414
    (measured against 50-digit arithmetic), log(1 + x) is not for x < -1/4 (1 + x rounds by at
    most eps/2 there, a relative error of at most 1.8 eps in the logarithm)."""
    return jnp.where(x < -0.25, jnp.log(1 + x), jnp.log1p(x))


def xlogx(x: jax.Array) -> jax.Array:
    """x log x with 0 log 0 = 0 (and no NaN gradient at 0)."""
    pos = x > 0
    return jnp.where(pos, x * jnp.log(jnp.where(pos, x, 1)), 0)


def log_cosh(t: jax.Array) -> jax.Array:
    a = jnp.abs(t)
    small = a <= 1
    # log cosh t = log1p(cosh t - 1) = log1p(2 sinh(t/2)^2): no cancellation near 0, where
    # a + log1p(e^{-2a}) - log 2 loses everything below 1e-16 absolute.
    h = jnp.sinh(jnp.where(small, a, 0) / 2)
    return jnp.where(small, log1p(2 * h * h), a + log1p(jnp.exp(-2 * a)) - math.log(2))


def minus_li2_of_minus(x: jax.Array) -> jax.Array:
    """-Li2(-x) = sum_k (-1)^(k+1) x^k / k^2 for 0 <= x <= 1/2 (48 terms: below 1e-18 x)."""
    total = jnp.zeros_like(x)
    for k in range(48, 0, -1):  # Horner: x (1 - x (1/4 - x (1/9 - ...)))
        total = (-1) ** (k + 1) / k**2 + x * total
    return x * total


def softplus_potential(t: jax.Array) -> jax.Array:
    # -Li2(-x) for x = e^t: the power series for x <= 1/2 (spence(1 + x) rounds x away in 1 + x);
    # -spence(1 + x) for 1/2 < x <= 1; for x > 1 the reflection
    # Li2(-x) + Li2(-1/x) = -pi^2/6 - log(x)^2/2 keeps spence's argument in [1, 2].
    series = t <= -math.log(2)
    neg = t <= 0
    ts = jnp.where(series, t, -1.0)
    tn = jnp.where(neg, t, 0)
    tp = jnp.where(neg, 0, t)
    return jnp.where(
        series,
        minus_li2_of_minus(jnp.exp(ts)),
        jnp.where(neg, -spence(1 + jnp.exp(tn)),
                  math.pi**2 / 6 + tp * tp / 2 + spence(1 + jnp.exp(-tp))),
    )


def half_log1p_square(t: jax.Array) -> jax.Array:
    """log(1 + t^2)/2 without overflowing t^2."""
    a = jnp.abs(t)
    big = a > 1
    ab = jnp.where(big, a, 1)
    return jnp.where(big, jnp.log(ab) + 0.5 * log1p(1 / (ab * ab)), 0.5 * log1p(t * t))


def arctan_potential(t: jax.Array) -> jax.Array:
    return t * jnp.arctan(t) - half_log1p_square(t)


def softsign_potential(t: jax.Array) -> jax.Array:
    # a - log1p(a) with log1p(a) = 2 atanh(u), u = a / (2 + a): for a < 1/2,
    # a - log1p(a) = a^2 / (2 + a) - 2 u^3 sum_j u^(2j) / (2j + 3), no cancellation near 0.
    a = jnp.abs(t)
    small = a < 0.5
    am = jnp.where(small, a, 0)
    u = am / (2 + am)
    v = u * u
    tail = jnp.zeros_like(v)
    for j in range(14, -1, -1):  # v <= 1/25: 15 terms reach 1e-21 of the sum
        tail = 1.0 / (2 * j + 3) + v * tail
    return jnp.where(small, am * am / (2 + am) - 2 * u * v * tail, a - log1p(a))


def huber(t: jax.Array) -> jax.Array:
    a = jnp.abs(t)
    return jnp.where(a <= 1, t * t / 2, a - 0.5)


def identity(t: jax.Array) -> jax.Array:
    """The prox of f = 0."""
    return t


def identity_penalty(y: jax.Array) -> jax.Array:
    return jnp.zeros_like(y)


def identity_potential(t: jax.Array) -> jax.Array:
    return t * t / 2


def relu_penalty(y: jax.Array) -> jax.Array:
    return jnp.where(y >= 0, jnp.zeros_like(y), jnp.inf)


def leaky_relu_penalty(slope: float, y: jax.Array) -> jax.Array:
    return jnp.where(y >= 0, 0, (1 / slope - 1) * y * y / 2)


def hardtanh_penalty(y: jax.Array) -> jax.Array:
    return jnp.where(jnp.abs(y) <= 1, jnp.zeros_like(y), jnp.inf)


def tanh_penalty(y: jax.Array) -> jax.Array:
    a = jnp.abs(y)
    inner = a < 1
    ys = jnp.where(inner, y, 0)
    val = ((1 + ys) * log1p(ys) + (1 - ys) * log1p(-ys)) / 2 - ys * ys / 2
    # The closure's value at |y| = 1 is log 2 - 1/2.
    return jnp.where(inner, val, jnp.where(a == 1, math.log(2) - 0.5, jnp.inf))


def sigmoid_penalty(y: jax.Array) -> jax.Array:
    closed = (y >= 0) & (y <= 1)
    ys = jnp.where(closed, y, 0)
    val = xlogx(ys) + xlogx(1 - ys) - ys * ys / 2
    return jnp.where(closed, val, jnp.inf)


def softplus_penalty_value(y: jax.Array) -> jax.Array:
    dom = y >= 0
    ys = jnp.where(dom, y, 0)
    # Li2(u) = spence(1 - u), and 1 - e^{-y} = -expm1(-y) without cancellation.
    return jnp.where(dom, spence(-jnp.expm1(-ys)) - math.pi**2 / 6, jnp.inf)


def softplus_penalty_derivative(y: jax.Array) -> jax.Array:
    # f'(y) = softplus^{-1}(y) - y = log(1 - e^{-y}) on y > 0 (-inf at 0); 0 where f is +inf.
    dom = y >= 0
    ys = jnp.where(dom, y, 1)
    return jnp.where(dom, jnp.log(-jnp.expm1(-ys)), 0)


def softsign_penalty(y: jax.Array) -> jax.Array:
    a = jnp.abs(y)
    inner = a < 1
    as_ = jnp.where(inner, a, 0)
    return jnp.where(inner, -as_ - log1p(-as_) - as_ * as_ / 2, jnp.inf)


def arctan_penalty(y: jax.Array) -> jax.Array:
    near = jnp.abs(y) < math.pi / 2
    c = jnp.cos(jnp.where(near, y, 0))
    # cos can round to <= 0 at the float nearest pi/2: that point is the boundary (+inf).
    inner = near & (c > 0)
    ys = jnp.where(inner, y, 0)
    return jnp.where(inner, -jnp.log(jnp.where(inner, c, 1)) - ys * ys / 2, jnp.inf)


def relu_potential(t: jax.Array) -> jax.Array:
    r = jnp.maximum(t, 0)
    return r * r / 2


def leaky_relu_potential(slope: float, t: jax.Array) -> jax.Array:
    return jnp.where(t >= 0, 1.0, slope) * t * t / 2


def fused_with_derivative(fused: Callable, prox: Callable) -> Callable:
    """``t -> (Phi(t), sigma(t))`` differentiated as ``(sigma dt, sigma' dt)``, like the
    separate potential (custom JVP) and prox."""
    fn = jax.custom_jvp(fused)

    @fn.defjvp
    def _jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]
             ) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
        (t,), (dt,) = primals, tangents
        value, _ = fused(t)
        y, dy = jax.jvp(prox, (t,), (dt,))
        return (value, y), (y * dt, dy)

    return fn


# Phi from sigma(t) and t: each as accurate as the separate potential (tested against 50-digit
# arithmetic in tests/convex/test_closed_forms.py), with at most one more transcendental than
# sigma.


def relu_fused(t: jax.Array) -> tuple[jax.Array, jax.Array]:
    y = jax.nn.relu(t)
    return y * y / 2, y


def hardtanh_fused(t: jax.Array) -> tuple[jax.Array, jax.Array]:
    y = jax.nn.hard_tanh(t)
    return y * (t - y / 2), y  # t^2/2 inside [-1, 1], |t| - 1/2 outside


def tanh_fused(t: jax.Array) -> tuple[jax.Array, jax.Array]:
    # log cosh t = -log1p(-y^2)/2 (y = tanh t) where |y| < 1/2, and |t| - log1p(|y|) beyond
    # (1 + tanh|t| = 2 / (1 + e^{-2|t|})): neither cancels by more than a factor 4 where it is
    # used, and log1p's argument stays in [-1/4, 1], where XLA's log1p is accurate.
    y = jnp.tanh(t)
    small = jnp.abs(y) < 0.5
    log = jnp.log1p(jnp.where(small, -y * y, jnp.abs(y)))
    return jnp.where(small, -log / 2, jnp.abs(t) - log), y


def sigmoid_fused(t: jax.Array) -> tuple[jax.Array, jax.Array]:
    # e = exp(-|t|): sigmoid t = 1 / (1 + e) for t >= 0, e / (1 + e) below, and
    # softplus t = max(t, 0) + log1p(e): one exp and one log1p, a sum of nonnegative terms.
    e = jnp.exp(-jnp.abs(t))
    inv = 1 / (1 + e)
    return jnp.maximum(t, 0) + jnp.log1p(e), jnp.where(t >= 0, inv, e * inv)


def arctan_fused(t: jax.Array) -> tuple[jax.Array, jax.Array]:
    y = jnp.arctan(t)
    return t * y - half_log1p_square(t), y
