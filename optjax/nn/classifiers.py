"""Image classifiers for each implicit family, built at a matched parameter count.

``input (B, H, W, C) -> equilibrium layer (its input injection U is the stem: a dense map of the
flattened image, or a convolution) -> 2 x 2 average pooling (convolutional layers) -> dense head``.

Families: ``"opteq"`` (:class:`OptEqDense`, :class:`OptEqConv`), ``"deq"`` (unconstrained DEQ),
``"mondeq"`` (monotone DEQ), ``"deep_opteq"`` (:class:`DeepOptEq`, dense only), and the
reference ``"explicit"``: the equilibrium layer replaced by two explicit layers
``relu(A2 relu(U x + b1) + b2)`` (dense: an MLP; conv: a plain two-convolution CNN). The same
stem, pooling and head for all, so differences come from the equilibrium layer.

``model(x, return_info=True)`` returns ``(logits, info)``, ``info`` the equilibrium layer's
per-sample :class:`optjax.SolveInfo` (None for ``"explicit"``); ``model.stats`` is that layer's
:class:`optjax.nn.SolveSummary` of the last call.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
from flax import nnx

from optjax.config import ConfigError
from optjax.nn.baselines import DEQConv, DEQDense, MonDEQConv, MonDEQDense, param_count
from optjax.nn.deep import DeepOptEq
from optjax.nn.layers import OptEqConv, OptEqDense

__all__ = ["FAMILIES", "IMPLICIT_FAMILIES", "ExplicitBlock", "ImplicitClassifier", "matched_width",
           "build_matched", "param_count"]

FAMILIES = ("opteq", "deq", "mondeq", "deep_opteq", "explicit")
IMPLICIT_FAMILIES = FAMILIES[:4]
KINDS = ("dense", "conv")


class ExplicitBlock(nnx.Module):
    """Two explicit layers ``relu(A2 relu(U x + b1) + b2)``, dense or 3 x 3 convolutions (same
    size): the reference that the equilibrium layers replace. It solves nothing: no summary,
    and ``return_info=True`` returns None as the info."""

    def __init__(self, kind: str, in_size: int, width: int, *, rngs: nnx.Rngs):
        if kind == "dense":
            self.first = nnx.Linear(in_size, width, rngs=rngs)
            self.second = nnx.Linear(width, width, rngs=rngs)
        else:
            self.first = nnx.Conv(in_size, width, (3, 3), padding="SAME", rngs=rngs)
            self.second = nnx.Conv(width, width, (3, 3), padding="SAME", rngs=rngs)

    def __call__(self, x: jax.Array, *, return_info: bool = False):
        out = nnx.relu(self.second(nnx.relu(self.first(x))))
        return (out, None) if return_info else out


def _layer(family, kind, input_shape, width, rngs, options):
    h, w, c = input_shape
    if family == "explicit":
        if options:
            raise ConfigError(
                f"the explicit family has no solver options; got {', '.join(sorted(options))}")
        return ExplicitBlock(kind, h * w * c if kind == "dense" else c, width, rngs=rngs)
    if kind == "dense":
        d = h * w * c
        if family == "opteq":
            return OptEqDense(d, width, rngs=rngs, **options)
        if family == "deq":
            return DEQDense(d, width, rngs=rngs, **options)
        if family == "mondeq":
            return MonDEQDense(d, width, rngs=rngs, **options)
        return DeepOptEq(d, (width, width), rngs=rngs, **options)
    if family == "opteq":
        return OptEqConv(c, width, (h, w), rngs=rngs, **options)
    if family == "deq":
        return DEQConv(c, width, rngs=rngs, **options)
    if family == "mondeq":
        return MonDEQConv(c, width, rngs=rngs, **options)
    raise ConfigError("the deep_opteq family is dense only; use kind='dense'")


class ImplicitClassifier(nnx.Module):
    """A classifier around one equilibrium layer.

    Args:
      family: one of :data:`FAMILIES`.
      kind: ``"dense"`` or ``"conv"``.
      input_shape: ``(H, W, C)`` of one image (channels last).
      num_classes: size of the head's output.
      width: features of the equilibrium state (dense) or its channels (conv).
      layer_options: passed to the equilibrium layer (solver, tol, max_steps, ...).
    """

    def __init__(self, family: str, kind: str, input_shape: Sequence[int], num_classes: int,
                 width: int, *, rngs: nnx.Rngs, **layer_options):
        if family not in FAMILIES:
            raise ConfigError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
        if kind not in KINDS:
            raise ConfigError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
        self.family, self.kind = family, kind
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) != 3:
            raise ConfigError(f"input_shape must be (H, W, C), got {tuple(input_shape)}")
        self.layer = _layer(family, kind, self.input_shape, width, rngs, layer_options)
        h, w, _ = self.input_shape
        head_in = width if kind == "dense" else (h // 2) * (w // 2) * width
        self.head = nnx.Linear(head_in, num_classes, rngs=rngs)

    @property
    def stats(self):
        """The equilibrium layer's :class:`optjax.nn.SolveSummary` (None for ``"explicit"``)."""
        return getattr(self.layer, "stats", None)

    def __call__(self, x: jax.Array, *, return_info: bool = False):
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected images of shape (batch,) + {self.input_shape} (channels last); got "
                f"{tuple(x.shape)}"
            )
        if self.kind == "dense":
            features, info = self.layer(x.reshape(x.shape[0], -1), return_info=True)
        else:
            features, info = self.layer(x, return_info=True)
            features = nnx.avg_pool(features, (2, 2), strides=(2, 2))
        logits = self.head(features.reshape(x.shape[0], -1))
        return (logits, info) if return_info else logits


def _count(family, kind, input_shape, num_classes, width, options):
    abstract = nnx.eval_shape(lambda: ImplicitClassifier(
        family, kind, input_shape, num_classes, width, rngs=nnx.Rngs(0), **options))
    return param_count(abstract)


def matched_width(family: str, kind: str, input_shape, num_classes: int, target: int,
                  **layer_options) -> tuple[int, int]:
    """The largest width whose classifier has at most ``target`` parameters, and that count."""
    lo, hi = 1, 2
    while _count(family, kind, input_shape, num_classes, hi, layer_options) <= target:
        lo, hi = hi, hi * 2
        if hi > 1 << 16:
            break
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _count(family, kind, input_shape, num_classes, mid, layer_options) <= target:
            lo = mid
        else:
            hi = mid
    count = _count(family, kind, input_shape, num_classes, lo, layer_options)
    if count > target:
        raise ConfigError(
            f"no {family} {kind} classifier fits in {target} parameters (the smallest has {count})")
    return lo, count


def build_matched(family: str, kind: str, input_shape, num_classes: int, target: int, *,
                  rngs: nnx.Rngs, **layer_options) -> ImplicitClassifier:
    """A classifier with the largest width that keeps at most ``target`` parameters; its count
    is ``param_count(model)``."""
    width, _ = matched_width(family, kind, input_shape, num_classes, target, **layer_options)
    return ImplicitClassifier(family, kind, input_shape, num_classes, width, rngs=rngs,
                              **layer_options)


def relative_gap(counts: Sequence[int]) -> float:
    """(max - min) / max of parameter counts: how well they are matched."""
    return (max(counts) - min(counts)) / max(counts) if counts and max(counts) else math.nan
