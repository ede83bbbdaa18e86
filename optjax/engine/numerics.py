"""Numerical helpers the engine and the families share: rounding margins, finiteness of
parameter pytrees, whether values are concrete (eager) or traced."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["rounding_slack", "finite_tree", "is_concrete", "is_array_like"]


def rounding_slack(dtype: Any) -> float:
    """Margin below which a convexity margin counts as zero: 64 machine epsilons of ``dtype``
    (a weight normalised to ``||W|| = 1`` computes as ``1 + O(eps)``)."""
    return 64 * float(jnp.finfo(dtype).eps)


def finite_tree(tree: Any) -> jax.Array:
    """True when every floating leaf of ``tree`` is finite (a scalar bool array)."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def is_concrete(tree: Any) -> bool:
    """True when no leaf of ``tree`` is a tracer (the values are known now: an eager call)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def is_array_like(leaf: Any) -> bool:
    """True for arrays and tracers (anything with a shape and a dtype); pytree unflattening
    rebuilds problems with placeholder leaves, which are not."""
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")
