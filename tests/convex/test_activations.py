"""Activations are proximal operators: sigma = prox_f, Phi' = sigma, Phi = (f + |.|^2/2)^*.

The prox and the conjugate are recomputed by scipy's bounded scalar minimiser from the penalty
alone, so each identity is checked against something the module does not compute itself. Also:
the domain of f, monotonicity and the slope bound, from_function's checks and its quadrature
potential, the registry's errors, equality and hashing (static jit arguments), float32. (The
closed forms themselves, against the table, scipy and mpmath: tests/convex/test_closed_forms.py.)
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st

from optjax.convex import activations
from optjax.convex.activations import Activation, NotAProxError, from_function

INF = math.inf
# The closure of sigma's range, i.e. the domain of f, from the table (not from the module).
DOMAIN = {
    "relu": (0.0, INF),
    "leaky_relu": (-INF, INF),
    "hardtanh": (-1.0, 1.0),
    "tanh": (-1.0, 1.0),
    "sigmoid": (0.0, 1.0),
    "softplus": (0.0, INF),
    "softsign": (-1.0, 1.0),
    "arctan": (-math.pi / 2, math.pi / 2),
    "identity": (-INF, INF),
}
# Where f -> +inf at the boundary of its domain, so the boundary itself is outside.
OPEN = {"softsign", "arctan"}

ACTS = [activations.get(n) for n in activations.available()] + [
    activations.get("leaky_relu", slope=0.3),
    activations.get("leaky_relu", slope=1.0),
]
ids = [repr(a) for a in ACTS]


def derivative(fn):
    """fn' elementwise (jit: eager vmap-of-grad dispatches op by op, slowly)."""
    return jax.jit(jax.vmap(jax.grad(fn)))


def numpy_penalty(act):
    pen = jax.jit(act.penalty)
    return lambda y: float(pen(jnp.float64(y)))


def search_bounds(act, v):
    """The domain of f cut to [-|v| - 2, |v| + 2], which holds sigma(v) (|sigma(0)| < 1)."""
    lo, hi = DOMAIN[act.name]
    return max(lo, -abs(v) - 2), min(hi, abs(v) + 2)


def test_registry_names():
    assert activations.available() == tuple(DOMAIN)
    assert all(isinstance(a, Activation) for a in ACTS)
    assert activations.get("sigmoid").slope_bound == 0.25


@pytest.mark.parametrize("act", ACTS, ids=ids)
def test_prox_is_the_minimiser_of_penalty_plus_half_square(act):
    f = numpy_penalty(act)
    for v in np.linspace(-6, 6, 15):
        res = scipy.optimize.minimize_scalar(
            lambda y: f(y) + 0.5 * (y - v) ** 2,
            bounds=search_bounds(act, v),
            method="bounded",
            options=dict(xatol=1e-12),
        )
        assert abs(res.x - float(act(v))) < 1e-6, (v, res.x, float(act(v)))


