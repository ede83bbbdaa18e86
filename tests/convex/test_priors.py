"""Each prior's prox is the minimiser of R(z) + ||z - v||^2 / 2 (checked against scipy), and
its value is +inf exactly outside the domain of an indicator."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from optjax.convex import priors

V = np.random.default_rng(0).normal(size=6) * 1.5
U = np.random.default_rng(1).normal(size=6)

CASES = [
    (priors.L1(0.4), None),
    (priors.Nonnegative(), [(0, None)] * 6),
    (priors.Box(-0.5, 0.7), [(-0.5, 0.7)] * 6),
    (priors.Quadratic(0.8), None),
]


@pytest.mark.parametrize("prior,bounds", CASES, ids=["l1", "nonnegative", "box", "quadratic"])
def test_prox_is_the_minimiser(prior, bounds):
    def f(z):
        return float(prior.value(jnp.asarray(z), jnp.asarray(U))) + 0.5 * np.sum((z - V) ** 2)

    ref = scipy.optimize.minimize(f, np.zeros(6), method="Powell", bounds=bounds,
                                  options=dict(xtol=1e-12, ftol=1e-14, maxiter=100000)).x
    np.testing.assert_allclose(prior.prox(jnp.asarray(V), jnp.asarray(U)), ref, atol=1e-6)


def test_ball_prox_is_the_projection():
    prior = priors.Ball(0.8)
    v = jnp.asarray(V)
    p = prior.prox(v)
    np.testing.assert_allclose(jnp.linalg.norm(p), 0.8, rtol=1e-14)
    # The projection onto a ball: v - p is normal to the sphere at p (parallel to p).
    np.testing.assert_allclose(p / jnp.linalg.norm(p), v / jnp.linalg.norm(v), rtol=1e-14)
    inside = 0.5 * v / jnp.linalg.norm(v)
    np.testing.assert_allclose(prior.prox(inside), inside)


@pytest.mark.parametrize("prior,outside", [
    (priors.Nonnegative(), -0.1 * jnp.ones(3)),
    (priors.Box(-1.0, 1.0), jnp.array([0.0, 1.01, 0.0])),
    (priors.Ball(1.0), jnp.array([1.0, 0.2, 0.0])),
])
def test_indicators_are_zero_inside_and_infinite_outside(prior, outside):
    assert float(prior.value(outside)) == np.inf
    assert float(prior.value(prior.prox(outside))) == 0.0
    assert float(prior.value(prior.prox(100 * outside))) == 0.0  # projections land inside


def test_quadratic_prior_adds_strong_convexity_and_keeps_symmetry():
    assert priors.Quadratic(0.3).strong_convexity == 0.3
    assert priors.Quadratic.scalar_jacobian and not priors.L1.scalar_jacobian
    assert priors.L1(0.1).strong_convexity == 0.0
