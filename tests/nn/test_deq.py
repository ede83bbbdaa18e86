"""The DEQ layers (DEQDense, DEQConv), and the contract every baseline layer (DEQ and monDEQ,
dense and convolutional) shares: shapes, SolveInfo and the stats summary under nnx.jit in
float32; in float64 the equilibrium is a fixed point of the layer's map written by hand and the
implicit gradients agree with central finite differences; parameter counts; bad arguments
refused. DEQ alone: nnx.Sequential, non-convergence reported truthfully, no weight norm, warm
starts, Anderson on a rank-deficient residual history; the exact adjoint of conv2d.

Compilation dominates the run time, so each test compiles as few solves as it can."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import optjax
from optjax.config import ConfigError
from optjax.nn.base import conv2d, conv2d_adjoint, param_count
from optjax.nn.deq import DEQConv, DEQDense
from optjax.nn.mondeq import MonDEQConv, MonDEQDense
from tests.nn._baselines import F64, call, conv_input, dense_input, f32, normal, width
from tests.nn.test_mondeq import mon_conv_map, mon_dense_map

# --- maps written by hand, from the parameters ---------------------------------------------------


def _deq_dense_map(layer, x, z):
    v = layer.weight[...]
    w = layer.gain[...][:, None] * v / jnp.linalg.norm(v, axis=1, keepdims=True)
    return jnp.tanh(z @ w.T + x @ layer.input_weight[...].T + layer.bias[...])


def _deq_conv_map(layer, x, z):
    v = layer.kernel[...]
    k = layer.gain[...] * v / jnp.sqrt(jnp.sum(v**2, axis=(0, 1, 2)))
    return jnp.tanh(conv2d(z, k) + conv2d(x, layer.input_kernel[...]) + layer.bias[...])


# The DEQ cases use tanh: relu with the core's Anderson can hit NaN (see the xfail test below).
CASES = {
    "deq_dense": (
        lambda **kw: DEQDense(4, 6, activation="tanh", rngs=nnx.Rngs(0), **kw),
        dense_input,
        _deq_dense_map,
    ),
    "deq_conv": (
        lambda **kw: DEQConv(2, 3, activation="tanh", rngs=nnx.Rngs(0), **kw),
        conv_input,
        _deq_conv_map,
    ),
    "mon_dense": (
        lambda **kw: MonDEQDense(4, 6, rngs=nnx.Rngs(0), **kw),
        dense_input,
        mon_dense_map,
    ),
    "mon_conv": (  # Peaceman-Rachford, FFT resolvent, circular padding (the default)
        lambda **kw: MonDEQConv(2, 3, rngs=nnx.Rngs(0), **kw),
        conv_input,
        mon_conv_map,
    ),
    "mon_conv_fb": (  # forward-backward splitting, zero padding
        lambda **kw: MonDEQConv(2, 3, splitting="forward_backward", rngs=nnx.Rngs(0), **kw),
        conv_input,
        mon_conv_map,
    ),
}


# --- float32, under nnx.jit ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_shapes_and_info_float32_under_jit(name):
    make, make_x, _ = CASES[name]
    x = f32(make_x())
    with jax.enable_x64(False):  # float32 as users usually run it
        layer = make()
        assert int(layer.stats.samples[...]) == 0  # the summary exists before any call
        z, info = call(layer, x)
    assert z.dtype == jnp.float32
    assert z.shape == x.shape[:-1] + (width(layer),)
    assert isinstance(info, optjax.SolveInfo)
    for leaf in (info.steps, info.evaluations, info.residual, info.converged, info.status):
        assert leaf.shape == (x.shape[0],)
    assert bool(jnp.all(info.converged))
    assert bool(jnp.all(info.residual <= layer.tol))
    # the summary written inside nnx.jit is the reduction of the returned info
    assert int(layer.stats.samples[...]) == x.shape[0]
    assert float(layer.stats.converged_share[...]) == 1.0
    np.testing.assert_allclose(layer.stats.residual_max[...], np.max(info.residual), rtol=1e-6)
    np.testing.assert_allclose(layer.stats.steps_mean[...], np.mean(info.steps), rtol=1e-6)


def test_in_sequential_under_jit():
    x = f32(dense_input(batch=5))
    with jax.enable_x64(False):
        model = nnx.Sequential(
            DEQDense(4, 6, activation="tanh", rngs=nnx.Rngs(0)), nnx.Linear(6, 2, rngs=nnx.Rngs(1))
        )
        eager = nnx.clone(model)(x)
        out = nnx.jit(lambda m, x: m(x))(model, x)
    assert out.shape == (5, 2)
    stats = model.layers[0].stats
    assert int(stats.samples[...]) == 5 and float(stats.converged_share[...]) == 1.0
    # Both are solves to tol 1e-4 (compiled separately, so rounding may stop them a step apart).
    np.testing.assert_allclose(out, eager, atol=1e-4)


def test_deq_reports_non_convergence():
    x = f32(dense_input(batch=4))
    with jax.enable_x64(False):
        layer = DEQDense(4, 6, max_steps=3, rngs=nnx.Rngs(0))
        layer.gain.set_value(jnp.full((6,), 3.0, jnp.float32))  # ||W|| ~ 6: no contraction
        z, info = layer(x, return_info=True)
    # The status is the truth about the returned point: its residual, recomputed by hand.
    w = layer.effective_weight()
    true = jnp.linalg.norm(z - jax.nn.relu(z @ w.T + x @ layer.input_weight[...].T
                                           + layer.bias[...]), axis=1)
    np.testing.assert_array_equal(np.asarray(info.converged), np.asarray(true <= layer.tol))
    assert int(jnp.sum(~info.converged)) >= 3
    assert bool(jnp.all(info.steps[~info.converged] == 3))
    assert np.all(np.asarray(info.status)[~np.asarray(info.converged)] == optjax.Status.MAX_STEPS)


# --- float64: the equilibrium by hand, gradients by finite differences ---------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_equilibrium_and_gradients(name, seed=3, h=1e-5):
    make, make_x, by_hand = CASES[name]
    layer = make(**F64)
    x = make_x()
    target = normal(seed, x.shape[:-1] + (width(layer),))
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    @jax.jit
    @functools.partial(jax.value_and_grad, argnums=(0, 1), has_aux=True)
    def loss(p, x):
        layer = nnx.merge(graphdef, p, rest, copy=True)  # fresh variables for this trace
        z, info = layer(x, return_info=True)
        return jnp.sum(target * z) + 0.1 * jnp.sum(z**2), (z, info)

    (_, (z, info)), (g_params, g_x) = loss(params, x)

    # z is a fixed point of the layer's map, written by hand.
    assert z.dtype == jnp.float64
    assert bool(jnp.all(info.converged))
    residual = jnp.sqrt(jnp.sum((z - by_hand(layer, x, z)) ** 2, axis=tuple(range(1, z.ndim))))
    assert float(jnp.max(residual)) < 1e-10, residual
    assert float(jnp.max(jnp.abs(z))) > 1e-2  # not trivially 0

    # Directional derivative along random directions in every parameter and in x.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves) + 1)
    direction = jax.tree.unflatten(
        treedef, [jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)]
    )
    dx = jax.random.normal(keys[-1], x.shape, x.dtype)
    analytic = sum(
        jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g_params), jax.tree.leaves(direction))
    ) + jnp.vdot(g_x, dx)
    shift = lambda s: jax.tree.map(lambda p, d: p + s * h * d, params, direction)  # noqa: E731
    numeric = (loss(shift(1), x + h * dx)[0][0] - loss(shift(-1), x - h * dx)[0][0]) / (2 * h)
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-5)
    assert abs(float(analytic)) > 1e-3


def test_deq_without_weight_norm():
    layer = DEQDense(4, 6, activation="tanh", weight_norm=False, rngs=nnx.Rngs(0), **F64)
    assert layer.gain is None
    x = dense_input()
    z, _ = call(layer, x)
    w = layer.weight[...]
    by_hand = jnp.tanh(z @ w.T + x @ layer.input_weight[...].T + layer.bias[...])
    np.testing.assert_allclose(z, by_hand, atol=1e-10)


def test_warm_start():
    layer = CASES["deq_dense"][0](**F64)
    x = dense_input()
    z, cold = call(layer, x)
    z_warm, warm = call(layer, x, z)
    np.testing.assert_allclose(z_warm, z, atol=1e-10)
    steps_cold, steps_warm = cold.steps, warm.steps
    assert bool(jnp.all(steps_warm < steps_cold))


# --- Anderson on a rank-deficient residual history ---------------------------------------------


def test_relu_deq_with_default_anderson_stays_finite():
    """Few active relu units make the residual history rank-deficient; the default ridge must
    keep Anderson's bordered Gram system invertible (a negligible ridge gave NaN here)."""
    layer = DEQDense(4, 6, rngs=nnx.Rngs(0), **F64)
    layer.bias.set_value(layer.bias[...] + 0.3)
    z, _ = call(layer, dense_input())
    assert bool(jnp.all(jnp.isfinite(z)))


