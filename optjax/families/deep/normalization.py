r"""Convexity of a deep OptEq chain from its coupling norms, and the normalisation that
keeps :math:`\|A_{l-1}\| + \|A_l\| \le \rho` for every layer (see :mod:`optjax.families.deep`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from optjax.config import require
from optjax.linalg import linear_map

if TYPE_CHECKING:
    from optjax.families.deep.problem import DeepProblem

__all__ = ["coupling_norms", "layer_sums", "convexity_margin", "normalize", "normalization_scales"]


def coupling_norms(couplings: Sequence[Any]) -> jax.Array:
    """Spectral norms ``(||A_1||, ..., ||A_{L-1}||)`` (shape ``(L-1,)``): exact for dense
    couplings, the map's certified bound otherwise; differentiable where the top singular
    value is simple."""
    if not couplings:
        return jnp.zeros((0,))
    return jnp.stack([linear_map.spectral_norm(a) for a in couplings])


def layer_sums(norms: jax.Array) -> jax.Array:
    """``||A_{l-1}|| + ||A_l||`` for every layer (``A_0 = A_L = 0``)."""
    padded = jnp.concatenate([jnp.zeros((1,), norms.dtype), norms, jnp.zeros((1,), norms.dtype)])
    return padded[:-1] + padded[1:]


def convexity_margin(problem: DeepProblem) -> jax.Array:
    r""":math:`m = 1 - \max_l(\|A_{l-1}\| + \|A_l\|)` (1 for one layer; ``coupling_norms`` when
    given, else computed).

    :math:`m \ge 0` implies :math:`I - K \succeq 0` (H convex); :math:`m > 0` makes H
    :math:`m`-strongly convex and the Jacobi map an :math:`(1-m)`-contraction. It is a sufficient
    condition, independent of the activations' slopes."""
    norms = coupling_norms(problem.couplings) if problem.coupling_norms is None else \
        jnp.asarray(problem.coupling_norms)
    if norms.size == 0:
        return jnp.asarray(1.0, problem.dtype)
    return 1.0 - jnp.max(layer_sums(norms))


def normalize(couplings: Sequence[Any], rho: float = 0.95,
              norms: ArrayLike | None = None) -> tuple:
    r"""Rescale the couplings so that :math:`\|A_{l-1}\| + \|A_l\| \le \rho` for every layer.

    With :math:`t_l = \min(1, \rho / (\|A_{l-1}\| + \|A_l\|))`, :math:`A_l` is multiplied by
    :math:`\min(t_l, t_{l+1})`, so layer :math:`l`'s sum becomes at most
    :math:`t_l (\|A_{l-1}\| + \|A_l\|) \le \rho`. Couplings that already satisfy the condition are
    unchanged (the map is idempotent), and a two-layer chain gets :math:`\|A_1\| \le \rho`.

    The result is a differentiable function of the couplings: gradients flow through the norms
    (exact, or the given ``norms``: any differentiable upper bounds), so implicit gradients of
    a model that normalises its couplings are those of the normalised model (checked against
    finite differences in the tests). Returns the couplings scaled (dense arrays or linear-map
    pytrees alike).
    """
    require(
        isinstance(rho, (int, float)) and not isinstance(rho, bool) and 0 < rho <= 1,
        f"rho must be in (0, 1] (the bound on ||A_(l-1)|| + ||A_l||), got {rho!r}")
    couplings = tuple(couplings)
    if not couplings:
        return ()
    norms = coupling_norms(couplings) if norms is None else jnp.asarray(norms)
    scale = normalization_scales(norms, rho)
    return tuple(jax.tree_util.tree_map(lambda leaf, k=scale[l]: leaf * k.astype(leaf.dtype), a)
                 for l, a in enumerate(couplings))


def normalization_scales(norms: jax.Array, rho: float) -> jax.Array:
    r"""The factors :math:`\min(t_l, t_{l+1})` of :func:`normalize` for the coupling norms
    ``norms`` (differentiable); the normalised couplings have norms ``scales * norms``."""
    sums = layer_sums(norms)
    t = jnp.minimum(1.0, rho / jnp.maximum(sums, jnp.finfo(sums.dtype).tiny))
    return jnp.minimum(t[:-1], t[1:])


