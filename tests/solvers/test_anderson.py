"""Anderson acceleration (jaxopt behind the adapter): same equilibrium, honest residual."""

import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from tests._problems import random_problem


def test_anderson_reaches_the_equilibrium_and_reports_the_true_residual():
    problem, x = random_problem(0, norm=0.95)
    z, info = optjax.equilibrium(problem, x, solver="anderson", tol=1e-11, max_steps=2000)
    z_ref, _ = optjax.equilibrium(problem, x, tol=1e-12)
    assert bool(jnp.all(info.converged))
    np.testing.assert_allclose(z, z_ref, atol=1e-9)
    # The reported residual belongs to the point whose image was returned: recompute it.
    cert = optjax.certificate(problem, z, x)
    assert np.all(np.asarray(cert.residual) <= np.asarray(info.residual) + 1e-15)


def test_history_must_be_at_least_two():
    with pytest.raises(optjax.ConfigError, match="history must be an integer >= 2"):
        optjax.solvers.Anderson(history=1)


def test_float32_state_with_x64_enabled():
    """jaxopt keeps its Gram matrix in the default dtype (float64 here): the adapter must not
    let that clash with a float32 state."""
    problem, x = random_problem(1, norm=0.9, dtype=jnp.float32)
    z, info = optjax.equilibrium(problem, x, solver="anderson", tol=1e-5)
    assert z.dtype == jnp.float32 and info.residual.dtype == jnp.float32
    assert bool(jnp.all(info.converged))
