"""Maps for solver-level tests, written here from the activation's potential and the prior.

For a dense OptEq unit, per sample (``c = U x + b``):

    S(z) = prox_R(W^T sigma(W z + c)),   F(z) = |z|^2 / 2 - sum Phi(W z + c) + R(z),

with ``Phi = activation.potential`` (Phi' = sigma) and ``prox_R``/``R`` from the prior. Nothing
here goes through optjax's operator or objective code, so the solvers are checked against an
independent statement of the problem, and equilibria against an independent minimiser
(tests/_problems.py: L-BFGS on the objective).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import optjax
from tests._problems import independent_minimizer, random_problem


def injection(problem, x):
    return x @ problem.input_weight.T + problem.bias


def unit_map(weight, activation, prior=None):
    """``S(z, c)`` for one sample."""

    def fn(z, c):
        t = weight.T @ activation(weight @ z + c)
        return t if prior is None else prior.prox(t)

    return fn


def unit_value_and_map(weight, activation, prior=None):
    """``(F(z), S(z))`` for one sample."""
    fn = unit_map(weight, activation, prior)

    def value_and_map(z, c):
        value = 0.5 * jnp.dot(z, z) - jnp.sum(activation.potential(weight @ z + c))
        if prior is not None:
            value = value + prior.value(z)
        return value, fn(z, c)

    return value_and_map


def dense_case(seed, *, norm=0.9, activation="tanh", prior=None, batch=3, d=8, n=12,
               dtype=jnp.float64, **kw):
    """``(problem, x, c, fn, value_and_map)`` for a random dense unit (tests/_problems.py)."""
    problem, x = random_problem(seed, norm=norm, activation=activation, prior=prior, batch=batch,
                                d=d, n=n, dtype=dtype, **kw)
    act = optjax.activations.get(activation) if isinstance(activation, str) else activation
    c = injection(problem, x)
    return (problem, x, c, unit_map(problem.weight, act, prior),
            unit_value_and_map(problem.weight, act, prior))


def reference_equilibrium(problem, x):
    """argmin F per sample by L-BFGS(-B), independent of optjax's maps and solvers."""
    z, _ = independent_minimizer(problem, x)
    return z


def residuals(fn, point, c):
    """||z - S(z)|| per sample, in float64 numpy."""
    image = jax.vmap(fn)(point, c)
    return np.linalg.norm(np.asarray(point, np.float64) - np.asarray(image, np.float64), axis=1)
