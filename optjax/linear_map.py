r"""The weight ``W`` of a unit layer as a linear map.

The core only needs, for one sample, :math:`W z`, :math:`W^\top s` and :math:`\|W\|` (the
spectral norm). A dense ``(n, d)`` array is used as it is; any other object providing

* ``apply(z)``: :math:`W z` for one sample of shape ``in_shape``,
* ``transpose(s)``: :math:`W^\top s` (the exact adjoint),
* ``spectral_norm()``: :math:`\|W\|`, exactly or as a certified upper bound,
* ``in_shape`` / ``out_shape``: per-sample shapes,

and registered as a pytree works too (a convolution, for instance).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def is_dense(weight) -> bool:
    return isinstance(weight, (jax.Array, jnp.ndarray)) or hasattr(weight, "__jax_array__") or (
        hasattr(weight, "shape") and hasattr(weight, "dtype") and not hasattr(weight, "apply")
    )


def _in_compute_dtype(weight, v, compute_dtype):
    if compute_dtype is None:
        return weight, v
    cast = lambda a: a.astype(compute_dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a  # noqa: E731
    return jax.tree_util.tree_map(cast, weight), cast(v)


def apply(weight, z: jax.Array, compute_dtype=None) -> jax.Array:
    """:math:`W z` for one sample; with ``compute_dtype`` (e.g. bfloat16) the product is
    computed in that dtype and returned in ``z``'s."""
    w, v = _in_compute_dtype(weight, z, compute_dtype)
    out = w @ v if is_dense(w) else w.apply(v)
    return out.astype(z.dtype)


def transpose(weight, s: jax.Array, compute_dtype=None) -> jax.Array:
    r""":math:`W^\top s` for one sample (same ``compute_dtype`` convention as :func:`apply`)."""
    w, v = _in_compute_dtype(weight, s, compute_dtype)
    out = w.T @ v if is_dense(w) else w.transpose(v)
    return out.astype(s.dtype)


def in_shape(weight) -> tuple[int, ...]:
    return (weight.shape[1],) if is_dense(weight) else tuple(weight.in_shape)


def out_shape(weight) -> tuple[int, ...]:
    return (weight.shape[0],) if is_dense(weight) else tuple(weight.out_shape)


def dtype(weight):
    if is_dense(weight):
        return weight.dtype
    return jax.tree_util.tree_leaves(weight)[0].dtype


def spectral_norm(weight) -> jax.Array:
    r""":math:`\|W\|_2`. Dense: exact, as the square root of the largest eigenvalue of the
    smaller Gram matrix (cheaper than an SVD, same value). Otherwise the map's own method."""
    if not is_dense(weight):
        return weight.spectral_norm()
    w = jnp.asarray(weight)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(gram)[-1], 0.0))
