"""Accelerated forward-backward (FISTA with adaptive restart) uses the convex structure: it
needs fewer evaluations of T than plain iteration on ill-conditioned problems."""

import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from tests._problems import random_problem


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
