"""The explicit objective: grad G = z - T(z), its Hessian's spectrum, min G = min H, and
monotone decrease of G along plain iteration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from optjax.families.opteq.objective import primal_value
from tests._problems import independent_minimizer, random_problem

ACTIVATIONS = ["relu", "leaky_relu", "hardtanh", "tanh", "sigmoid", "softplus", "softsign", "arctan"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradient_of_objective_is_identity_minus_operator(activation):
    problem, x = random_problem(0, activation=activation, norm=0.9)
    z = jnp.asarray(np.random.default_rng(0).normal(size=(x.shape[0], 8)))
    grad = jax.grad(lambda z: jnp.sum(optjax.objective(problem, z, x)))(z)
    np.testing.assert_allclose(grad, z - optjax.operator(problem, z, x), atol=1e-12)


@pytest.mark.parametrize("activation", ["tanh", "softplus", "sigmoid"])
def test_hessian_is_identity_minus_wt_d_w_with_spectrum_in_bounds(activation):
    problem, x = random_problem(1, activation=activation, norm=0.95)
    c = optjax.injection(problem, x)[0]
    z = jnp.asarray(np.random.default_rng(1).normal(size=8))
    hess = jax.hessian(lambda z: primal_value(problem.activation, z, (problem.weight, None), (c, None)))(z)
    w = problem.weight
    d = jax.vmap(jax.grad(problem.activation.prox))(w @ z + c)
    np.testing.assert_allclose(hess, jnp.eye(8) - w.T @ jnp.diag(d) @ w, atol=1e-10)
    eig = np.linalg.eigvalsh(np.asarray(hess))
    s = problem.activation.slope_bound
    assert eig.min() >= 1 - s * 0.95**2 - 1e-12 and eig.max() <= 1 + 1e-12


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_min_primal_equals_min_dual(activation):
    problem, x = random_problem(2, activation=activation, norm=0.97, bias_scale=1.0)
    z, info = optjax.equilibrium(problem, x, tol=1e-13, max_steps=20000)
    s = problem.activation(z @ problem.weight.T + optjax.injection(problem, x))
    # s* = sigma(W W^T s* + c) and z* = W^T s*.
    np.testing.assert_allclose(s @ problem.weight, z, atol=1e-11)
    h = optjax.dual_objective(problem, s, x)
    np.testing.assert_allclose(h, info.objective, rtol=1e-9, atol=1e-10)
    _, g_ref = independent_minimizer(problem, x)
    np.testing.assert_allclose(h, g_ref, rtol=1e-9, atol=1e-10)
    # Weak duality's other side: H is minimised at s*, so perturbing s raises H.
    rng = np.random.default_rng(3)
    lo, hi = {"relu": (0, None), "sigmoid": (0, 1), "softplus": (0, None)}.get(activation, (-1, 1))
    for _ in range(5):
        t = s + 1e-3 * jnp.asarray(rng.normal(size=s.shape))
        t = jnp.clip(t, lo + 1e-9 if lo is not None else None, hi - 1e-9 if hi is not None else None)
        if activation in ("tanh", "softsign", "hardtanh"):
            t = jnp.clip(t, -1 + 1e-9, 1 - 1e-9)
        if activation == "arctan":
            t = jnp.clip(t, -1.5, 1.5)
        assert bool(jnp.all(optjax.dual_objective(problem, t, x) >= h - 1e-12))


def test_objective_decreases_monotonically_along_plain_iteration():
    problem, x = random_problem(4, activation="relu", norm=0.99, bias_scale=1.0)
    z = jnp.zeros((x.shape[0], 8))
    values = [optjax.objective(problem, z, x)]
    for _ in range(200):
        z = optjax.operator(problem, z, x)
        values.append(optjax.objective(problem, z, x))
    values = np.asarray(values)
    assert np.all(np.diff(values, axis=0) <= 1e-13)
    assert np.all(values[0] - values[-1] > 1e-3)  # it actually moved


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_value_and_map_gives_F_and_S_at_the_cost_of_one_T(activation):
    """The solvers' (F(z), S(z)) for one sample: F against the definition evaluated in numpy
    with the table's potential (scipy, not the module's), S against the map, and the same two
    products with W as T alone (the fused form is what makes the safeguarded solver's step
    cost one T)."""
    import scipy.special

    problem, x = random_problem(3, activation=activation, norm=0.9)
    map_fn, params = problem.equilibrium_map(), problem.parameters()
    c = optjax.injection(problem, x)[0]
    z = jnp.asarray(np.random.default_rng(3).normal(size=8))
    value, image = map_fn.value_and_map(z, params, (c, None))
    np.testing.assert_allclose(image, map_fn(z, params, (c, None)), rtol=0, atol=1e-15)
    t = np.asarray(problem.weight) @ np.asarray(z) + np.asarray(c)
    phi = {"relu": np.maximum(t, 0) ** 2 / 2,
           "leaky_relu": np.where(t >= 0, 1.0, 0.01) * t * t / 2,
           "hardtanh": np.where(np.abs(t) <= 1, t * t / 2, np.abs(t) - 0.5),
           "tanh": np.log(np.cosh(t)), "sigmoid": np.logaddexp(0, t),
           "softplus": -scipy.special.spence(1 + np.exp(t)),  # -Li2(-e^t); |t| < 3 here
           "softsign": np.abs(t) - np.log1p(np.abs(t)),
           "arctan": t * np.arctan(t) - np.log1p(t * t) / 2}[activation]
    np.testing.assert_allclose(float(value), 0.5 * float(z @ z) - phi.sum(), rtol=1e-12)

    def products(fn):
        jaxpr = jax.make_jaxpr(fn)(z).jaxpr
        return sum(str(e.primitive) == "dot_general" and max(v.aval.ndim for v in e.invars) >= 2
                   for e in jaxpr.eqns)

    assert products(lambda z: map_fn.value_and_map(z, params, (c, None))) == \
        products(lambda z: map_fn(z, params, (c, None))) == 2
