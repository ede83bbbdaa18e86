r"""The weight ``W`` of a unit layer as a linear map.

The core only needs, for one sample, :math:`W z`, :math:`W^\top s` and :math:`\|W\|` (the
spectral norm). A dense ``(n, d)`` array is used as it is; any other object providing

* ``apply(z)``: :math:`W z` for one sample of shape ``in_shape``,
* ``transpose(s)``: :math:`W^\top s` (the exact adjoint),
* ``spectral_norm()``: :math:`\|W\|`, exactly or as a certified upper bound,
* ``in_shape`` / ``out_shape``: per-sample shapes,

and registered as a pytree works too (a convolution, for instance).

Examples:
  >>> import jax.numpy as jnp
  >>> from optjax import linear_map
  >>> W = jnp.array([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
  >>> linear_map.in_shape(W), linear_map.out_shape(W)
  ((2,), (3,))
  >>> linear_map.apply(W, jnp.array([1.0, 1.0]))            # W z, one sample
  Array([3., 4., 0.], dtype=float32)
  >>> linear_map.transpose(W, jnp.array([1.0, 1.0, 1.0]))   # W^T s
  Array([3., 4.], dtype=float32)
  >>> round(float(linear_map.spectral_norm(W)), 4)
  4.0
"""

from __future__ import annotations

import weakref
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["apply", "transpose", "in_shape", "out_shape", "dtype", "spectral_norm",
           "cached_norm", "norm_lower_bound", "is_dense"]


def is_dense(weight: Any) -> bool:
    return isinstance(weight, (jax.Array, jnp.ndarray)) or hasattr(weight, "__jax_array__") or (
        hasattr(weight, "shape") and hasattr(weight, "dtype") and not hasattr(weight, "apply")
    )


def _in_compute_dtype(weight: Any, v: jax.Array, compute_dtype: Any) -> tuple[Any, jax.Array]:
    if compute_dtype is None:
        return weight, v
    cast = lambda a: a.astype(compute_dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a  # noqa: E731
    return jax.tree_util.tree_map(cast, weight), cast(v)


def apply(weight: Any, z: jax.Array, compute_dtype: Any = None,
          precision: jax.lax.PrecisionLike = "highest") -> jax.Array:
    """:math:`W z` for one sample; with ``compute_dtype`` (e.g. bfloat16) the product is
    computed in that dtype and returned in ``z``'s. ``precision``: the ``jax.lax.Precision`` of a
    dense product (a linear map object chooses its own); the default asks for full float32
    accuracy, which GPUs and TPUs do not give by default (TF32 / bfloat16 passes), so that a
    fixed point can be solved below 1e-3 relative; ``None`` is the backend's default."""
    w, v = _in_compute_dtype(weight, z, compute_dtype)
    out = jnp.matmul(w, v, precision=precision) if is_dense(w) else w.apply(v)
    return out.astype(z.dtype)


def transpose(weight: Any, s: jax.Array, compute_dtype: Any = None,
              precision: jax.lax.PrecisionLike = "highest") -> jax.Array:
    r""":math:`W^\top s` for one sample (same conventions as :func:`apply`)."""
    w, v = _in_compute_dtype(weight, s, compute_dtype)
    out = jnp.matmul(v, w, precision=precision) if is_dense(w) else w.transpose(v)
    return out.astype(s.dtype)


def in_shape(weight: Any) -> tuple[int, ...]:
    return (weight.shape[1],) if is_dense(weight) else tuple(weight.in_shape)


def out_shape(weight: Any) -> tuple[int, ...]:
    return (weight.shape[0],) if is_dense(weight) else tuple(weight.out_shape)


def dtype(weight: Any) -> jnp.dtype:
    if is_dense(weight):
        return weight.dtype
    return jax.tree_util.tree_leaves(weight)[0].dtype


@jax.jit
def _dense_norm(w: jax.Array) -> jax.Array:
    gram = jnp.matmul(w, w.T, precision="highest") if w.shape[0] <= w.shape[1] else \
        jnp.matmul(w.T, w, precision="highest")
    return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(gram)[-1], 0.0))


def spectral_norm(weight: Any) -> jax.Array:
    r""":math:`\|W\|_2`. Dense: exact, as the square root of the largest eigenvalue of the
    smaller Gram matrix (cheaper than an SVD, same value). Otherwise the map's own method (a
    certified upper bound, or exact)."""
    if not is_dense(weight):
        return weight.spectral_norm()
    return _dense_norm(jnp.asarray(weight))


# Norms of concrete weights, computed once per array object (eager calls only): the entry dies
# with the array, so a new or updated weight is never matched with a stale norm.
_NORMS: dict[tuple, tuple[list, jax.Array]] = {}


def cached_norm(weight: Any) -> jax.Array:
    """:func:`spectral_norm` of concrete weights, computed once per weight object and reused:
    ``optjax.equilibrium`` called again with the same arrays does not recompute it. Arrays are
    immutable, so the same object always has the same norm."""
    leaves, treedef = jax.tree_util.tree_flatten(weight)
    key = (treedef, tuple(id(leaf) for leaf in leaves))
    hit = _NORMS.get(key)
    if hit is not None and all(ref() is leaf for ref, leaf in zip(hit[0], leaves)):
        return hit[1]
    from optjax.linalg.lapack import single_threaded

    with single_threaded():
        norm = jax.block_until_ready(spectral_norm(weight))
    try:
        refs = [weakref.ref(leaf, lambda _: _NORMS.pop(key, None)) for leaf in leaves]
    except TypeError:  # a leaf that cannot be weakly referenced (e.g. a numpy array): no cache
        return norm
    _NORMS[key] = (refs, norm)
    return norm


def norm_lower_bound(weight: Any, steps: int = 4) -> jax.Array:
    r"""A certified lower bound on :math:`\|W\|`: :math:`\|W v\| / \|v\|` after ``steps``
    power-iteration steps on :math:`W^\top W` from a fixed start (all ones, plus a
    deterministic perturbation). Costs ``2 steps + 1`` products with one vector, no
    factorisation; it is close to :math:`\|W\|` when the top singular value is well separated,
    and always below it."""
    shape = in_shape(weight)
    dt = dtype(weight)
    size = 1
    for n in shape:
        size *= n
    ramp = jnp.arange(size, dtype=dt).reshape(shape)
    v = 1.0 + 0.5 * jnp.sin(ramp)  # not orthogonal to the top singular vector, in practice

    def unit(u: jax.Array) -> jax.Array:
        return u / jnp.maximum(jnp.sqrt(jnp.sum(u * u)), jnp.finfo(dt).tiny)

    v = unit(v)
    for _ in range(steps):
        v = unit(transpose(weight, apply(weight, v)))
    return jnp.sqrt(jnp.sum(apply(weight, v) ** 2))
