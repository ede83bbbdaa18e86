r"""Norm control that keeps the convexity guarantee: :math:`\|W\| \le \rho`.

The used weight is :math:`W = \min(1, \rho / \hat\sigma)\, V`, with :math:`\hat\sigma` a power
iteration estimate of :math:`\|V\|` whose vector persists between calls (a few steps per call,
as in spectral normalisation, Miyato et al. 2018) and is updated in training mode only
(``use_running_average=False``, set by ``module.train()`` / ``module.eval()`` /
``nnx.view``). The estimate is a lower bound, so :math:`\|W\|` can exceed :math:`\rho` by the
estimate's error. When a layer certifies (``certify=None``, the default: in evaluation mode
only; ``certify=True``: every call) it computes the exact or certified norm of the result
(:func:`certified_norm`), which the certificate needs anyway, and rescales once more by
:math:`\min(1, \rho / \|W\|)`, so the bound is exact; otherwise (training mode by default,
``certify=False`` always) it rests on the power iteration. Gradients flow through the power
estimate (with the vector held fixed, as in spectral normalisation) and through the certified
correction, so they are the exact derivative of what the layer computes.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from optjax.linalg import linear_map

__all__ = ["PowerIterationState", "power_step", "initial_vector", "normalize", "certified_norm"]


class PowerIterationState(nnx.BatchStat):
    """The persistent right singular vector estimate (a running statistic, not a parameter)."""


def _unit(v: jax.Array) -> jax.Array:
    return v / (jnp.sqrt(jnp.sum(v * v)) + 1e-30)


def power_step(weight: Any, v: jax.Array, steps: int = 1) -> tuple[jax.Array, jax.Array]:
    r"""``steps`` power iterations on :math:`V^\top V` from ``v``; returns the new unit vector
    (no gradient) and :math:`\hat\sigma = \|V v\|`, differentiable in V with v held fixed
    (its derivative is :math:`u v^\top`, :math:`u = Vv/\|Vv\|`, as in spectral normalisation)."""
    frozen = jax.lax.stop_gradient(weight)
    # A loop primitive, not a Python loop: the 100 steps at construction then run as one
    # compiled loop instead of hundreds of eager operations.
    v = jax.lax.fori_loop(
        0, steps, lambda _, v: _unit(linear_map.transpose(frozen, linear_map.apply(frozen, v))), v)
    v = jax.lax.stop_gradient(v)
    sigma = jnp.sqrt(jnp.sum(linear_map.apply(weight, v) ** 2))
    return v, sigma


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "steps"))
def initial_vector(weight: Any, key: jax.Array, shape: tuple[int, ...], dtype: DTypeLike,
                   steps: int = 100) -> jax.Array:
    """A random unit vector of ``shape`` after ``steps`` power iterations on ``weight``: the
    converged estimate a layer starts from (one compiled function, so that building a layer
    costs one compilation, not one per eager operation)."""
    v = jax.random.normal(key, shape, dtype)
    return power_step(weight, _unit(v), steps)[0]


def normalize(weight: Any, sigma_hat: jax.Array, rho: float) -> Any:
    r""":math:`\min(1, \rho / \hat\sigma)\, V` for a dense array or a linear-map pytree."""
    scale = jnp.minimum(1.0, rho / jnp.maximum(sigma_hat, 1e-30))
    return jax.tree_util.tree_map(lambda a: a * scale.astype(a.dtype), weight)


def certified_norm(weight: Any) -> jax.Array:
    """Exact ``||W||`` for a dense W (eigenvalues of the Gram matrix), the map's own certified
    value otherwise (e.g. the FFT bound of a convolution); differentiable where the top singular
    value is simple."""
    return linear_map.spectral_norm(weight)
