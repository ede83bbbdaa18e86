"""The closed forms of the activations' potentials and penalties (optjax.convex.closed_forms)
are the table's formulas, and accurate: Phi and f against the formulas in numpy and scipy's
special functions; Phi within a few ulp of its own value against 50-digit arithmetic (mpmath,
nothing of the module's) from |t| = 1e-9 to 300, in float64 and float32; no overflow of the
linear-growth potentials in float32; the fused potential_and_prox is the pair (Phi, sigma) and
differentiates like it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from optjax.convex import activations
from tests.convex.test_activations import ACTS, ids


def test_closed_forms_match_the_table():
    t = np.linspace(-20, 20, 81) + 0.003
    potentials = {
        "relu": np.maximum(t, 0) ** 2 / 2,
        "hardtanh": np.where(abs(t) <= 1, t * t / 2, abs(t) - 0.5),
        "tanh": np.logaddexp(t, -t) - np.log(2),
        "sigmoid": np.logaddexp(0, t),
        "softplus": -scipy.special.spence(1 + np.exp(t)),  # -Li2(-e^t), no reflection
        "softsign": abs(t) - np.log1p(abs(t)),
        "arctan": t * np.arctan(t) - np.log1p(t * t) / 2,
        "identity": t * t / 2,
    }
    for name, want in potentials.items():
        np.testing.assert_allclose(activations.get(name).potential(t), want, rtol=1e-12, atol=1e-12)
    leaky = activations.get("leaky_relu", slope=0.2)
    np.testing.assert_allclose(leaky.potential(t), np.where(t >= 0, 1, 0.2) * t * t / 2, rtol=1e-14)

    y = np.linspace(-0.99, 0.99, 45)
    p = (y + 1) / 2  # in (0, 1)
    s = 5 * p  # in (0, 5)
    penalties = {
        "tanh": (y, ((1 + y) * np.log1p(y) + (1 - y) * np.log1p(-y)) / 2 - y * y / 2),
        "sigmoid": (p, p * np.log(p) + (1 - p) * np.log1p(-p) - p * p / 2),
        "softplus": (s, scipy.special.spence(1 - np.exp(-s)) - np.pi**2 / 6),
        "softsign": (y, -abs(y) - np.log1p(-abs(y)) - y * y / 2),
        "arctan": (1.5 * y, -np.log(np.cos(1.5 * y)) - (1.5 * y) ** 2 / 2),
        "leaky_relu": (y, np.where(y >= 0, 0, (1 / 0.01 - 1) * y * y / 2)),
    }
    for name, (arg, want) in penalties.items():
        np.testing.assert_allclose(activations.get(name).penalty(arg), want, rtol=1e-12, atol=1e-14)
    # Closure values at the boundary.
    np.testing.assert_allclose(activations.get("tanh").penalty(jnp.array([-1.0, 1.0])),
                               np.log(2) - 0.5, rtol=1e-15)
    np.testing.assert_allclose(activations.get("sigmoid").penalty(jnp.array([0.0, 1.0])),
                               [0, -0.5], atol=1e-15)
    assert float(activations.get("softplus").penalty(0.0)) == 0.0


@pytest.mark.parametrize("name", ["hardtanh", "tanh", "sigmoid", "softsign", "arctan"])
def test_linear_growth_potentials_do_not_overflow(name):
    # Phi(t) ~ c |t| here: no intermediate t^2 or e^|t| may overflow float32.
    act = activations.get(name)
    t = jnp.array([-1e30, -1e3, 1e3, 1e30], jnp.float32)
    phi = jax.jit(act.potential)(t)
    assert bool(jnp.all(jnp.isfinite(phi)))
    np.testing.assert_allclose(phi[-1] / t[-1], phi[-2] / t[-2], rtol=1e-2)


# Phi by 50-digit arithmetic, from the table's formulas (mpmath: nothing of the module's).
def _mp_potential(name, slope=None):
    import mpmath as mp

    return {
        "relu": lambda t: max(t, 0) ** 2 / 2,
        "identity": lambda t: t * t / 2,
        "leaky_relu": lambda t: t * t / 2 if t >= 0 else slope * t * t / 2,
        "hardtanh": lambda t: t * t / 2 if abs(t) <= 1 else abs(t) - mp.mpf(1) / 2,
        "tanh": lambda t: mp.log(mp.cosh(t)),
        "sigmoid": lambda t: mp.log1p(mp.exp(t)),
        "softplus": lambda t: -mp.polylog(2, -mp.exp(t)),
        "softsign": lambda t: abs(t) - mp.log1p(abs(t)),
        "arctan": lambda t: t * mp.atan(t) - mp.log1p(t * t) / 2,
    }[name]


_GRID = np.concatenate([-np.logspace(-9, 2.5, 140), [0.0], np.logspace(-9, 2.5, 140),
                        np.linspace(-1.2, 1.2, 61)])


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("act", ACTS, ids=ids)
def test_potentials_are_accurate_to_a_few_ulp_of_their_own_value(act, dtype):
    """Phi (and Phi from the fused potential_and_prox) within 12 eps of Phi itself, against
    50-digit arithmetic, from 1e-9 to 300 in |t|: the objective sums them, and near
    convergence the safeguarded solver compares values of F far below 1 (its slack assumes
    this). The first forms of log cosh, softsign and -Li2(-e^t) were off by up to 1e-16
    absolute (a million ulp of log cosh(1e-6)), and XLA's float64 log1p by 127 ulp near
    -0.414."""
    import mpmath as mp

    mp.mp.dps = 50
    slope = dict(act.params).get("slope")
    reference = _mp_potential(act.name, slope)
    t = np.asarray(jnp.asarray(_GRID, dtype)).astype(np.float64)  # the points as rounded
    exact = np.array([float(reference(mp.mpf(float(v)))) for v in t])
    eps = float(jnp.finfo(dtype).eps)
    tiny = float(jnp.finfo(dtype).tiny)
    for label, fn in (("potential", act.potential),
                      ("potential_and_prox", lambda v: act.potential_and_prox(v)[0])):
        value = np.asarray(jax.jit(fn)(jnp.asarray(t, dtype))).astype(np.float64)
        keep = np.abs(exact) > 1e3 * tiny  # below: subnormal results, no relative accuracy
        error = np.abs(value - exact)[keep] / (eps * np.abs(exact[keep]))
        worst = int(np.argmax(error))
        assert error[worst] <= 12, (label, t[keep][worst], value[keep][worst], exact[keep][worst])
        assert np.all(np.abs(value[~keep]) <= 1e4 * tiny), label


@pytest.mark.parametrize("act", ACTS, ids=ids)
def test_fused_potential_and_prox_is_the_pair_and_differentiates_like_it(act):
    t = jnp.asarray(_GRID)
    phi, sigma = act.potential_and_prox(t)
    np.testing.assert_allclose(sigma, act.prox(t), rtol=4e-16, atol=0)
    np.testing.assert_allclose(phi, act.potential(t), rtol=3e-15, atol=1e-300)
    dphi = jax.vmap(jax.grad(lambda v: act.potential_and_prox(v)[0]))(t)
    dsigma = jax.vmap(jax.grad(lambda v: act.potential_and_prox(v)[1]))(t)
    np.testing.assert_allclose(dphi, act.prox(t), rtol=4e-16, atol=0)
    np.testing.assert_allclose(dsigma, jax.vmap(jax.grad(act.prox))(t), rtol=4e-16, atol=0)
