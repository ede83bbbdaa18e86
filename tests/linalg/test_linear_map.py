"""optjax.linear_map: dense and map weights, their norms, the once-per-array norm cache, and the
certified lower bound (never above the exact norm, for many random weights)."""

import gc

import jax.numpy as jnp
import numpy as np
import pytest

from optjax.linalg import linear_map
from optjax.linalg.convolution import Conv2D


def _dense(seed, shape, spread):
    rng = np.random.default_rng(seed)
    left, _, right = np.linalg.svd(rng.normal(size=shape), full_matrices=False)
    values = np.sort(rng.uniform(1 - spread, 1, size=min(shape)))[::-1] * rng.uniform(0.1, 3)
    return jnp.asarray(left @ np.diag(values) @ right)


@pytest.mark.parametrize("seed", range(20))
def test_dense_norm_is_exact_and_the_lower_bound_is_below_it(seed):
    shape = [(12, 7), (7, 12), (30, 30), (5, 40)][seed % 4]
    w = _dense(seed, shape, spread=[0.9, 0.1, 0.001, 0.5][seed % 4])
    exact = np.linalg.svd(np.asarray(w), compute_uv=False)[0]
    np.testing.assert_allclose(linear_map.spectral_norm(w), exact, rtol=1e-12)
    low = float(linear_map.norm_lower_bound(w))
    assert low <= exact * (1 + 1e-12)
    assert low >= 0.5 * exact  # useful, not only valid (a well-spread spectrum converges fast)


@pytest.mark.parametrize("padding", ["zeros", "circular"])
@pytest.mark.parametrize("seed", range(6))
def test_conv_bounds_bracket_the_exact_norm(seed, padding):
    rng = np.random.default_rng(seed)
    conv = Conv2D(jnp.asarray(rng.normal(size=(3, 3, 2, 3))), (5, 4), padding)
    eye = np.eye(5 * 4 * 2).reshape(-1, 5, 4, 2)
    matrix = np.stack([np.asarray(conv.apply(jnp.asarray(e))).ravel() for e in eye], axis=1)
    exact = np.linalg.svd(matrix, compute_uv=False)[0]
    assert float(linear_map.norm_lower_bound(conv)) <= exact * (1 + 1e-12)
    assert float(linear_map.spectral_norm(conv)) >= exact * (1 - 1e-12)


def test_the_norm_cache_is_per_array_and_dies_with_it():
    w = _dense(0, (9, 6), 0.5)
    first = linear_map.cached_norm(w)
    assert linear_map.cached_norm(w) is first  # the same array: not recomputed
    other = w * 2.0
    np.testing.assert_allclose(linear_map.cached_norm(other), 2 * first, rtol=1e-12)
    before = len(linear_map._NORMS)
    del other
    gc.collect()
    assert len(linear_map._NORMS) == before - 1  # no stale entry for a dead array
