"""Plain and relaxed fixed-point iteration (jaxopt behind the adapter)."""

import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from tests._problems import random_problem


@pytest.mark.parametrize("relaxation", [1.0, 0.5])
def test_relaxed_iteration_reaches_the_same_equilibrium(relaxation):
    problem, x = random_problem(0, norm=0.9)
    solver = optjax.solvers.FixedPoint(relaxation=relaxation)
    z, info = optjax.equilibrium(problem, x, solver=solver, tol=1e-11, max_steps=5000)
    z_ref, _ = optjax.equilibrium(problem, x, tol=1e-11)
    assert bool(jnp.all(info.converged))
    np.testing.assert_allclose(z, z_ref, atol=1e-9)
    # One evaluation per step, plus the final one at the returned point.
    np.testing.assert_array_equal(np.asarray(info.evaluations), np.asarray(info.steps) + 1)


def test_linear_rate_is_at_most_norm_squared():
    """Gradient descent with step 1 on a (1 - ||W||^2)-strongly convex, 1-smooth G."""
    norm = 0.8
    problem, x = random_problem(1, norm=norm, activation="relu", bias_scale=1.0)
    _, info = optjax.equilibrium(problem, x, solver="fixed_point", tol=1e-10, max_steps=5000)
    r0 = np.asarray(optjax.certificate(problem, jnp.zeros((x.shape[0], 8)), x).residual)
    bound = np.ceil(np.log(1e-10 / r0) / np.log(norm**2)) + 1
    assert np.all(np.asarray(info.steps) <= bound)


def test_relaxation_out_of_range_is_refused():
    with pytest.raises(optjax.ConfigError, match=r"relaxation must be a number in \(0.0, 1.0\]"):
        optjax.solvers.FixedPoint(relaxation=1.5)
