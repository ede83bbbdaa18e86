"""Accelerated forward-backward (FISTA with adaptive restart) uses the convex structure: it
needs fewer evaluations of T than plain iteration on ill-conditioned problems."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from tests._problems import random_problem
from tests.solvers._maps import dense_case, reference_equilibrium, residuals


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_fewer_evaluations_than_plain_iteration_when_ill_conditioned(activation):
    problem, x = random_problem(0, d=40, n=60, norm=0.99, activation=activation, batch=4,
                                bias_scale=1.0, flat_spectrum=True)
    _, plain = optjax.equilibrium(problem, x, solver="fixed_point", tol=1e-9, max_steps=20000)
    z, fast = optjax.equilibrium(problem, x, solver="nesterov", tol=1e-9, max_steps=20000)
    assert bool(jnp.all(plain.converged)) and bool(jnp.all(fast.converged))
    assert np.all(np.asarray(fast.evaluations) < np.asarray(plain.evaluations) / 2)


def test_without_restart_still_converges():
    problem, x = random_problem(1, norm=0.9)
    z1, info1 = optjax.equilibrium(problem, x, solver=optjax.solvers.Nesterov(restart=False),
                                   tol=1e-10, max_steps=5000)
    z2, info2 = optjax.equilibrium(problem, x, tol=1e-10)
    assert bool(jnp.all(info1.converged))
    np.testing.assert_allclose(z1, z2, atol=1e-9)


def test_evaluations_count_one_per_step_plus_the_first():
    problem, x = random_problem(2)
    _, info = optjax.equilibrium(problem, x, tol=1e-8)
    np.testing.assert_array_equal(np.asarray(info.evaluations), np.asarray(info.steps) + 1)


# --- the solver ---------------------------------------------------------------------------------


def _fista(fn, z0, c, steps, restart):
    """FISTA with the gradient-mapping restart, written out for one sample in numpy."""
    apply = lambda z: np.asarray(fn(jnp.asarray(z), c))  # noqa: E731
    x = y = np.asarray(z0, float)
    t = 1.0
    image = apply(y)
    for _ in range(steps):
        x_new = image
        t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
        y_new = x_new + (t - 1) / t_new * (x_new - x)
        if restart and np.dot(y - image, x_new - x) > 0:
            y_new, t_new = x_new, 1.0
        x, y, t = x_new, y_new, t_new
        image = apply(y)
    return y, image


@pytest.mark.parametrize("restart", [True, False])
def test_solver_iterates_are_fista_with_restart(restart):
    _, _, c, fn, _ = dense_case(3, norm=0.99, activation="relu", batch=2, bias_scale=1.0)
    steps = 25
    out = jax.jit(lambda c: optjax.solvers.Nesterov(restart=restart).solve_batch(
        fn, jnp.zeros((2, 8)), c, tol=1e-300, max_steps=steps))(c)
    np.testing.assert_array_equal(np.asarray(out.steps), [steps, steps])
    for i in range(2):
        y, image = _fista(fn, np.zeros(8), c[i], steps, restart)
        np.testing.assert_allclose(out.point[i], y, rtol=0, atol=1e-12)
        np.testing.assert_allclose(out.image[i], image, rtol=0, atol=1e-12)


@pytest.mark.parametrize("prior", [optjax.priors.L1(0.05), optjax.priors.Nonnegative()])
def test_solver_reaches_the_minimiser_with_a_prior(prior):
    problem, x, c, fn, _ = dense_case(4, norm=0.95, prior=prior, batch=3)
    out = jax.jit(lambda c: optjax.solvers.Nesterov().solve_batch(
        fn, jnp.zeros((3, 8)), c, tol=1e-11, max_steps=5000))(c)
    assert np.all(residuals(fn, out.point, c) <= 1e-11)
    np.testing.assert_allclose(out.image, reference_equilibrium(problem, x), atol=1e-8)
