"""Shared builders for the tests: random OptEq problems and an independent minimiser.

The independent minimiser is scipy's L-BFGS(-B) on the objective written here in numpy from
the potentials, with gradients by jax autodiff of that objective, never by the library's
operator T, so agreement with the equilibrium is a real check of "equilibrium = argmin".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

import optjax


def random_problem(seed, *, d=8, n=12, p=5, batch=3, norm=0.9, activation="tanh", prior=None,
                   dtype=jnp.float64, bias_scale=0.3, flat_spectrum=False):
    """A unit problem with ||W|| = norm exactly, and a batch of inputs. ``flat_spectrum``: all
    singular values in [0.8 norm, norm] (ill-conditioned when norm is near 1)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, d))
    if flat_spectrum:
        left, _, right = np.linalg.svd(w, full_matrices=False)
        w = left @ np.diag(np.linspace(0.8, 1.0, min(n, d))) @ right
    w *= norm / np.linalg.norm(w, 2)
    u = rng.normal(size=(n, p)) / np.sqrt(p)
    b = bias_scale * rng.normal(size=n)
    x = rng.normal(size=(batch, p))
    problem = optjax.OptEqProblem(
        weight=jnp.asarray(w, dtype),
        activation=activation,
        input_weight=jnp.asarray(u, dtype),
        bias=jnp.asarray(b, dtype),
        prior=prior,
    )
    return problem, jnp.asarray(x, dtype)


def smooth_objective(problem, c_i, feature_i=None):
    """G(z) (+ the quadratic prior, the only smooth one) for one sample, as a jax function."""
    w = problem.weight
    phi = problem.activation.potential

    def g(z):
        val = 0.5 * jnp.dot(z, z) - jnp.sum(phi(w @ z + c_i))
        if isinstance(problem.prior, optjax.priors.Quadratic):
            val = val + 0.5 * problem.prior.mu * jnp.sum((z - feature_i) ** 2)
        return val

    return g


def lbfgs(fun, z0, bounds=None):
    value_and_grad = jax.jit(jax.value_and_grad(fun))

    def f(z):
        v, g = value_and_grad(jnp.asarray(z))
        return float(v), np.asarray(g, dtype=float)

    res = scipy.optimize.minimize(
        f, np.asarray(z0, float), jac=True, method="L-BFGS-B", bounds=bounds,
        options=dict(maxiter=20000, maxfun=40000, ftol=1e-16, gtol=1e-13, maxcor=30),
    )
    return res.x, res.fun


def independent_minimizer(problem, x, feature=None):
    """argmin_z G(z) + R(z) per sample by L-BFGS(-B), returns (z, F*) arrays."""
    c = np.asarray(optjax.injection(problem, x))
    d = problem.state_shape[0]
    prior = problem.prior
    zs, vals = [], []
    for i in range(x.shape[0]):
        fi = None if feature is None else jnp.asarray(feature[i])
        g = smooth_objective(problem, jnp.asarray(c[i]), fi)
        if prior is None or isinstance(prior, optjax.priors.Quadratic):
            z, v = lbfgs(g, np.zeros(d))
        elif isinstance(prior, optjax.priors.Nonnegative):
            z, v = lbfgs(g, np.zeros(d), bounds=[(0, None)] * d)
        elif isinstance(prior, optjax.priors.Box):
            lo = np.broadcast_to(np.asarray(prior.lower, float), (d,))
            hi = np.broadcast_to(np.asarray(prior.upper, float), (d,))
            z, v = lbfgs(g, np.clip(np.zeros(d), lo, hi), bounds=list(zip(lo, hi)))
        elif isinstance(prior, optjax.priors.L1):
            # z = p - q with p, q >= 0 turns lam ||z||_1 into the linear lam * sum(p + q).
            lam = float(prior.lam)
            split = lambda pq: g(pq[:d] - pq[d:]) + lam * jnp.sum(pq)  # noqa: E731
            pq, v = lbfgs(split, np.zeros(2 * d), bounds=[(0, None)] * (2 * d))
            z = pq[:d] - pq[d:]
        elif isinstance(prior, optjax.priors.Ball):
            r = float(prior.radius)
            z, v = lbfgs(g, np.zeros(d))
            if np.linalg.norm(z) > r:  # the constraint is active: minimise on the sphere
                sphere = lambda y: g(r * y / jnp.linalg.norm(y))  # noqa: E731
                y, v = lbfgs(sphere, z)
                z = r * y / np.linalg.norm(y)
        else:  # pragma: no cover
            raise NotImplementedError(type(prior))
        zs.append(z)
        vals.append(v)
    return np.stack(zs), np.asarray(vals)
