"""Baseline implicit layers (DEQ, monDEQ; dense and convolutional): shapes, equilibria checked by
hand, implicit gradients against central finite differences (float64), monotonicity and
uniqueness of the monDEQ, exact convolution adjoints, nnx.jit / nnx.Sequential, training.

Compilation dominates the run time, so each test compiles as few solves as it can."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optjax
from optjax.config import ConfigError
from optjax.nn.baselines import (
    DEQConv,
    DEQDense,
    MonDEQConv,
    MonDEQDense,

    conv2d,
    conv2d_adjoint,
    param_count,
)

F64 = dict(param_dtype=jnp.float64, tol=1e-12, max_steps=5000)


@nnx.jit
def _call(layer, x, init=None):
    """``(z, info)``: the equilibria and the per-sample :class:`optjax.SolveInfo`."""
    return layer(x, init=init, return_info=True)


def _normal(seed, shape, dtype=jnp.float64, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(seed), shape, dtype)


def _f32(x):
    return jnp.asarray(np.asarray(x), np.float32)


def _dense_input(batch=3, n=4, seed=1):
    return _normal(seed, (batch, n), scale=0.5)


def _conv_input(batch=2, hw=(4, 5), channels=2, seed=1):
    return _normal(seed, (batch,) + hw + (channels,), scale=0.5)


def _width(layer):
    return layer.features if hasattr(layer, "features") else layer.channels


# --- maps written by hand, from the parameters ---------------------------------------------------


def _deq_dense_map(layer, x, z):
    v = layer.weight[...]
    w = layer.gain[...][:, None] * v / jnp.linalg.norm(v, axis=1, keepdims=True)
    return jnp.tanh(z @ w.T + x @ layer.input_weight[...].T + layer.bias[...])


def _deq_conv_map(layer, x, z):
    v = layer.kernel[...]
    k = layer.gain[...] * v / jnp.sqrt(jnp.sum(v**2, axis=(0, 1, 2)))
    return jnp.tanh(conv2d(z, k) + conv2d(x, layer.input_kernel[...]) + layer.bias[...])


def _mon_dense_matrix(layer):
    a, b = layer.weight_a[...], layer.weight_b[...]
    return (1 - layer.m) * jnp.eye(a.shape[0]) - a.T @ a + b - b.T


def _mon_dense_map(layer, x, z):
    w = _mon_dense_matrix(layer)
    return jax.nn.relu(z @ w.T + x @ layer.input_weight[...].T + layer.bias[...])


def _circular_conv(z, kernel):
    """Periodic 3x3 convolution, written independently: wrap-pad by one, then 'VALID'."""
    padded = jnp.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")
    return jax.lax.conv_general_dilated(padded, kernel, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _mon_conv_map(layer, x, z):
    ka, kb = layer.kernel_a[...], layer.kernel_b[...]
    conv = conv2d if layer.padding == "zeros" else _circular_conv
    (a_adjoint,) = jax.linear_transpose(lambda v: conv(v, ka), z)(conv(z, ka))
    (b_adjoint,) = jax.linear_transpose(lambda v: conv(v, kb), z)(z)
    wz = (1 - layer.m) * z - a_adjoint + conv(z, kb) - b_adjoint
    return jax.nn.relu(wz + conv2d(x, layer.input_kernel[...]) + layer.bias[...])


def _conv_matrix(layer, spatial):
    """W of a MonDEQConv as a dense matrix on flattened (H, W, C) feature maps."""
    shape = tuple(spatial) + (layer.channels,)
    n = int(np.prod(shape))
    return jax.jacfwd(layer.apply_weight)(jnp.zeros(shape, jnp.float64)).reshape(n, n)


# The DEQ cases use tanh: relu with the core's Anderson can hit NaN (see the xfail test below).
CASES = {
    "deq_dense": (
        lambda **kw: DEQDense(4, 6, activation="tanh", rngs=nnx.Rngs(0), **kw),
        _dense_input,
        _deq_dense_map,
    ),
    "deq_conv": (
        lambda **kw: DEQConv(2, 3, activation="tanh", rngs=nnx.Rngs(0), **kw),
        _conv_input,
        _deq_conv_map,
    ),
    "mon_dense": (
        lambda **kw: MonDEQDense(4, 6, rngs=nnx.Rngs(0), **kw),
        _dense_input,
        _mon_dense_map,
    ),
    "mon_conv": (  # Peaceman-Rachford, FFT resolvent, circular padding (the default)
        lambda **kw: MonDEQConv(2, 3, rngs=nnx.Rngs(0), **kw),
        _conv_input,
        _mon_conv_map,
    ),
    "mon_conv_fb": (  # forward-backward splitting, zero padding
        lambda **kw: MonDEQConv(2, 3, splitting="forward_backward", rngs=nnx.Rngs(0), **kw),
        _conv_input,
        _mon_conv_map,
    ),
}


# --- float32, under nnx.jit ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_shapes_and_info_float32_under_jit(name):
    make, make_x, _ = CASES[name]
    x = _f32(make_x())
    with jax.enable_x64(False):  # float32 as users usually run it
        layer = make()
        assert int(layer.stats.samples[...]) == 0  # the summary exists before any call
        z, info = _call(layer, x)
    assert z.dtype == jnp.float32
    assert z.shape == x.shape[:-1] + (_width(layer),)
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
    x = _f32(_dense_input(batch=5))
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
    x = _f32(_dense_input(batch=4))
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


def test_training_reduces_the_loss():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4))
    labels = jnp.asarray((x[:, 0] * x[:, 1] + 0.5 * x[:, 2] > 0).astype(np.int32))
    with jax.enable_x64(False):
        x = _f32(x)
        model = nnx.Sequential(
            MonDEQDense(4, 8, rngs=nnx.Rngs(0)), nnx.Linear(8, 2, rngs=nnx.Rngs(1))
        )
        optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        @nnx.jit
        def step(model, optimizer):
            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return loss

        losses = [float(step(model, optimizer)) for _ in range(20)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    stats = model.layers[0].stats
    assert int(stats.samples[...]) == 32 and bool(jnp.isfinite(stats.residual_max[...]))


# --- float64: the equilibrium by hand, gradients by finite differences ---------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_equilibrium_and_gradients(name, seed=3, h=1e-5):
    make, make_x, by_hand = CASES[name]
    layer = make(**F64)
    x = make_x()
    target = _normal(seed, x.shape[:-1] + (_width(layer),))
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
    x = _dense_input()
    z, _ = _call(layer, x)
    w = layer.weight[...]
    by_hand = jnp.tanh(z @ w.T + x @ layer.input_weight[...].T + layer.bias[...])
    np.testing.assert_allclose(z, by_hand, atol=1e-10)


def test_warm_start():
    layer = CASES["deq_dense"][0](**F64)
    x = _dense_input()
    z, cold = _call(layer, x)
    z_warm, warm = _call(layer, x, z)
    np.testing.assert_allclose(z_warm, z, atol=1e-10)
    steps_cold, steps_warm = cold.steps, warm.steps
    assert bool(jnp.all(steps_warm < steps_cold))


# --- Anderson on a rank-deficient residual history ---------------------------------------------


def test_relu_deq_with_default_anderson_stays_finite():
    """Few active relu units make the residual history rank-deficient; the default ridge must
    keep Anderson's bordered Gram system invertible (a negligible ridge gave NaN here)."""
    layer = DEQDense(4, 6, rngs=nnx.Rngs(0), **F64)
    layer.bias.set_value(layer.bias[...] + 0.3)
    z, _ = _call(layer, _dense_input())
    assert bool(jnp.all(jnp.isfinite(z)))


