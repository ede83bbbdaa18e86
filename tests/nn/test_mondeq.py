"""The monotone DEQ layers (MonDEQDense, MonDEQConv): I - W is strongly monotone (symmetric part
>= mI) for any parameters, not only at init; the default step sizes (Peaceman--Rachford's and
forward-backward's) against the norm of the dense matrix of W; the equilibrium is unique
(reached from any start); a fixed alpha; a short training run lowers the loss. The hand-written
maps here (from the parameters, with an independent circular convolution) are also the
references of the shared-contract tests in tests/nn/test_deq.py.

Compilation dominates the run time, so each test compiles as few solves as it can."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from optjax.nn.base import conv2d
from optjax.nn.mondeq import MonDEQConv, MonDEQDense
from tests.nn._baselines import F64, call, conv_input, dense_input, f32, normal, width

# --- maps written by hand, from the parameters ---------------------------------------------------


def _mon_dense_matrix(layer):
    a, b = layer.weight_a[...], layer.weight_b[...]
    return (1 - layer.m) * jnp.eye(a.shape[0]) - a.T @ a + b - b.T


def mon_dense_map(layer, x, z):
    w = _mon_dense_matrix(layer)
    return jax.nn.relu(z @ w.T + x @ layer.input_weight[...].T + layer.bias[...])


def _circular_conv(z, kernel):
    """Periodic 3x3 convolution, written independently: wrap-pad by one, then 'VALID'."""
    padded = jnp.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")
    return jax.lax.conv_general_dilated(padded, kernel, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def mon_conv_map(layer, x, z):
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


# --- training ----------------------------------------------------------------------------------


def test_training_reduces_the_loss():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4))
    labels = jnp.asarray((x[:, 0] * x[:, 1] + 0.5 * x[:, 2] > 0).astype(np.int32))
    with jax.enable_x64(False):
        x = f32(x)
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
    x = conv_input(batch=3) if conv else dense_input(batch=3)
    shape = x.shape[:-1] + (width(layer),)
    # One solve: every input twice, started from 0 and from far away.
    inits = jnp.concatenate([jnp.zeros(shape), normal(7, shape, scale=10.0)])
    z, info = call(layer, jnp.concatenate([x, x]), inits)
    assert bool(jnp.all(info.converged))
    np.testing.assert_allclose(z[:3], z[3:], atol=1e-9)
    assert float(jnp.max(jnp.abs(z[0] - z[1]))) > 1e-3  # different inputs, different z


def test_mondeq_fixed_alpha():
    layer = MonDEQDense(4, 6, alpha=0.5, rngs=nnx.Rngs(0), **F64)
    x = dense_input()
    z, _ = call(layer, x)
    assert float(layer.step_size()) == 0.5
    np.testing.assert_allclose(z, mon_dense_map(layer, x, z), atol=1e-10)
