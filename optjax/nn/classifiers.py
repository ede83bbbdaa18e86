"""Image classifiers for each implicit family, built at a matched parameter count.

Dense (``kind="dense"``): ``flattened image -> equilibrium layer (its input injection U x + b
is the stem) -> dense head``.

Convolutional (``kind="conv"``): ``image -> stem (a 3 x 3 convolution with 32 channels and relu;
stride 2 for images of 16 pixels or more, e.g. 28 x 28 -> 14 x 14) -> equilibrium layer on the
stem's grid (its injection a 3 x 3 convolution of the stem's output) -> average pooling to a
quarter of the stem's grid -> head: dense to 32 units, relu, dense to the classes``. The deep OptEq
chain (:class:`DeepOptEqConv`) has, by default, two tiers of ``width`` channels, both on the stem's
grid (a stride-1 coupling), pooled to the head's grid as OptEq's layer is: in the design study of
benchmarks/RESULTS.md ("Deep OptEq design") this chain beat the multi-scale one
(``tier_strides=(2,)``: the second tier on half the grid, no pooling) on every seed at every
budget, at up to 1.7 times its epoch time (15K parameters). ``tier_channels`` and ``tier_strides``
choose other chains (e.g. three tiers ``(0.5, 1, 2)`` with strides ``(1, 2)``: a cheap
full-resolution tier first). ``stem_channels`` and ``stem_stride`` set the stem of every conv
family (defaults 32 and 2 for images of 16 pixels or more); the head's grid stays half of the
default stem's grid, so the head's size does not depend on them. Why this shape: the equilibrium is
where the compute goes (every step of the solver is one evaluation of the layer's map, forward and
backward), so it runs at the stem's resolution, and a small hidden head holds the parameters a
wider equilibrium would cost time for (see the training-step profile in benchmarks/RESULTS.md).

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
    """The default stem stride: 2 for images of 16 pixels or more (28 x 28 -> 14 x 14), else 1."""
    return 2 if min(input_shape[:2]) >= 16 else 1


DEFAULT_TIER_CHANNELS = (1.0, 1.0)
DEFAULT_TIER_STRIDES = (1,)


def tier_sizes(width: int, tier_channels: Sequence[float]) -> tuple[int, ...]:
    """The channels (conv) or features (dense) of each tier of a deep OptEq classifier:
    ``max(1, round(m * width))`` for each multiplier ``m`` of ``tier_channels``, so that
    :func:`matched_width` can scale the whole chain with one number."""
    return tuple(max(1, round(float(m) * width)) for m in tier_channels)


def check_design(family: str, kind: str, stem_channels: int, stem_stride: int | None,
                  tier_channels: tuple, tier_strides: tuple, head_grid: int | None = None) -> None:
    """Refuse a stem or chain design that the family and kind do not have (ConfigError)."""
    def positive(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    if not positive(stem_channels):
        raise ConfigError(f"stem_channels must be a positive int, got {stem_channels!r}")
    if stem_stride is not None and not positive(stem_stride):
        raise ConfigError(f"stem_stride must be a positive int (or None: automatic), got "
                          f"{stem_stride!r}")
    if kind == "dense" and (stem_channels != STEM_CHANNELS or stem_stride is not None):
        raise ConfigError("stem_channels and stem_stride set the stem of a conv classifier; the "
                          "dense classifier has none: drop them")
    if not tier_channels or not all(isinstance(m, (int, float)) and not isinstance(m, bool)
                                    and m > 0 for m in tier_channels):
        raise ConfigError(f"tier_channels must be positive multipliers of the width, one per "
                          f"tier, got {tier_channels!r}")
    if head_grid is not None and (kind == "dense" or not positive(head_grid)):
        raise ConfigError(f"head_grid must be a positive int (the side of the conv head's "
                          f"pooled grid; None: half the default stem's), got {head_grid!r}"
                          + ("; the dense classifier has no pooling: drop it"
                             if kind == "dense" else ""))
    if not all(positive(t) for t in tier_strides):
        raise ConfigError(f"tier_strides must be positive ints, got {tier_strides!r}")
    designed = (tier_channels != DEFAULT_TIER_CHANNELS or tier_strides != DEFAULT_TIER_STRIDES)
    if family != "deep_opteq" and designed:
        raise ConfigError(f"tier_channels and tier_strides shape the deep OptEq chain; the "
                          f"{family} family has one layer: drop them (or use family deep_opteq)")
    if family == "deep_opteq":
        if kind == "dense" and tier_strides != DEFAULT_TIER_STRIDES:
            raise ConfigError("tier_strides downsample a conv chain; the dense deep OptEq chain "
                              "has none: drop them")
        if kind == "conv" and len(tier_strides) != len(tier_channels) - 1:
            raise ConfigError(
                f"tier_strides needs one stride per coupling between tiers: "
                f"{len(tier_channels)} tiers take {len(tier_channels) - 1}, got "
                f"{len(tier_strides)} ({tier_strides!r})")


Layer = (OptEqDense | OptEqConv | DEQDense | DEQConv | MonDEQDense | MonDEQConv | DeepOptEq
         | DeepOptEqConv | ExplicitBlock)


def _layer(family: str, kind: str, input_shape: tuple[int, ...], width: int, rngs: nnx.Rngs,
           options: dict[str, Any], stem_channels: int, grid: tuple[int, int],
           tier_channels: tuple, tier_strides: tuple) -> Layer:
    """The equilibrium layer (or the explicit block)."""
    h, w, c = input_shape
    if family == "explicit":
        if options:
            raise ConfigError(
                f"the explicit family has no solver options; got {', '.join(sorted(options))}")
        in_size = h * w * c if kind == "dense" else stem_channels
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
        return DeepOptEq(d, tier_sizes(width, tier_channels), rngs=rngs, **options)
    if family == "opteq":
        return OptEqConv(stem_channels, width, grid, rngs=rngs, **options)
    if family == "deq":
        return DEQConv(stem_channels, width, rngs=rngs, **options)
    if family == "mondeq":
        return MonDEQConv(stem_channels, width, rngs=rngs, **options)
    size = grid
    for t in tier_strides:
        if size[0] % t or size[1] % t:
            raise ConfigError(
                f"the deep_opteq conv chain on the stem's {grid[0]} x {grid[1]} grid cannot take "
                f"the tier strides {tier_strides}: {size[0]} x {size[1]} is not divisible by {t}; "
                "choose strides whose product divides the grid (or another stem_stride)")
        size = (size[0] // t, size[1] // t)
    return DeepOptEqConv(stem_channels, tier_sizes(width, tier_channels), grid, tier_strides,
                         rngs=rngs, **options)


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
      stem_channels, stem_stride: the conv stem's output channels (32) and stride (None: 2 for
        images of 16 pixels or more, else 1); conv only.
      tier_channels: deep_opteq only: one multiplier of ``width`` per tier of the chain (default
        ``(1, 1)``: two tiers of ``width``); tier ``l`` has ``max(1, round(m_l * width))``.
      tier_strides: deep_opteq conv only: the stride of each coupling (default ``(1,)``: both
        tiers on the stem's grid; ``(2,)``: the second on half of it); their product must
        divide the stem's grid.
      head_grid: conv only: the side of the grid the equilibrium's output is average-pooled to
        before the head (None: half of the default stem's grid, 7 for 28 x 28 images); smaller
        moves parameters from the head into the equilibrium at a fixed budget.
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
                 stem_channels: int = STEM_CHANNELS, stem_stride: int | None = None,
                 tier_channels: Sequence[float] = DEFAULT_TIER_CHANNELS,
                 tier_strides: Sequence[int] = DEFAULT_TIER_STRIDES,
                 head_grid: int | None = None, **layer_options: Any) -> None:
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
        tier_channels = tuple(tier_channels)
        tier_strides = tuple(tier_strides)
        check_design(family, kind, stem_channels, stem_stride, tier_channels, tier_strides,
                     head_grid)
        stride = _stem_stride(self.input_shape) if stem_stride is None else stem_stride
        # the stem's output grid (SAME padding rounds up): the equilibrium's grid
        stem_grid = (-(-self.input_shape[0] // stride), -(-self.input_shape[1] // stride))
        self.layer = _layer(family, kind, self.input_shape, width, rngs, layer_options,
                            stem_channels, stem_grid, tier_channels, tier_strides)
        h, w, c = self.input_shape
        if kind == "dense":
            self.stem: nnx.Conv | None = None
            self.pool = 1
            self.head = nnx.Linear(width, num_classes, rngs=rngs)
            self.hidden: nnx.Linear | None = None
            return
        self.stem = nnx.Conv(c, stem_channels, (3, 3), strides=stride, padding="SAME",
                             rngs=rngs)
        # The head's grid: half of the default stem's whatever this stem and chain are, unless
        # head_grid is given (it then is the pooled grid's longer side).
        auto = _stem_stride(self.input_shape)
        grid_hw = ((h // auto) // 2, (w // auto) // 2)
        if head_grid is not None:
            grid_hw = (max(1, head_grid * grid_hw[0] // max(grid_hw)),
                       max(1, head_grid * grid_hw[1] // max(grid_hw)))
        out_grid: tuple[int, ...] = stem_grid
        out_channels = width
        if family == "deep_opteq":
            deep = cast(DeepOptEqConv, self.layer)
            out_grid, out_channels = deep.grids[-1], deep.channels[-1]
        pool = out_grid[0] // grid_hw[0]  # average pooling with VALID padding floors
        if pool < 1 or any(n // pool != m for n, m in zip(out_grid, grid_hw)):
            raise ConfigError(
                f"the equilibrium's {out_grid[0]} x {out_grid[1]} output cannot be pooled to the "
                f"head's {grid_hw[0]} x {grid_hw[1]} grid with one pooling window; choose a "
                "head_grid, stem_stride or tier_strides so that it can be")
        self.pool = pool
        features = grid_hw[0] * grid_hw[1] * out_channels
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
