"""Image classifiers for each implicit family, built at a matched parameter count.

Dense (``kind="dense"``): ``flattened image -> equilibrium layer (its input injection U x + b
is the stem) -> dense head``.

Convolutional (``kind="conv"``): ``image -> stem (a 3 x 3 convolution with 32 channels and
relu; stride 2 for images of 16 pixels or more, e.g. 28 x 28 -> 14 x 14) -> equilibrium layer
on the stem's grid (its injection a 3 x 3 convolution of the stem's output) -> average pooling
to a quarter of the stem's grid -> head: dense to 32 units, relu, dense to the classes``. The
multi-scale deep OptEq chain (:class:`DeepOptEqConv`) has two layers, on the stem's grid and on
half of it (a stride-2 coupling), so its output needs no pooling. Why this shape: the
equilibrium is where the compute goes (every step of the solver is one evaluation of the
layer's map, forward and backward), so it runs at the stem's resolution, and a small hidden
head holds the parameters a wider equilibrium would cost time for (see the training-step
profile in benchmarks/RESULTS.md).

Families: ``"opteq"`` (:class:`OptEqDense`, :class:`OptEqConv`), ``"deq"`` (unconstrained DEQ),
``"mondeq"`` (monotone DEQ, Peaceman--Rachford), ``"deep_opteq"`` (:class:`DeepOptEq`,
:class:`DeepOptEqConv`), and the reference ``"explicit"``: the equilibrium layer replaced by two
explicit layers ``relu(A2 relu(U x + b1) + b2)`` (dense: an MLP; conv: a plain CNN). The same
stem, pooling and head for all, so differences come from the equilibrium layer.

``model(x, return_info=True)`` returns ``(logits, info)``, ``info`` the equilibrium layer's
per-sample :class:`optjax.SolveInfo` (None for ``"explicit"``); ``model.stats`` is that layer's
:class:`optjax.nn.SolveSummary` of the last call.
"""

from __future__ import annotations

import math
from typing import Any, Sequence, cast

import jax
from flax import nnx

from optjax.config import ConfigError
from optjax.nn.deq import DEQConv, DEQDense
from optjax.nn.mondeq import MonDEQConv, MonDEQDense
from optjax.engine.result import BackwardStats
from optjax.nn.base import Output, SolveSummary, param_count
from optjax.nn.deep import DeepOptEq, DeepOptEqConv
from optjax.nn.opteq import OptEqConv, OptEqDense

__all__ = ["FAMILIES", "IMPLICIT_FAMILIES", "ExplicitBlock", "ImplicitClassifier", "matched_width",
           "matched_size", "build_matched", "param_count"]

FAMILIES = ("opteq", "deq", "mondeq", "deep_opteq", "explicit")
IMPLICIT_FAMILIES = FAMILIES[:4]
KINDS = ("dense", "conv")


class ExplicitBlock(nnx.Module):
    """Two explicit layers ``relu(A2 relu(U x + b1) + b2)``, dense or 3 x 3 convolutions (same
    size): the reference that the equilibrium layers replace. It solves nothing: no summary,
    and ``return_info=True`` returns None as the info."""

    def __init__(self, kind: str, in_size: int, width: int, *, rngs: nnx.Rngs):
        if kind == "dense":
            self.first: nnx.Linear | nnx.Conv = nnx.Linear(in_size, width, rngs=rngs)
            self.second: nnx.Linear | nnx.Conv = nnx.Linear(width, width, rngs=rngs)
        else:
            self.first = nnx.Conv(in_size, width, (3, 3), padding="SAME", rngs=rngs)
            self.second = nnx.Conv(width, width, (3, 3), padding="SAME", rngs=rngs)

    def __call__(self, x: jax.Array, *, return_info: bool = False) -> Output:
        out = nnx.relu(self.second(nnx.relu(self.first(x))))
        return (out, None) if return_info else out


STEM_CHANNELS = 32
HEAD_UNITS = 32
# monDEQ's strong-monotonicity margin in the classifiers (the layers' own default is 0.05): the
# value of the monDEQ authors' Peaceman-Rachford experiments (m = 1). Measured on Fashion-MNIST
# conv (width 39, batch 64, lr 3e-3): after 25-50 training steps the forward solve took 44-50
# Peaceman-Rachford steps (alpha = 1) to tol 1e-3 with m = 1, and all 300 of a 300-step cap with
# m = 0.05 (the splitting's rate bound is sqrt(1 - 4 alpha m / (1 + alpha L)^2)).
MONDEQ_M = 1.0


def _stem_stride(input_shape: Sequence[int]) -> int:
    return 2 if min(input_shape[:2]) >= 16 else 1


Layer = (OptEqDense | OptEqConv | DEQDense | DEQConv | MonDEQDense | MonDEQConv | DeepOptEq
         | DeepOptEqConv | ExplicitBlock)