def test_float32_with_x64_enabled():
    layer = DEQDense(4, 6, activation="tanh", rngs=nnx.Rngs(0))
    z, info = layer(_f32(_dense_input()), return_info=True)
    assert z.dtype == jnp.float32 and bool(jnp.all(info.converged))


# --- monDEQ structure ---------------------------------------------------------------------------


def _mondeq(conv, seed=1, **kw):
    if conv:
        return MonDEQConv(2, 3, rngs=nnx.Rngs(seed), **F64, **kw)
    return MonDEQDense(4, 7, rngs=nnx.Rngs(seed), **F64, **kw)


def _scale_params(layer, factor):
    """Large random A, B: monotonicity must hold for any parameters, not only at init."""
    for name in ("weight_a", "weight_b", "kernel_a", "kernel_b"):
        if hasattr(layer, name):
            var = getattr(layer, name)
            var.set_value(var[...] * factor)


@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
def test_mondeq_is_strongly_monotone_and_step_size(conv):
    spatial = (3, 4)
    # Peaceman--Rachford's default 1 / sqrt(m ||I - W||): the norm exact (per-frequency blocks
    # for conv), checked against the SVD of the dense matrix of W built here.
    pr = _mondeq(conv)
    _scale_params(pr, 5.0)
    w = _conv_matrix(pr, spatial) if conv else _mon_dense_matrix(pr)
    want = 1.0 / np.sqrt(pr.m * np.linalg.norm(np.eye(w.shape[0]) - np.asarray(w), 2))
    np.testing.assert_allclose(float(pr.step_size(*([spatial] if conv else []))), want,
                               rtol=1e-10)
    layer = _mondeq(conv, splitting="forward_backward")
    for factor in (1.0, 30.0):
        _scale_params(layer, factor)
        w = _conv_matrix(layer, spatial) if conv else _mon_dense_matrix(layer)
        i_w = jnp.eye(w.shape[0]) - w
        sym = 0.5 * (i_w + i_w.T)
        assert float(jnp.min(jnp.linalg.eigvalsh(sym))) >= layer.m - 1e-10
        assert float(jnp.linalg.norm(i_w - i_w.T)) > 1e-3  # W is not symmetric
    if not conv:
        np.testing.assert_allclose(layer.effective_weight(), w, atol=1e-12)
    # alpha = m / ||I - W||^2: exact for dense, power iteration (from below) for conv; any
    # alpha < 2 m / ||I - W||^2 converges.
    exact = layer.m / jnp.linalg.norm(i_w, 2) ** 2
    alpha = layer.step_size(spatial) if conv else layer.step_size()
    np.testing.assert_allclose(float(alpha), float(exact), rtol=1e-2 if conv else 1e-10)
    assert float(alpha) < 2 * float(exact)


