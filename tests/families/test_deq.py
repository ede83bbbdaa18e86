"""DEQ problems (optjax.deq): the equilibrium z = sigma(W z + c), its structured J^T, its
implicit gradients, and its honest lack of a certificate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from optjax.linalg.convolution import Conv2D
from optjax.families.deq import DEQProblem


def _dense(seed=0, d=6, scale=0.6):
    rng = np.random.default_rng(seed)
    return DEQProblem(jnp.asarray(scale * rng.normal(size=(d, d)) / np.sqrt(d)), jnp.tanh)


def _conv(seed=0, hw=(5, 4), c=3, scale=0.5):
    rng = np.random.default_rng(seed)
    kernel = jnp.asarray(scale * rng.normal(size=(3, 3, c, c)) / np.sqrt(9 * c))
    return DEQProblem(Conv2D(kernel, hw), jax.nn.softplus)


@pytest.mark.parametrize("make", [_dense, _conv], ids=["dense", "conv"])
def test_structured_jacobian_transpose_equals_autodiff(make):
    problem = make()
    rng = np.random.default_rng(1)
    shape = problem.state_shape
    z, c, v = (jnp.asarray(rng.normal(size=shape)) for _ in range(3))
    map_fn, params = problem.equilibrium_map(), problem.parameters()
    _, vjp = jax.vjp(lambda z: map_fn(z, params, c), z)
    np.testing.assert_allclose(map_fn.jacobian_transpose(z, params, c)(v), vjp(v)[0],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [_dense, _conv], ids=["dense", "conv"])
def test_equilibrium_and_gradient_against_a_long_plain_iteration(make):
    problem = make()
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2,) + problem.state_shape))
    z, info = optjax.equilibrium(problem, x, tol=1e-12, max_steps=500)
    assert optjax.check(info) and info.problem == "deq"
    # No objective, no modulus: nothing is certified, and the info says so.
    assert np.all(np.isnan(np.asarray(info.objective)))
    assert np.all(np.isinf(np.asarray(info.certificate.suboptimality_bound)))
    map_fn, params = problem.equilibrium_map(), problem.parameters()
    plain = jax.lax.fori_loop(0, 400, lambda _, z: jax.vmap(map_fn, (0, None, 0))(z, params, x),
                              jnp.zeros_like(x))
    np.testing.assert_allclose(z, plain, atol=1e-11)
    # Implicit gradient w.r.t. the weights = gradient through the long unrolled loop.
    target = jnp.asarray(rng.normal(size=x.shape))

    def implicit(p):
        return jnp.sum(target * optjax.equilibrium(p, x, tol=1e-13, max_steps=1000)[0])

    def unrolled(p):
        m, par = p.equilibrium_map(), p.parameters()
        z = jax.lax.fori_loop(0, 400, lambda _, z: jax.vmap(m, (0, None, 0))(z, par, x),
                              jnp.zeros_like(x))
        return jnp.sum(target * z)

    g1, g2 = jax.grad(implicit)(problem), jax.grad(unrolled)(problem)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_a_diverging_deq_is_reported_per_sample():
    problem = _dense(scale=6.0)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 6)))
    _, info = optjax.equilibrium(problem, x, max_steps=5, solver="fixed_point")
    assert not bool(jnp.all(info.converged))
    assert set(np.asarray(info.status).tolist()) <= {int(optjax.Status.MAX_STEPS),
                                                    int(optjax.Status.CONVERGED)}


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="square"):
        DEQProblem(jnp.ones((3, 4)), jnp.tanh)
    with pytest.raises(TypeError, match="callable"):
        DEQProblem(jnp.ones((3, 3)), "tanh")
    with pytest.raises(ValueError, match=r"x must have shape \(batch,\) \+ \(3,\)"):
        optjax.equilibrium(DEQProblem(jnp.eye(3) * 0.1, jnp.tanh), jnp.ones((2, 4)))


@pytest.mark.parametrize("make", [_dense, _conv], ids=["dense", "conv"])
def test_the_jacobian_estimate_is_unbiased_for_the_exact_frobenius_norm(make):
    """Hutchinson's estimate averaged over many probes against ||J||_F^2 / d from the dense
    Jacobian (autodiff of the map, float64): within 5 standard errors of the sample mean. It is
    differentiable in W (finite differences of the same probes) and not through z."""
    from optjax.families.deq import jacobian_frobenius

    problem = make()
    rng = np.random.default_rng(5)
    z = jnp.asarray(rng.normal(size=(2,) + problem.state_shape))
    x = jnp.asarray(rng.normal(size=(2,) + problem.state_shape))
    map_fn, params = problem.equilibrium_map(), problem.parameters()
    d = int(np.prod(problem.state_shape))
    exact = [float(np.sum(np.asarray(jax.jacfwd(lambda v: map_fn(v, params, c))(zi)) ** 2)) / d
             for zi, c in zip(z, x)]
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    draws = np.asarray(jax.vmap(lambda k: jacobian_frobenius(problem, z, x, k))(keys))
    mean, se = draws.mean(axis=0), draws.std(axis=0) / np.sqrt(len(keys))
    assert np.all(np.abs(mean - exact) <= 5 * se), (mean, exact, se)
    assert np.all(np.abs(mean - exact) <= 0.1 * np.asarray(exact))

    key = jax.random.PRNGKey(1)
    grad_z = jax.grad(lambda z: jnp.sum(jacobian_frobenius(problem, z, x, key)))(z)
    assert np.all(np.asarray(grad_z) == 0)  # the equilibrium is held fixed

    def total(scale):
        scaled = jax.tree.map(lambda a: a * scale, problem.weight)
        return jnp.sum(jacobian_frobenius(DEQProblem(scaled, problem.activation), z, x, key))

    h = 1e-6
    numeric = (total(1 + h) - total(1 - h)) / (2 * h)
    np.testing.assert_allclose(jax.grad(total)(1.0), numeric, rtol=1e-6)