def _layer(family: str, kind: str, input_shape: tuple[int, ...], width: int, rngs: nnx.Rngs,
           options: dict[str, Any]) -> Layer:
    """The equilibrium layer (or the explicit block) and the grid of its output (conv)."""
    h, w, c = input_shape
    if family == "explicit":
        if options:
            raise ConfigError(
                f"the explicit family has no solver options; got {', '.join(sorted(options))}")
        in_size = h * w * c if kind == "dense" else STEM_CHANNELS
        return ExplicitBlock(kind, in_size, width, rngs=rngs)
    if family == "mondeq":
        options = {"m": MONDEQ_M, **options}
    if kind == "dense":
        d = h * w * c
        if family == "opteq":
            return OptEqDense(d, width, rngs=rngs, **options)
        if family == "deq":
            return DEQDense(d, width, rngs=rngs, **options)
        if family == "mondeq":
            return MonDEQDense(d, width, rngs=rngs, **options)
        return DeepOptEq(d, (width, width), rngs=rngs, **options)
    grid = (h // _stem_stride(input_shape), w // _stem_stride(input_shape))
    if family == "opteq":
        return OptEqConv(STEM_CHANNELS, width, grid, rngs=rngs, **options)
    if family == "deq":
        return DEQConv(STEM_CHANNELS, width, rngs=rngs, **options)
    if family == "mondeq":
        return MonDEQConv(STEM_CHANNELS, width, rngs=rngs, **options)
    if grid[0] % 2 or grid[1] % 2:
        raise ConfigError(f"the deep_opteq conv chain halves the grid {grid}: it must be even")
    return DeepOptEqConv(STEM_CHANNELS, (width, width), grid, (2,), rngs=rngs, **options)


class ImplicitClassifier(nnx.Module):
    """A classifier around one equilibrium layer.

    Args:
      family: one of :data:`FAMILIES`.
      kind: ``"dense"`` or ``"conv"``.
      input_shape: ``(H, W, C)`` of one image (channels last).
      num_classes: size of the head's output.
      width: features of the equilibrium state (dense) or its channels (conv).
      head_units: hidden units of the conv head (default 32; dense classifiers have no hidden
        head): a fine control of the parameter count where one channel more or less of the
        equilibrium moves it by too much (small budgets).
      layer_options: passed to the equilibrium layer (solver, tol, max_steps, ...).

    Examples:
      >>> import jax
      >>> from flax import nnx
      >>> from optjax.nn import ImplicitClassifier
      >>> model = ImplicitClassifier("opteq", "dense", (8, 8, 1), 10, 16, rngs=nnx.Rngs(0))
      >>> images = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
      >>> logits, info = model(images, return_info=True)
      >>> logits.shape, bool(info.converged.all())
      ((2, 10), True)
    """

    def __init__(self, family: str, kind: str, input_shape: Sequence[int], num_classes: int,
                 width: int, *, rngs: nnx.Rngs, head_units: int = HEAD_UNITS,
                 **layer_options: Any) -> None:
        if family not in FAMILIES:
            raise ConfigError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
        if kind not in KINDS:
            raise ConfigError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
        if not isinstance(head_units, int) or isinstance(head_units, bool) or head_units < 1:
            raise ConfigError(f"head_units must be a positive int, got {head_units!r}")
        if kind == "dense" and head_units != HEAD_UNITS:
            raise ConfigError("head_units sets the hidden head of a conv classifier; the dense "
                              "classifier's head is one linear layer: drop head_units")
        self.family, self.kind = family, kind
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) != 3:
            raise ConfigError(f"input_shape must be (H, W, C), got {tuple(input_shape)}")
        self.layer = _layer(family, kind, self.input_shape, width, rngs, layer_options)
        h, w, c = self.input_shape
        if kind == "dense":
            self.stem: nnx.Conv | None = None
            self.pool = 1
            self.head = nnx.Linear(width, num_classes, rngs=rngs)
            self.hidden: nnx.Linear | None = None
            return
        stride = _stem_stride(self.input_shape)
        self.stem = nnx.Conv(c, STEM_CHANNELS, (3, 3), strides=stride, padding="SAME",
                             rngs=rngs)
        grid = (h // stride, w // stride)
        self.pool = 1 if family == "deep_opteq" else 2  # the chain's output is already halved
        features = (grid[0] // 2) * (grid[1] // 2) * width
        self.hidden = nnx.Linear(features, head_units, rngs=rngs)
        self.head = nnx.Linear(head_units, num_classes, rngs=rngs)

    @property
    def stats(self) -> SolveSummary | None:
        """The equilibrium layer's :class:`optjax.nn.SolveSummary` (None for ``"explicit"``)."""
        return getattr(self.layer, "stats", None)

    def __call__(self, x: jax.Array, *, return_info: bool = False,
                 backward_probe: BackwardStats | None = None) -> Output:
        """Logits (and the layer's :class:`optjax.SolveInfo`, None for ``"explicit"``, with
        ``return_info``). ``backward_probe``: an :func:`optjax.backward_probe` whose gradient
        carries the backward solve's statistics (ignored by ``"explicit"``)."""
        probe: dict[str, Any] = ({} if self.family == "explicit"
                                 else dict(backward_probe=backward_probe))
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected images of shape (batch,) + {self.input_shape} (channels last); got "
                f"{tuple(x.shape)}"
            )
        if self.kind == "dense":
            features, info = self.layer(x.reshape(x.shape[0], -1), return_info=True, **probe)
            logits = self.head(features)
        else:
            # stem and hidden are set in a conv classifier
            features, info = self.layer(nnx.relu(cast(nnx.Conv, self.stem)(x)), return_info=True,
                                        **probe)
            if self.pool > 1:
                features = nnx.avg_pool(features, (self.pool, self.pool),
                                        strides=(self.pool, self.pool))
            hidden = nnx.relu(cast(nnx.Linear, self.hidden)(features.reshape(x.shape[0], -1)))
            logits = self.head(hidden)
        return (logits, info) if return_info else logits


def _count(family: str, kind: str, input_shape: Sequence[int], num_classes: int, width: int,
           options: dict[str, Any], head_units: int = HEAD_UNITS) -> int:
    abstract = nnx.eval_shape(lambda: ImplicitClassifier(
        family, kind, input_shape, num_classes, width, rngs=nnx.Rngs(0), head_units=head_units,
        **options))
    return param_count(abstract)


def matched_size(family: str, kind: str, input_shape: Sequence[int], num_classes: int,
                 target: int, **layer_options: Any) -> tuple[int, int, int]:
    """``(width, head_units, count)`` of the conv classifier nearest to ``target`` parameters:
    the width of :func:`matched_width` (``closest=True``), then the head's hidden units (16 to
    64) that bring the count nearest to ``target``. At small budgets one channel of the
    equilibrium moves the count by about 14% (the head's input grows with it); the head's units
    move it by well under 1%, so every family lands within about 1% of the same target."""
    if kind != "conv":
        raise ConfigError("matched_size tunes the hidden head of a conv classifier; for dense "
                          "classifiers use matched_width")
    width, _ = matched_width(family, kind, input_shape, num_classes, target, closest=True,
                             **layer_options)
    base = _count(family, kind, input_shape, num_classes, width, layer_options)
    per_unit = _count(family, kind, input_shape, num_classes, width, layer_options,
                      HEAD_UNITS + 1) - base  # the count is affine in the head's units
    head = min(range(HEAD_UNITS // 2, 2 * HEAD_UNITS + 1),
               key=lambda h: (abs(base + (h - HEAD_UNITS) * per_unit - target), abs(h - HEAD_UNITS)))
    return width, head, _count(family, kind, input_shape, num_classes, width, layer_options, head)


def matched_width(family: str, kind: str, input_shape: Sequence[int], num_classes: int,
                  target: int, *, closest: bool = False,
                  **layer_options: Any) -> tuple[int, int]:
    """The largest width whose classifier has at most ``target`` parameters, and that count;
    with ``closest``, the width whose count is nearest to ``target`` (at most one width more).

    Examples:
      >>> from optjax.nn import matched_width
      >>> matched_width("opteq", "dense", (8, 8, 1), 10, 2800)    # (width, parameter count)
      (16, 2762)
    """
    if closest:
        width, count = matched_width(family, kind, input_shape, num_classes, target,
                                     **layer_options)
        above = _count(family, kind, input_shape, num_classes, width + 1, layer_options)
        return (width + 1, above) if above - target < target - count else (width, count)
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


def build_matched(family: str, kind: str, input_shape: Sequence[int], num_classes: int,
                  target: int, *, rngs: nnx.Rngs, **layer_options: Any) -> ImplicitClassifier:
    """A classifier with the largest width that keeps at most ``target`` parameters; its count
    is ``param_count(model)``.

    Examples:
      >>> from flax import nnx
      >>> from optjax.nn import build_matched, param_count
      >>> model = build_matched("opteq", "dense", (8, 8, 1), 10, 2800, rngs=nnx.Rngs(0))
      >>> model.layer.features, param_count(model)     # the widest with <= 2800 parameters
      (16, 2762)
    """
    width, _ = matched_width(family, kind, input_shape, num_classes, target, **layer_options)
    return ImplicitClassifier(family, kind, input_shape, num_classes, width, rngs=rngs,
                              **layer_options)


def relative_gap(counts: Sequence[int]) -> float:
    """(max - min) / max of parameter counts: how well they are matched."""
    return (max(counts) - min(counts)) / max(counts) if counts and max(counts) else math.nan