@pytest.mark.parametrize("act", ACTS, ids=ids)
def test_potential_derivative_is_prox(act):
    # Offset so no point sits within h of a kink of sigma (0 and +-1).
    t = jnp.linspace(-10, 10, 41) + 0.0123
    h = 1e-5
    fd = (act.potential(t + h) - act.potential(t - h)) / (2 * h)
    np.testing.assert_allclose(fd, act(t), rtol=0, atol=1e-7)
    np.testing.assert_allclose(derivative(act.potential)(t), act(t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("act", ACTS, ids=ids)
def test_potential_is_the_conjugate_of_penalty_plus_half_square(act):
    f = numpy_penalty(act)
    for t in np.linspace(-6, 6, 13) + 0.01:
        res = scipy.optimize.minimize_scalar(
            lambda y: f(y) + 0.5 * y * y - t * y,
            bounds=search_bounds(act, t),
            method="bounded",
            options=dict(xatol=1e-12),
        )
        assert abs(-res.fun - float(act.potential(t))) < 1e-6, (t, -res.fun)
    # Fenchel--Young holds with equality at y = sigma(t), on a wide grid.
    t = jnp.linspace(-30, 30, 6001)
    y = act(t)
    gap = act.potential(t) + act.penalty(y) + 0.5 * y * y - t * y
    np.testing.assert_allclose(gap, 0, atol=1e-12 * (1 + 900))


@pytest.mark.parametrize("act", ACTS, ids=ids)
def test_penalty_domain_and_gradient(act):
    lo, hi = DOMAIN[act.name]
    outside, boundary = [], []
    for b, sign in ((lo, -1), (hi, 1)):
        if math.isfinite(b):
            outside += [b + sign * d for d in (1e-9, 0.1, 5.0)]
            boundary.append(b)
    if act.name == "arctan":  # cos < 0, and cos > 0 again: still outside
        outside += [math.pi, 2 * math.pi]
    inside = np.linspace(max(lo, -50) + 1e-9, min(hi, 50) - 1e-9, 1001)
    no, nb = len(outside), len(boundary)
    values = jax.jit(act.penalty)(jnp.asarray(np.concatenate([outside, boundary, inside])))
    assert bool(jnp.all(jnp.isposinf(values[:no])))
    at_boundary = values[no:no + nb]
    expected = jnp.isposinf if act.name in OPEN else jnp.isfinite
    assert bool(jnp.all(expected(at_boundary)))
    assert bool(jnp.all(jnp.isfinite(values[no + nb:])))

    # f'(sigma(t)) = t - sigma(t) wherever sigma is strictly increasing; no NaN outside.
    t = jnp.linspace(-4, 4, 33) + 0.01
    t = t[act(t + 1e-4) - act(t - 1e-4) > 2e-7]
    y = act(t)
    grads = derivative(act.penalty)(jnp.concatenate([jnp.asarray(outside), y]))
    assert not bool(jnp.any(jnp.isnan(grads[:no])))
    np.testing.assert_allclose(grads[no:], t - y, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("act", ACTS, ids=ids)
def test_prox_nondecreasing_one_lipschitz_and_slope_bound(act):
    t = jnp.concatenate([jnp.linspace(-50, 50, 100001), jnp.linspace(-1e-3, 1e-3, 2001)])
    t = jnp.sort(t)
    t = t[jnp.concatenate([jnp.array([True]), jnp.diff(t) > 1e-12])]
    s = act(t)
    ds, dt = jnp.diff(s), jnp.diff(t)
    assert float(jnp.min(ds)) >= -1e-15
    quotients = ds / dt
    assert float(jnp.max(quotients)) <= 1 + 1e-9
    assert float(jnp.max(quotients)) <= act.slope_bound + 1e-9
    assert float(jnp.max(derivative(act.prox)(t))) <= act.slope_bound + 1e-12


@pytest.mark.parametrize("act", ACTS, ids=ids)
@settings(max_examples=50, deadline=None)
@given(
    a=st.floats(-50, 50, allow_nan=False),
    b=st.floats(-50, 50, allow_nan=False),
)
def test_prox_pairs_property(act, a, b):
    a, b = min(a, b), max(a, b)
    sa, sb = (float(x) for x in act(jnp.array([a, b])))
    rounding = 4e-16 * (abs(sa) + abs(sb) + abs(a) + abs(b))
    assert sb - sa >= -rounding
    assert sb - sa <= (b - a) + rounding


def gelu(t):
    return 0.5 * t * (1 + jax.scipy.special.erf(t / math.sqrt(2)))


def silu(t):
    return t * jax.nn.sigmoid(t)


def mish(t):
    return t * jnp.tanh(jax.nn.softplus(t))


def user_map(t):
    return 0.5 * jnp.tanh(t) + 0.3 * t


@pytest.mark.parametrize("act", ACTS, ids=ids)
def test_from_function_accepts_registry_activations(act):
    wrapped = activations.from_function(act)
    assert (wrapped.name, wrapped.slope_bound) == (act.name, act.slope_bound)
    assert wrapped.potential is act.potential and wrapped.penalty is act.penalty
    plain = activations.from_function(act.prox, act.name, slope_bound=act.slope_bound)
    assert plain.penalty is None
    t = jnp.linspace(-6, 6, 25) + 0.01
    np.testing.assert_array_equal(plain(t), act(t))
    if act.name == "hardtanh":  # sigma kinks inside (0, t) spoil Gauss-Legendre
        return
    # The quadrature potential is int_0^t sigma, i.e. Phi - Phi(0) ...
    np.testing.assert_allclose(plain.potential(t), act.potential(t) - act.potential(0.0),
                               rtol=1e-12, atol=1e-9)
    # ... and given the penalty, Fenchel--Young at 0 fixes the constant.
    paired = activations.from_function(act.prox, act.name, penalty=act.penalty,
                                       slope_bound=act.slope_bound)
    np.testing.assert_allclose(paired.potential(t), act.potential(t), rtol=1e-12, atol=1e-9)


def test_from_function_quadrature_potential():
    act = activations.from_function(user_map, "mine")
    assert act.name == "mine" and act.penalty is None and act.slope_bound == 1.0
    t = jnp.linspace(-6, 6, 25) + 0.01
    closed = 0.5 * (jnp.abs(t) + jnp.log1p(jnp.exp(-2 * jnp.abs(t))) - math.log(2)) + 0.15 * t * t
    np.testing.assert_allclose(act.potential(t), closed, rtol=0, atol=1e-9)
    np.testing.assert_allclose(jax.jit(act.potential)(t.reshape(5, 5)), closed.reshape(5, 5),
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(derivative(act.potential)(t), user_map(t), atol=1e-15)
    assert act.potential(jnp.linspace(-6, 6, 7, dtype=jnp.float32)).dtype == jnp.float32


@pytest.mark.parametrize("fn", [gelu, silu, mish])
def test_from_function_rejects_non_monotone_maps(fn):
    with pytest.raises(NotAProxError, match=rf"not nondecreasing: {fn.__name__} decreases on"):
        activations.from_function(fn)


def test_from_function_rejection_messages():
    with pytest.raises(NotAProxError, match=r"decreases on \[[-.\de]+, -0\.75\d*\]") as info:
        activations.from_function(gelu)
    assert "registry activation" in str(info.value)
    with pytest.raises(NotAProxError, match=r"not 1-Lipschitz: slope 2(\.0*)? > 1 near t") as info:
        activations.from_function(lambda t: 2 * jnp.tanh(t), "two_tanh")
    assert "nondecreasing:" not in str(info.value)
    with pytest.raises(NotAProxError, match="non-finite"):
        activations.from_function(lambda t: 1 / t)
    with pytest.raises(NotAProxError, match="shape"):
        activations.from_function(jnp.sum)
    with pytest.raises(ValueError, match="slope_bound=0.2 is below the observed slope"):
        activations.from_function(jax.nn.sigmoid, slope_bound=0.2)
    assert activations.from_function(jax.nn.sigmoid, slope_bound=0.25).slope_bound == 0.25


def test_get_errors():
    for name in ("gelu", "silu", "swish", "mish"):
        with pytest.raises(NotAProxError, match=r"not a proximal operator.*decreases.*softplus"):
            activations.get(name)
    with pytest.raises(ValueError, match=r"unknown activation 'nope'; available: relu, leaky_relu"):
        activations.get("nope")
    with pytest.raises(ValueError, match=r"slope must be in \(0, 1\].*got 1.5"):
        activations.get("leaky_relu", slope=1.5)
    with pytest.raises(ValueError, match=r"slope must be in \(0, 1\]"):
        activations.get("leaky_relu", slope=0.0)
    with pytest.raises(ValueError, match=r"'relu' got unknown parameter\(s\) slope; it takes no"):
        activations.get("relu", slope=0.2)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) slop; it takes: slope"):
        activations.get("leaky_relu", slop=0.2)


def test_equality_hash_and_static_jit_argument():
    a, b = activations.get("leaky_relu", slope=0.1), activations.get("leaky_relu", slope=0.1)
    c = activations.get("leaky_relu", slope=0.2)
    assert a == b and hash(a) == hash(b) and a != c
    assert activations.get("leaky_relu") == activations.get("leaky_relu", slope=0.01)
    assert activations.get("tanh") != activations.get("softsign")
    u = activations.from_function(user_map, "mine")
    assert u == activations.from_function(user_map, "mine")
    # Same name, different map: never equal, so never a shared compiled function.
    assert u != activations.from_function(lambda t: 0.5 * jnp.tanh(t), "mine")

    traces = []

    def apply(act, x):
        traces.append(act)
        return act(x)

    jitted = jax.jit(apply, static_argnums=0)
    x = jnp.array([-2.0, 3.0])
    np.testing.assert_allclose(jitted(a, x), [-0.2, 3.0])
    np.testing.assert_allclose(jitted(b, x), [-0.2, 3.0])
    assert len(traces) == 1
    np.testing.assert_allclose(jitted(c, x), [-0.4, 3.0])
    assert len(traces) == 2


@pytest.mark.parametrize("act", ACTS, ids=ids)
def test_float32(act):
    potential, penalty, dpotential = jax.jit(act.potential), jax.jit(act.penalty), derivative(
        act.potential)
    t32 = jnp.linspace(-50, 50, 1001, dtype=jnp.float32)
    t64 = t32.astype(jnp.float64)
    y32 = act(t32)
    phi32, pen32, dphi32 = potential(t32), penalty(y32), dpotential(t32)
    for out in (y32, phi32, pen32, dphi32):
        assert out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(phi32)) and jnp.all(jnp.isfinite(dphi32)))
    assert bool(jnp.all(jnp.isfinite(pen32)))
    np.testing.assert_allclose(phi32, potential(t64), rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(dphi32, y32)
    # float64 potentials are finite, with finite gradients, on [-50, 50] too.
    assert bool(jnp.all(jnp.isfinite(potential(t64))))
    assert bool(jnp.all(jnp.isfinite(dpotential(t64))))
    # The penalty in float32 inside the domain, away from its (possibly infinite) boundary.
    lo, hi = DOMAIN[act.name]
    y = jnp.linspace(max(lo, -5) + 1e-3, min(hi, 5) - 1e-3, 101)
    np.testing.assert_allclose(penalty(y.astype(jnp.float32)), penalty(y), rtol=1e-5, atol=1e-5)


def test_from_function_check_in_float32_allows_rounding_only():
    with jax.enable_x64(False):
        for name in activations.available():
            activations.from_function(activations.get(name).prox, name)
        activations.from_function(user_map)
        with pytest.raises(NotAProxError, match="not nondecreasing"):
            activations.from_function(gelu)
        with pytest.raises(NotAProxError, match="not 1-Lipschitz"):
            activations.from_function(lambda t: 1.001 * jnp.tanh(t))


def test_from_function_checks_far_beyond_the_dense_interval():
    """A map that is a prox on [-30, 30] but turns down at |t| > 100 is refused."""
    def bent(t):
        return jnp.where(jnp.abs(t) < 100.0, jnp.tanh(t), jnp.tanh(t) - 1e-3 * (jnp.abs(t) - 100))

    with pytest.raises(NotAProxError, match="not nondecreasing"):
        from_function(bent)
    steep = lambda t: jnp.where(t > 1e4, 2.0 * t - 1e4, t)  # noqa: E731  slope 2 above 1e4
    with pytest.raises(NotAProxError, match="not 1-Lipschitz"):
        from_function(steep)
    # A genuine prox passes, far tails included.
    assert from_function(jnp.tanh, "my_tanh").name == "my_tanh"
