"""Certificates: G(z) - G* <= r^2 / (2 mu) and ||z - z*|| <= r / mu at any iterate, tight within
the factor 1/mu (G is 1-smooth, so G(z) - G* >= r^2 / 2)."""

import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from optjax.convex import priors
from tests._problems import independent_minimizer, random_problem


@pytest.mark.parametrize("activation,norm", [("tanh", 0.9), ("relu", 0.95), ("softplus", 0.7)])
def test_bound_holds_along_early_iterates_and_is_tight_within_one_over_mu(activation, norm):
    problem, x = random_problem(0, activation=activation, norm=norm, bias_scale=1.0)
    z_ref, g_ref = independent_minimizer(problem, x)
    z = jnp.asarray(np.random.default_rng(0).normal(size=z_ref.shape))
    mu = 1 - norm**2
    for _ in range(15):
        cert = optjax.certificate(problem, z, x)
        if np.min(np.asarray(cert.residual)) < 1e-6:
            break  # early iterates: below this the reference minimiser's own error shows
        np.testing.assert_allclose(cert.modulus, mu, rtol=1e-12)
        gap = np.asarray(optjax.objective(problem, z, x)) - g_ref  # at z itself (no prior)
        r = np.asarray(cert.residual)
        assert np.all(gap <= np.asarray(cert.suboptimality_bound) * (1 + 1e-9) + 1e-13)
        assert np.all(gap >= r**2 / 2 * (1 - 1e-9) - 1e-13)  # so the bound is within 1/mu
        dist = np.linalg.norm(np.asarray(z) - z_ref, axis=1)
        assert np.all(dist <= np.asarray(cert.distance_bound) * (1 + 1e-9) + 1e-12)
        # ... and at the certified point S(z), which is what the solvers return.
        image = optjax.operator(problem, z, x)
        gap_image = np.asarray(cert.objective) - g_ref
        assert np.all(gap_image <= np.asarray(cert.suboptimality_bound) * (1 + 1e-9) + 1e-13)
        assert np.all(np.linalg.norm(np.asarray(image) - z_ref, axis=1)
                      <= np.asarray(cert.distance_bound) * (1 + 1e-9) + 1e-12)
        z = image


@pytest.mark.parametrize("prior", [priors.L1(0.1), priors.Box(-0.3, 0.3), priors.Quadratic(0.4)],
                         ids=["l1", "box", "quadratic"])
def test_bound_holds_at_the_certified_point_with_a_prior(prior):
    problem, x = random_problem(1, prior=prior, norm=0.9, bias_scale=1.0)
    feature = None
    if isinstance(prior, priors.Quadratic):
        feature = jnp.asarray(np.random.default_rng(2).normal(size=(x.shape[0], 8)))
    z_ref, f_ref = independent_minimizer(problem, x, feature)
    z = jnp.asarray(np.random.default_rng(3).normal(size=z_ref.shape))
    for _ in range(10):
        cert = optjax.certificate(problem, z, x, feature)
        if np.min(np.asarray(cert.residual)) < 1e-6:
            break
        image = optjax.operator(problem, z, x, feature)
        assert np.all(np.asarray(cert.objective) - f_ref
                      <= np.asarray(cert.suboptimality_bound) * (1 + 1e-9) + 1e-13)
        assert np.all(np.linalg.norm(np.asarray(image) - z_ref, axis=1)
                      <= np.asarray(cert.distance_bound) * (1 + 1e-9) + 1e-12)
        z = image


def test_no_modulus_means_no_bound():
    problem, x = random_problem(2, norm=1.0)
    cert = optjax.certificate(problem, jnp.zeros((x.shape[0], 8)), x)
    # mu = 1 - ||W||^2 is 0 up to rounding: nothing is certified, the bounds are infinite.
    assert float(cert.modulus) <= 0.0
    assert np.all(np.isinf(np.asarray(cert.suboptimality_bound)))
    assert np.all(np.isinf(np.asarray(cert.distance_bound)))
    # ... unless the prior brings its own strong convexity.
    problem, x = random_problem(2, norm=1.0, prior=priors.Quadratic(0.5))
    cert = optjax.certificate(problem, jnp.zeros((x.shape[0], 8)), x,
                              feature=jnp.ones((x.shape[0], 8)))
    np.testing.assert_allclose(float(cert.modulus), 0.5, rtol=1e-12)