def test_float32_with_x64_enabled():
    layer = DEQDense(4, 6, activation="tanh", rngs=nnx.Rngs(0))
    z, info = layer(f32(dense_input()), return_info=True)
    assert z.dtype == jnp.float32 and bool(jnp.all(info.converged))


# --- convolution adjoint ------------------------------------------------------------------------


def test_conv_adjoint_is_exact():
    kernel = normal(0, (3, 3, 2, 3))
    x = normal(1, (5, 6, 2))
    y = normal(2, (5, 6, 3))
    lhs = jnp.vdot(conv2d(x, kernel), y)
    rhs = jnp.vdot(x, conv2d_adjoint(y, kernel))
    assert abs(float(lhs - rhs)) <= 1e-12 * max(1.0, abs(float(lhs)))
    (transposed,) = jax.linear_transpose(lambda v: conv2d(v, kernel), x)(y)
    np.testing.assert_allclose(conv2d_adjoint(y, kernel), transposed, atol=1e-12)
    batched = conv2d_adjoint(jnp.stack([y, 2 * y]), kernel)
    np.testing.assert_allclose(batched[1], 2 * transposed, atol=1e-12)


# --- misc ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, count",
    [
        (lambda: DEQDense(3, 5, rngs=nnx.Rngs(0)), 25 + 5 + 15 + 5),
        (lambda: DEQDense(3, 5, weight_norm=False, rngs=nnx.Rngs(0)), 25 + 15 + 5),
        (lambda: MonDEQDense(3, 5, rngs=nnx.Rngs(0)), 25 + 25 + 15 + 5),
        (lambda: DEQConv(2, 4, rngs=nnx.Rngs(0)), 144 + 4 + 72 + 4),
        (lambda: MonDEQConv(2, 4, rngs=nnx.Rngs(0)), 144 + 144 + 72 + 4),
    ],
)
def test_param_count(make, count):
    assert param_count(nnx.eval_shape(make)) == count


