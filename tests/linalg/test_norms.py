"""Spectral norms of convolutions (optjax.linalg.norms, through ``Conv2D.spectral_norm`` and
``StridedConv2D.spectral_norm``): exact for circular padding; for zero padding a certified upper
bound, exact without a boundary, that needs the padded grid and tightens as the image grows;
power iteration a converged lower bound; jittable and differentiable; LAPACK called on one
matrix at a time.

Each norm is compared with the SVD of the dense matrix built tap by tap from the definition of
the convolution (``dense_reference``, ``strided_reference`` in tests/linalg/test_convolution.py),
never from the module's own Fourier code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optjax.linalg.convolution import Conv2D, StridedConv2D
from tests.linalg.test_convolution import (
    PADDINGS,
    SHAPES,
    STRIDED,
    dense_reference,
    make_conv,
    make_strided,
    strided_reference,
)


def dense_norm(conv):
    return np.linalg.svd(dense_reference(conv.kernel, conv.spatial, conv.padding), compute_uv=False)[0]


# -- spectral norm ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_circular_spectral_norm_is_exact(shape):
    for seed in range(3):
        conv = make_conv(10 + seed, *shape, "circular")
        ref = dense_norm(conv)
        np.testing.assert_allclose(float(conv.spectral_norm()), ref, rtol=1e-10)
    np.testing.assert_allclose(float(jax.jit(Conv2D.spectral_norm)(conv)), ref, rtol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_zeros_spectral_norm_is_a_certified_upper_bound(shape):
    k, _, _, h, w = shape
    for seed in range(3):
        conv = make_conv(20 + seed, *shape, "zeros")
        ref = dense_norm(conv)
        bound = float(conv.spectral_norm())
        assert bound >= ref * (1 - 1e-12)
        if k == 1:  # no boundary: exact
            np.testing.assert_allclose(bound, ref, rtol=1e-10)
        if min(h, w) >= k + 1:  # a modest factor unless the kernel dwarfs the image
            assert bound <= 1.5 * ref, (bound, ref)


def test_zeros_bound_needs_the_padded_grid():
    # A vertical difference on a 2-row image: the zero-padded map is a rotation in each column
    # (norm 1), but its taps cancel on the 2-row torus, where the circular norm is 0: the
    # circular norm on the unpadded grid is no bound; the one on the padded grid is.
    kernel = np.zeros((3, 3, 1, 1))
    kernel[0, 1], kernel[2, 1] = 1.0, -1.0
    conv = Conv2D(jnp.asarray(kernel), (2, 5), "zeros")
    ref = dense_norm(conv)
    np.testing.assert_allclose(ref, 1.0, rtol=1e-12)
    naive = float(Conv2D(conv.kernel, conv.spatial, "circular").spectral_norm())
    assert naive < 1e-12
    bound = float(conv.spectral_norm())
    assert bound >= ref * (1 - 1e-12)
    np.testing.assert_allclose(bound, 2.0, rtol=1e-12)  # 2|sin(2 pi f / 4)| at f = 1


def test_zeros_bound_tightens_as_the_image_grows():
    rng = np.random.default_rng(30)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 2, 2)))
    ratios = []
    for size in (4, 8, 16):
        conv = Conv2D(kernel, (size, size), "zeros")
        ratios.append(float(conv.spectral_norm()) / dense_norm(conv))
    assert all(r >= 1 - 1e-12 for r in ratios)
    assert ratios[0] > ratios[1] > ratios[2], ratios
    assert ratios[2] <= 1.05, ratios


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("shape", SHAPES[1::2] + SHAPES[4:])
def test_power_iteration_is_a_converged_lower_bound(shape, padding):
    conv = make_conv(40, *shape, padding)
    ref = dense_norm(conv)
    est = float(conv.power_iteration(num_steps=5000, key=jax.random.PRNGKey(1)))
    assert est <= ref * (1 + 1e-12)
    np.testing.assert_allclose(est, ref, rtol=1e-6)
    if padding == "zeros":
        assert float(conv.spectral_norm()) >= est * (1 - 1e-12)


# -- strided convolutions between resolutions ---------------------------------------------------
@pytest.mark.parametrize("shape", STRIDED)
def test_strided_circular_norm_is_exact(shape):
    k, s, *_ = shape
    for seed in range(3):
        op = make_strided(90 + seed, *shape, "circular")
        ref = np.linalg.svd(strided_reference(op.kernel, op.spatial, s, "circular"),
                            compute_uv=False)[0]
        np.testing.assert_allclose(float(op.spectral_norm()), ref, rtol=1e-10)


@pytest.mark.parametrize("shape", STRIDED)
def test_strided_zeros_norm_is_a_certified_upper_bound(shape):
    k, s, *_ = shape
    for seed in range(3):
        op = make_strided(100 + seed, *shape, "zeros")
        ref = np.linalg.svd(strided_reference(op.kernel, op.spatial, s, "zeros"),
                            compute_uv=False)[0]
        bound = float(op.spectral_norm())
        assert bound >= ref * (1 - 1e-12), (bound, ref)
        if k <= s:  # windows never overlap or leave the grid: no boundary, exact
            np.testing.assert_allclose(bound, ref, rtol=1e-10)


def test_strided_zeros_bound_tightens_as_the_image_grows():
    kernel = jnp.asarray(np.random.default_rng(110).normal(size=(3, 3, 2, 3)))
    ratios = []
    for size in (4, 8, 16):
        op = StridedConv2D(kernel, (size, size), 2, "zeros")
        ref = np.linalg.svd(strided_reference(kernel, op.spatial, 2, "zeros"), compute_uv=False)[0]
        ratios.append(float(op.spectral_norm()) / ref)
    assert all(r >= 1 - 1e-12 for r in ratios)
    assert ratios[0] > ratios[2] and ratios[2] <= 1.1, ratios


def test_strided_norm_is_jittable_and_differentiable():
    op = make_strided(111, 3, 2, 2, 3, 6, 6, "circular")
    np.testing.assert_allclose(jax.jit(StridedConv2D.spectral_norm)(op), op.spectral_norm(),
                               rtol=1e-12)
    # d||A||/dK = u_f v_f^H mapped back: check along a direction by central differences
    direction = jnp.asarray(np.random.default_rng(112).normal(size=op.kernel.shape))
    grad = jax.grad(lambda kern: StridedConv2D(kern, op.spatial, 2, "circular").spectral_norm())(
        op.kernel)
    h = 1e-6

    def norm(kern):
        return float(StridedConv2D(kern, op.spatial, 2, "circular").spectral_norm())

    fd = (norm(op.kernel + h * direction) - norm(op.kernel - h * direction)) / (2 * h)
    np.testing.assert_allclose(float(jnp.vdot(grad, direction)), fd, rtol=1e-6)


# -- one matrix per LAPACK call -----------------------------------------------------------------
def _lapack_calls(fn, *args):
    """The output types of every LAPACK-backed primitive (eigh, svd, lu) in ``fn``'s jaxpr,
    nested loops included, e.g. ``["f64[6,6]", ...]``."""
    import re

    text = str(jax.make_jaxpr(fn)(*args))
    return re.findall(r"\w+:(\w+\[[\d,]*\])[^=]*= (?:eigh|svd|lu)\[", text)


def test_norms_take_one_matrix_per_lapack_call():
    """jaxlib 0.10's batched CPU eigendecomposition splits its batch over the intra-op thread
    pool and blocks on it: with two norms computed at once in one compiled function (a deep
    chain's couplings), a 2-core machine deadlocked at random (the process idle for good, its
    threads parked in the LAPACK kernel). The norms and the monDEQ resolvent therefore call
    LAPACK one matrix at a time: no batched operand may appear."""
    from optjax.families import mondeq

    ops = [make_strided(130, 3, 2, 2, 3, 6, 6, "zeros"), make_conv(131, 3, 2, 3, 5, 4, "circular"),
           make_conv(132, 3, 2, 2, 5, 4, "circular")]
    calls = _lapack_calls(lambda ops: [op.spectral_norm() for op in ops], ops)
    calls += _lapack_calls(jax.grad(lambda k: ops[0].__class__(k, (6, 6), 2).spectral_norm()),
                           ops[0].kernel)
    calls += _lapack_calls(lambda a: mondeq.resolvent(0.1, a, a, 1.0), ops[2])
    assert len(calls) >= 4
    for out in calls:
        assert out.count(",") <= 1, f"a batched LAPACK call: output {out}"
