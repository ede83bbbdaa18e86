"""Plain and relaxed fixed-point iteration (optjax's own loop; jaxopt's is the
"jaxopt_fixed_point" reference)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from tests._problems import random_problem
from tests.solvers._maps import dense_case, reference_equilibrium, residuals


# --- through the engine ------------------------------------------------------------------------


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


# --- the solver ---------------------------------------------------------------------------------


def _solve(solver, fn, z0, c, **kw):
    return jax.jit(lambda z0, c: solver.solve_batch(fn, z0, c, **kw))(z0, c)


@pytest.mark.parametrize("relaxation", [1.0, 0.5])
@pytest.mark.parametrize("prior", [None, optjax.priors.L1(0.05), optjax.priors.Box(-0.3, 0.4)])
def test_solver_reaches_the_minimiser_with_and_without_prior(relaxation, prior):
    problem, x, c, fn, _ = dense_case(0, norm=0.9, activation="relu", prior=prior, batch=3)
    out = _solve(optjax.solvers.FixedPoint(relaxation=relaxation), fn, jnp.zeros((3, 8)), c,
                 tol=1e-11, max_steps=5000)
    assert np.all(residuals(fn, out.point, c) <= 1e-11)
    np.testing.assert_allclose(out.image, reference_equilibrium(problem, x), atol=1e-8)
    np.testing.assert_array_equal(np.asarray(out.evaluations), np.asarray(out.steps) + 1)


def test_plain_iteration_matches_jaxopt_step_for_step():
    """Same iterates as jaxopt.FixedPointIteration (the "jaxopt_fixed_point" reference), which
    returns one step further: S of the point where it measured the residual."""
    _, _, c, fn, _ = dense_case(1, norm=0.95, batch=4)
    z0 = jnp.zeros((4, 8))
    ours = _solve(optjax.solvers.FixedPoint(), fn, z0, c, tol=1e-9, max_steps=5000)
    ref = _solve(optjax.solvers.JaxoptFixedPoint(), fn, z0, c, tol=1e-9, max_steps=5000)
    np.testing.assert_array_equal(np.asarray(ref.steps), np.asarray(ours.steps) + 1)
    np.testing.assert_allclose(ref.point, ours.image, rtol=0, atol=1e-15)


def test_solver_iterates_are_the_unrolled_relaxed_iteration():
    _, _, c, fn, _ = dense_case(2, norm=0.9, batch=2)
    alpha, steps = 0.7, 9
    z = np.zeros((2, 8))
    apply = jax.vmap(fn)
    for _ in range(steps):
        z = (1 - alpha) * z + alpha * np.asarray(apply(jnp.asarray(z), c))
    out = _solve(optjax.solvers.FixedPoint(relaxation=alpha), fn, jnp.zeros((2, 8)), c,
                 tol=1e-300, max_steps=steps)
    np.testing.assert_array_equal(np.asarray(out.steps), [steps, steps])
    np.testing.assert_allclose(out.point, z, rtol=0, atol=1e-14)