def test_mondeq_wide_dense_step_size_by_power_iteration():
    layer = MonDEQDense(2, 300, splitting="forward_backward", rngs=nnx.Rngs(0), **F64)  # wider than the exact-norm limit
    exact = layer.m / jnp.linalg.norm(jnp.eye(300) - _mon_dense_matrix(layer), 2) ** 2
    alpha = float(layer.step_size())
    assert float(exact) <= alpha < 2 * float(exact)


@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
def test_mondeq_equilibrium_is_unique(conv):
    layer = _mondeq(conv, seed=2)
    x = _conv_input(batch=3) if conv else _dense_input(batch=3)
    shape = x.shape[:-1] + (_width(layer),)
    # One solve: every input twice, started from 0 and from far away.
    inits = jnp.concatenate([jnp.zeros(shape), _normal(7, shape, scale=10.0)])
    z, info = _call(layer, jnp.concatenate([x, x]), inits)
    assert bool(jnp.all(info.converged))
    np.testing.assert_allclose(z[:3], z[3:], atol=1e-9)
    assert float(jnp.max(jnp.abs(z[0] - z[1]))) > 1e-3  # different inputs, different z


def test_mondeq_fixed_alpha():
    layer = MonDEQDense(4, 6, alpha=0.5, rngs=nnx.Rngs(0), **F64)
    x = _dense_input()
    z, _ = _call(layer, x)
    assert float(layer.step_size()) == 0.5
    np.testing.assert_allclose(z, _mon_dense_map(layer, x, z), atol=1e-10)


# --- convolution adjoint ------------------------------------------------------------------------


def test_conv_adjoint_is_exact():
    kernel = _normal(0, (3, 3, 2, 3))
    x = _normal(1, (5, 6, 2))
    y = _normal(2, (5, 6, 3))
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
