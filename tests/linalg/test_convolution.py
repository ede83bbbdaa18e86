"""Conv2D and StridedConv2D as the weight of a unit layer: apply and its adjoint, dense
equivalence, the Fourier form of a circular convolution, equilibrium and kernel gradients in an
OptEq problem, construction and bad input. (Their spectral norms: tests/linalg/test_norms.py.)

The reference matrix is built here in numpy straight from the definition of the convolution
(tap by tap, with zero or periodic indexing), never from ``Conv2D.apply``, so comparing the two
is a real check of ``apply`` and ``transpose``; tests/linalg/test_norms.py and the family tests
import it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from optjax.linalg.convolution import Conv2D, StridedConv2D

# (k, c_in, c_out, H, W): c_in != c_out, non-square grids, and k > H for the last one.
SHAPES = [
    (1, 2, 3, 4, 5),
    (3, 2, 3, 5, 4),
    (3, 3, 1, 6, 6),
    (5, 3, 2, 6, 7),
    (5, 2, 1, 3, 4),
]
PADDINGS = ["zeros", "circular"]


def dense_reference(kernel, spatial, padding):
    """The (H W c_out, H W c_in) matrix of the convolution, in row-major (H, W, C) order."""
    kernel = np.asarray(kernel)
    k, _, c_in, c_out = kernel.shape
    h, w = spatial
    p = (k - 1) // 2
    m = np.zeros((h, w, c_out, h, w, c_in))
    for i in range(h):
        for j in range(w):
            for a in range(k):
                for b in range(k):
                    ii, jj = i + a - p, j + b - p
                    if padding == "circular":
                        ii, jj = ii % h, jj % w
                    elif not (0 <= ii < h and 0 <= jj < w):
                        continue
                    m[i, j, :, ii, jj, :] += kernel[a, b].T
    return m.reshape(h * w * c_out, h * w * c_in)


def make_conv(seed, k, c_in, c_out, h, w, padding):
    rng = np.random.default_rng(seed)
    return Conv2D(jnp.asarray(rng.normal(size=(k, k, c_in, c_out))), (h, w), padding)


# -- the map and its adjoint ------------------------------------------------------------------
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("shape", SHAPES)
def test_adjoint_identity(shape, padding):
    k, c_in, c_out, h, w = shape
    conv = make_conv(1, *shape, padding)
    assert conv.in_shape == (h, w, c_in) and conv.out_shape == (h, w, c_out)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=conv.in_shape))
    y = jnp.asarray(rng.normal(size=conv.out_shape))
    wx, wty = conv.apply(x), conv.transpose(y)
    assert wx.shape == conv.out_shape and wty.shape == conv.in_shape
    lhs, rhs = float(jnp.vdot(wx, y)), float(jnp.vdot(x, wty))
    scale = float(jnp.linalg.norm(wx) * jnp.linalg.norm(y))
    assert abs(lhs - rhs) <= 1e-12 * scale


@pytest.mark.parametrize("padding", PADDINGS)
def test_adjoint_identity_under_vmap(padding):
    conv = make_conv(3, 3, 2, 3, 5, 4, padding)
    rng = np.random.default_rng(4)
    xs = jnp.asarray(rng.normal(size=(6,) + conv.in_shape))
    ys = jnp.asarray(rng.normal(size=(6,) + conv.out_shape))
    wxs = jax.vmap(conv.apply)(xs)
    wtys = jax.jit(jax.vmap(conv.transpose))(ys)
    lhs = np.asarray(jnp.sum(wxs * ys, axis=(1, 2, 3)))
    rhs = np.asarray(jnp.sum(xs * wtys, axis=(1, 2, 3)))
    scale = np.asarray(jnp.linalg.norm(wxs.reshape(6, -1), axis=1) * jnp.linalg.norm(ys.reshape(6, -1), axis=1))
    assert np.all(np.abs(lhs - rhs) <= 1e-12 * scale)
    # the explicit adjoint agrees with JAX's own transposition of apply
    (lt,) = jax.linear_transpose(jax.vmap(conv.apply), xs)(ys)
    np.testing.assert_allclose(wtys, lt, rtol=0, atol=1e-12)
    # vmapped == sample by sample
    for i in range(6):
        np.testing.assert_allclose(wxs[i], conv.apply(xs[i]), rtol=0, atol=1e-13)
        np.testing.assert_allclose(wtys[i], conv.transpose(ys[i]), rtol=0, atol=1e-13)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("shape", SHAPES)
def test_apply_and_transpose_equal_the_dense_matrix(shape, padding):
    conv = make_conv(5, *shape, padding)
    m = dense_reference(conv.kernel, conv.spatial, padding)
    n_in, n_out = int(np.prod(conv.in_shape)), int(np.prod(conv.out_shape))
    basis_in = jnp.eye(n_in).reshape((n_in,) + conv.in_shape)
    basis_out = jnp.eye(n_out).reshape((n_out,) + conv.out_shape)
    # column e_j of W is W e_j; row i of W is (W^T e_i)^T
    cols = np.asarray(jax.vmap(conv.apply)(basis_in)).reshape(n_in, n_out).T
    rows = np.asarray(jax.vmap(conv.transpose)(basis_out)).reshape(n_out, n_in)
    np.testing.assert_allclose(cols, m, rtol=0, atol=1e-13)
    np.testing.assert_allclose(rows, m, rtol=0, atol=1e-13)


# -- in an OptEq layer ------------------------------------------------------------------------
def scaled_conv(seed, padding, k=3, c_in=2, c_out=3, spatial=(5, 4)):
    conv = make_conv(seed, k, c_in, c_out, *spatial, padding)
    return dataclasses.replace(conv, kernel=conv.kernel * (0.9 / conv.spectral_norm()))


@pytest.mark.parametrize("padding", PADDINGS)
def test_equilibrium_with_a_conv_weight(padding):
    conv = scaled_conv(50, padding)
    np.testing.assert_allclose(float(conv.spectral_norm()), 0.9, rtol=1e-12)
    problem = optjax.OptEqProblem(weight=conv, activation="relu")
    assert problem.state_shape == conv.in_shape and problem.injection_shape == conv.out_shape
    rng = np.random.default_rng(51)
    c = jnp.asarray(rng.normal(size=(2,) + conv.out_shape))
    z, info = optjax.equilibrium(problem, c, tol=1e-10, max_steps=5000)
    assert z.shape == (2,) + conv.in_shape
    assert np.all(np.asarray(info.converged)), info.status
    np.testing.assert_allclose(info.certificate.weight_norm, conv.spectral_norm(), rtol=1e-14)
    # fixed point of T(z) = W^T relu(W z + c), with W the independent dense matrix
    m = dense_reference(conv.kernel, conv.spatial, padding)
    assert np.linalg.norm(m, 2) <= 0.9 * (1 + 1e-12)
    for zi, ci in zip(np.asarray(z), np.asarray(c)):
        t = m.T @ np.maximum(m @ zi.ravel() + ci.ravel(), 0.0)
        assert np.linalg.norm(zi.ravel() - t) <= 1e-9
    assert np.linalg.norm(np.asarray(z)) > 1e-3  # not the trivial fixed point


@pytest.mark.parametrize("padding", PADDINGS)
def test_gradient_wrt_kernel_matches_finite_differences(padding):
    conv = scaled_conv(60, padding)
    rng = np.random.default_rng(61)
    c = jnp.asarray(rng.normal(size=(2,) + conv.out_shape))
    g = jnp.asarray(rng.normal(size=(2,) + conv.in_shape))
    direction = jnp.asarray(rng.normal(size=conv.kernel.shape))
    direction = direction / jnp.linalg.norm(direction)

    def loss(weight):
        # a Conv2D-valued argument: its cotangent is a Conv2D holding the kernel's gradient
        problem = optjax.OptEqProblem(weight=weight, activation="relu")
        z, _ = optjax.equilibrium(problem, c, tol=1e-14, max_steps=20000)
        return jnp.sum(g * z)

    grad = jax.jit(jax.grad(loss))(conv)
    assert isinstance(grad, Conv2D) and grad.kernel.shape == conv.kernel.shape
    loss_jit = jax.jit(loss)
    h = 1e-5
    plus = dataclasses.replace(conv, kernel=conv.kernel + h * direction)
    minus = dataclasses.replace(conv, kernel=conv.kernel - h * direction)
    fd = (loss_jit(plus) - loss_jit(minus)) / (2 * h)
    np.testing.assert_allclose(float(jnp.vdot(grad.kernel, direction)), float(fd), rtol=1e-6)


# -- construction and bad input ---------------------------------------------------------------
def test_init():
    conv = Conv2D.init(jax.random.PRNGKey(0), 3, 4, 5, (6, 7), padding="circular")
    assert conv.kernel.shape == (3, 3, 4, 5) and conv.kernel.dtype == jnp.float32
    assert conv.in_shape == (6, 7, 4) and conv.out_shape == (6, 7, 5)
    assert conv.padding == "circular" and conv.spatial == (6, 7)
    std = float(jnp.std(conv.kernel))
    assert 0.5 * np.sqrt(2 / 36) < std < 1.5 * np.sqrt(2 / 36)
    out = conv.apply(jnp.ones((6, 7, 4), jnp.float32))
    assert out.dtype == jnp.float32 and out.shape == (6, 7, 5)
    assert conv.spectral_norm().dtype == jnp.float32
    conv64 = Conv2D.init(jax.random.PRNGKey(0), 1, 2, 2, [3, 3], dtype=jnp.float64)
    assert conv64.kernel.dtype == jnp.float64 and conv64.spatial == (3, 3)


def test_bad_input_is_refused_with_a_message():
    k3 = jnp.zeros((3, 3, 2, 2))
    with pytest.raises(ValueError, match=r"4-D \(k, k, c_in, c_out\).*\(3, 3, 2\)"):
        Conv2D(jnp.zeros((3, 3, 2)), (4, 4))
    with pytest.raises(ValueError, match=r"odd square.*\(2, 2\)"):
        Conv2D(jnp.zeros((2, 2, 1, 1)), (4, 4))
    with pytest.raises(ValueError, match=r"odd square.*\(3, 5\)"):
        Conv2D(jnp.zeros((3, 5, 1, 1)), (4, 4))
    with pytest.raises(ValueError, match="padding must be one of.*'reflect'"):
        Conv2D(k3, (4, 4), "reflect")
    with pytest.raises(ValueError, match="spatial must be a pair of positive ints"):
        Conv2D(k3, (4,))
    with pytest.raises(ValueError, match="spatial must be a pair of positive ints"):
        Conv2D(k3, (4, 0))
    with pytest.raises(ValueError, match="spatial must be a pair of positive ints"):
        Conv2D(k3, (4.5, 4))
    with pytest.raises(TypeError, match="floating dtype"):
        Conv2D(jnp.zeros((3, 3, 1, 1), jnp.int32), (4, 4))
    with pytest.raises(ValueError, match="positive odd int"):
        Conv2D.init(jax.random.PRNGKey(0), 2, 1, 1, (4, 4))

    conv = Conv2D(jnp.zeros((3, 3, 2, 3)), (4, 5))
    with pytest.raises(ValueError, match=r"apply expects one sample of shape \(4, 5, 2\).*got \(4, 5, 3\)"):
        conv.apply(jnp.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match=r"got \(7, 4, 5, 2\).*use jax.vmap"):
        conv.apply(jnp.zeros((7, 4, 5, 2)))
    with pytest.raises(ValueError, match=r"transpose expects one sample of shape \(4, 5, 3\).*got \(5, 4, 3\)"):
        conv.transpose(jnp.zeros((5, 4, 3)))
    # the problem and the solver report wrong injection shapes too
    problem = optjax.OptEqProblem(weight=conv, activation="relu")
    with pytest.raises(ValueError, match=r"\(4, 5, 3\)"):
        optjax.equilibrium(problem, jnp.zeros((2, 4, 5, 2)))


def test_pytree_round_trip_and_jit():
    conv = make_conv(70, 3, 2, 3, 5, 4, "circular")
    leaves, treedef = jax.tree_util.tree_flatten(conv)
    assert len(leaves) == 1
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert rebuilt.kernel is conv.kernel and rebuilt.spatial == conv.spatial
    assert rebuilt.padding == conv.padding
    # leaves replaced by non-arrays (as transformations do) must not trip the validation
    jax.tree_util.tree_map(lambda _: None, conv)
    jax.tree_util.tree_map(lambda _: 0, conv)
    x = jnp.asarray(np.random.default_rng(71).normal(size=conv.in_shape))
    np.testing.assert_allclose(jax.jit(lambda cv, v: cv.apply(v))(conv, x), conv.apply(x), atol=1e-13)


# -- strided convolutions between resolutions ---------------------------------------------------
# (k, stride, c_in, c_out, H, W): overlapping (k > s), patch (k = s), gapped (k < s) windows,
# non-square grids, and a kernel larger than the grid.
STRIDED = [
    (3, 2, 2, 3, 4, 6),
    (2, 2, 3, 2, 6, 4),
    (1, 2, 2, 2, 4, 4),
    (4, 2, 1, 3, 6, 6),
    (3, 3, 2, 1, 6, 9),
    (5, 2, 1, 2, 2, 4),
    (3, 1, 2, 2, 5, 4),
]


def strided_reference(kernel, spatial, stride, padding):
    """The (H/s W/s c_out, H W c_in) matrix straight from the definition (tap by tap)."""
    kernel = np.asarray(kernel)
    k, _, c_in, c_out = kernel.shape
    h, w = spatial
    p = (k - 1) // 2
    m = np.zeros((h // stride, w // stride, c_out, h, w, c_in))
    for i in range(h // stride):
        for j in range(w // stride):
            for a in range(k):
                for b in range(k):
                    ii, jj = stride * i + a - p, stride * j + b - p
                    if padding == "circular":
                        ii, jj = ii % h, jj % w
                    elif not (0 <= ii < h and 0 <= jj < w):
                        continue
                    m[i, j, :, ii, jj, :] += kernel[a, b].T
    return m.reshape((h // stride) * (w // stride) * c_out, h * w * c_in)


def make_strided(seed, k, s, c_in, c_out, h, w, padding):
    rng = np.random.default_rng(seed)
    return StridedConv2D(jnp.asarray(rng.normal(size=(k, k, c_in, c_out))), (h, w), s, padding)


def _materialise(op):
    """The matrix of ``op`` from its apply (columns) and transpose (rows)."""
    n_in, n_out = int(np.prod(op.in_shape)), int(np.prod(op.out_shape))
    cols = np.asarray(jax.vmap(op.apply)(jnp.eye(n_in).reshape((n_in,) + op.in_shape)))
    rows = np.asarray(jax.vmap(op.transpose)(jnp.eye(n_out).reshape((n_out,) + op.out_shape)))
    return cols.reshape(n_in, n_out).T, rows.reshape(n_out, n_in)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("shape", STRIDED)
def test_strided_apply_transpose_and_adjoint_identity(shape, padding):
    k, s, c_in, c_out, h, w = shape
    op = make_strided(80, *shape, padding)
    assert op.in_shape == (h, w, c_in) and op.out_shape == (h // s, w // s, c_out)
    m = strided_reference(op.kernel, op.spatial, s, padding)
    cols, rows = _materialise(op)
    np.testing.assert_allclose(cols, m, rtol=0, atol=1e-13)
    np.testing.assert_allclose(rows, m, rtol=0, atol=1e-13)
    rng = np.random.default_rng(81)
    x = jnp.asarray(rng.normal(size=op.in_shape))
    y = jnp.asarray(rng.normal(size=op.out_shape))
    lhs, rhs = float(jnp.vdot(op.apply(x), y)), float(jnp.vdot(x, op.transpose(y)))
    assert abs(lhs - rhs) <= 1e-12 * float(jnp.linalg.norm(op.apply(x)) * jnp.linalg.norm(y))


def test_strided_with_stride_one_is_conv2d():
    for padding in PADDINGS:
        conv = make_conv(82, 3, 2, 3, 5, 4, padding)
        strided = StridedConv2D(conv.kernel, conv.spatial, 1, padding)
        x = jnp.asarray(np.random.default_rng(83).normal(size=conv.in_shape))
        y = jnp.asarray(np.random.default_rng(84).normal(size=conv.out_shape))
        np.testing.assert_allclose(strided.apply(x), conv.apply(x), atol=1e-13)
        np.testing.assert_allclose(strided.transpose(y), conv.transpose(y), atol=1e-13)


def test_strided_init_and_bad_input_messages():
    op = StridedConv2D.init(jax.random.PRNGKey(0), 3, 2, 4, (8, 6))
    assert op.kernel.dtype == jnp.float32 and op.out_shape == (4, 3, 4) and op.stride == 2
    assert op.apply(jnp.ones(op.in_shape, jnp.float32)).dtype == jnp.float32
    k = jnp.zeros((3, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\(7, 6\) must be divisible by the stride 2"):
        StridedConv2D(k, (7, 6))
    with pytest.raises(ValueError, match="stride must be a positive int, got 0"):
        StridedConv2D(k, (8, 8), 0)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        StridedConv2D(k, (8, 8), 1.5)
    with pytest.raises(ValueError, match=r"square spatial size.*\(3, 2\)"):
        StridedConv2D(jnp.zeros((3, 2, 1, 1)), (8, 8))
    with pytest.raises(ValueError, match=r"4-D \(k, k, c_in, c_out\)"):
        StridedConv2D(jnp.zeros((3, 3, 2)), (8, 8))
    with pytest.raises(ValueError, match="padding must be one of"):
        StridedConv2D(k, (8, 8), 2, "reflect")
    with pytest.raises(TypeError, match="floating dtype"):
        StridedConv2D(jnp.zeros((3, 3, 1, 1), jnp.int32), (8, 8))
    op = StridedConv2D(k, (8, 6))
    with pytest.raises(ValueError, match=r"apply expects .* \(8, 6, 2\).*got \(4, 3, 2\)"):
        op.apply(jnp.zeros((4, 3, 2)))
    with pytest.raises(ValueError, match=r"transpose expects .* \(4, 3, 2\).*use jax.vmap"):
        op.transpose(jnp.zeros((5, 4, 3, 2)))
    # a pytree: leaves replaced by placeholders do not trip the checks
    jax.tree_util.tree_map(lambda _: None, op)


# -- the Fourier form of a circular convolution -------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_transfer_matrices_diagonalise_the_circular_convolution(shape):
    conv = make_conv(120, *shape, "circular")
    z = jnp.asarray(np.random.default_rng(121).normal(size=conv.in_shape))
    m = conv.transfer_matrices()
    k, c_in, c_out, h, w = shape
    assert m.shape == (h, w // 2 + 1, c_out, c_in)
    # the product in the Fourier domain, mapped back, is the dense reference matrix times z
    out = jnp.fft.irfft2(jnp.einsum("hwoc,hwc->hwo", m, jnp.fft.rfft2(z, axes=(0, 1))),
                         s=(h, w), axes=(0, 1))
    ref = dense_reference(conv.kernel, conv.spatial, "circular") @ np.ravel(z)
    np.testing.assert_allclose(np.ravel(out), ref, atol=1e-12)
    with pytest.raises(ValueError, match="needs padding='circular'"):
        make_conv(120, *shape, "zeros").transfer_matrices()
