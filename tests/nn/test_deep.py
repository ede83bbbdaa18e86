"""DeepOptEq: shapes and info, NNX transforms and composition, the convexity condition survives
arbitrary optimizer steps, training reduces a loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optjax
from optjax.families import deep
from optjax.nn.deep import DeepOptEq


def _x(shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _layer_sums(couplings):
    norms = [np.linalg.norm(np.asarray(a, np.float64), 2) for a in couplings]
    return np.concatenate([[0.0], norms]) + np.concatenate([norms, [0.0]])


def test_output_shape_states_and_info_match_the_core():
    model = DeepOptEq(4, (6, 5, 3), activation="tanh", tol=1e-12, max_steps=1000,
                      param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    assert int(model.stats.samples[...]) == 0 and np.isnan(model.stats.steps_mean[...])
    x = _x((2, 4), dtype=jnp.float64)
    out, info = model(x, return_info=True)
    assert out.shape == (2, 3) and out.dtype == jnp.float64
    assert model.problem().sweep == "gauss_seidel" and info.steps.shape == (2,)
    assert bool(jnp.all(info.converged))
    assert float(info.certificate.modulus) >= 1 - 0.95 - 1e-12
    summary = model.stats.as_dict()  # the same solve, summarised (float32)
    assert int(summary["samples"]) == 2 and float(summary["converged_share"]) == 1.0
    np.testing.assert_allclose(summary["steps_max"], np.max(info.steps))
    np.testing.assert_allclose(summary["residual_max"], np.max(info.residual), rtol=1e-6)
    np.testing.assert_allclose(summary["distance_bound_max"],
                               np.max(info.certificate.distance_bound), rtol=1e-6)
    states, _ = deep.equilibrium(model.problem(), x, sweep="jacobi", tol=1e-12, max_steps=1000)
    np.testing.assert_allclose(out, states[-1], atol=1e-10)
    assert [s.shape for s in model.states(x)] == [(2, 6), (2, 5), (2, 3)]
    states, info = model.states(x, return_info=True)
    assert len(states) == 3 and info.steps.shape == (2,)
    with pytest.raises(ValueError, match=r"expects x of shape \(batch, 4\)"):
        model(jnp.ones((2, 5)))
    with pytest.raises(optjax.ConfigError, match="rho must be in"):
        DeepOptEq(4, (3,), rho=0.0, rngs=nnx.Rngs(0))
    with pytest.raises(optjax.ConfigError, match="sweep must be one of"):
        DeepOptEq(4, (3,), sweep="backwards", rngs=nnx.Rngs(0))
    with pytest.raises(optjax.ConfigError, match="not symmetric"):
        DeepOptEq(4, (3,), backward="cg", rngs=nnx.Rngs(0))


def test_nnx_jit_and_sequential():
    model = nnx.Sequential(DeepOptEq(4, (6, 5), rngs=nnx.Rngs(0)),
                           nnx.Linear(5, 2, rngs=nnx.Rngs(1)))
    x = _x((3, 4))
    stats = model.layers[0].stats  # set inside nnx.jit too, readable outside
    eager = model(x)
    eager_bound = float(stats.distance_bound_max[...])
    jitted = nnx.jit(lambda m, x: m(x))(model, x)
    assert jitted.shape == (3, 2)
    assert int(stats.samples[...]) == 3 and float(stats.converged_share[...]) == 1.0
    # Compiled separately, the two float32 solves (tol 1e-4) may stop a sweep apart: not
    # bitwise. Each state lies within its certified distance r / mu of the one equilibrium, so
    # the two within the sum of the bounds, and the head moves its output by at most its norm
    # times that; plus float32 rounding of the layer and the head.
    head = np.linalg.norm(np.asarray(model.layers[1].kernel[...], np.float64), 2)
    bound = head * (eager_bound + float(stats.distance_bound_max[...]))
    assert np.isfinite(bound) and bound < 1e-2 * float(jnp.max(jnp.abs(eager)))  # still a test
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6 + bound)


@pytest.mark.slow  # 100 optimizer steps, ~7 s
def test_convexity_holds_after_100_random_optimizer_steps():
    rho = 0.9
    model = DeepOptEq(3, (6, 4, 5, 2), rho=rho, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-1), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, key):
        params = nnx.state(model, nnx.Param)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(key, len(leaves))
        grads = jax.tree_util.tree_unflatten(
            treedef, [100.0 * jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)])
        opt.update(model, grads)
        return model.used_couplings()

    key = jax.random.PRNGKey(0)
    for i in range(100):
        key, sub = jax.random.split(key)
        used = step(model, opt, sub)
        if i % 10 == 9:
            assert np.all(_layer_sums(used) <= rho * (1 + 1e-5)), i
    raw = [a.get_value() for a in model.couplings]
    assert np.max(_layer_sums(raw)) > 2.0  # the raw parameters did leave the convex region
    out, info = model(_x((2, 3)), return_info=True)
    assert bool(jnp.all(jnp.isfinite(out)))
    assert float(info.certificate.modulus) >= 1 - rho - 1e-5


def test_training_reduces_the_loss():
    x = _x((16, 3), seed=1)
    y = jnp.tanh(x @ _x((3, 2), seed=2))
    model = DeepOptEq(3, (8, 6, 2), activation="tanh", rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, opt):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        opt.update(model, grads)
        return loss

    losses = [float(train_step(model, opt)) for _ in range(25)]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
    assert np.sum(np.diff(losses) < 0) >= 20, losses  # Adam at this rate: mostly downhill
    assert float(model.stats.converged_share[...]) == 1.0