def test_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        DEQDense(4, 6, rngs=nnx.Rngs(0))(jnp.ones((4,)))
    with pytest.raises(ValueError, match="shape"):
        MonDEQConv(2, 3, rngs=nnx.Rngs(0))(jnp.ones((1, 4, 4, 3)))
    with pytest.raises(TypeError, match="floating"):
        DEQDense(4, 6, rngs=nnx.Rngs(0))(jnp.ones((2, 4), jnp.int32))
    with pytest.raises(ConfigError, match="m must"):
        MonDEQDense(4, 6, m=0.0, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="alpha"):
        MonDEQDense(4, 6, alpha=-1.0, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="activation"):
        DEQDense(4, 6, activation="nope", rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="solver"):
        DEQDense(4, 6, solver="newton", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("make", [
    lambda rngs: (DEQDense(6, 5, activation="tanh", jacobian_penalty=True, rngs=rngs), (3, 6)),
    lambda rngs: (DEQConv(2, 3, activation="tanh", jacobian_penalty=True, rngs=rngs), (3, 4, 4, 2)),
], ids=["dense", "conv"])
@pytest.mark.slow  # ~10 s each (a training step compiled twice); CI runs the slow set
def test_the_jacobian_penalty_is_sown_in_training_and_lowers_under_its_gradient(make):
    """With jacobian_penalty=True the layer sows one estimate per sample in training mode
    (captured the Flax way, nnx.capture), fresh probes each call, none in evaluation mode; a
    few gradient steps on the penalty alone lower it (the same probes before and after)."""
    layer, shape = make(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    forward = nnx.capture(layer, nnx.Intermediate)
    _, sown = forward(x)
    (first,) = jax.tree.leaves(sown)
    assert first.shape == (3,) and np.all(np.asarray(first) > 0)
    _, again = forward(x)
    assert not np.allclose(np.asarray(jax.tree.leaves(again)[0]), np.asarray(first))
    layer.eval()
    _, none = forward(x)
    assert jax.tree.leaves(none) == []
    layer.train()

    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def penalty(params):
        model = nnx.merge(graphdef, params, rest, copy=True)  # same probes every call
        return jnp.mean(jax.tree.leaves(nnx.capture(model, nnx.Intermediate)(x)[1])[0])

    before = float(penalty(params))
    for _ in range(5):
        params = jax.tree.map(lambda p, g: p - 0.5 * g, params, jax.grad(penalty)(params))
    assert float(penalty(params)) < 0.8 * before
