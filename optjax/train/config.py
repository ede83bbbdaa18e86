"""The training configuration: one typed, frozen, flat record of every option of a run.

Built from defaults, a JSON or TOML file, and command-line flags (in that order of precedence,
last wins); unknown keys and values of the wrong type are refused with a message naming them.

Resuming (:func:`resume_changes`) sorts the options in three groups:

* fixed (:data:`MODEL_FIELDS`, :data:`DATA_ORDER_FIELDS`): the model (parameter layout and what
  the weights mean) and what a step number means (the batch of step ``s`` is drawn from
  ``(seed, epoch)`` with ``num_train // batch_size`` steps per epoch); a checkpoint can only be
  resumed or evaluated with the values it was written with;
* output (:data:`OUTPUT_FIELDS`): where and how results are written, free to change;
* everything else (optimisation, solver, augmentation): may change when resuming, after which
  the run is no longer identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import pathlib
import types
import typing
from typing import Any, Mapping

from optjax.convex import activations as _activations
from optjax import solvers as _solvers
from optjax.engine.backward import BACKWARDS
from optjax.config import Config, ConfigError, in_interval, positive_int, require
from optjax.data import DATASETS as _DATASETS
from optjax.nn.classifiers import FAMILIES as _FAMILIES
from optjax.nn.classifiers import check_design as _check_design
from optjax.train.config_file import load_file
from optjax.families.deep.problem import SWEEPS as _SWEEPS

__all__ = ["TrainConfig", "MODEL_FIELDS", "DATA_ORDER_FIELDS", "OUTPUT_FIELDS", "KINDS",
           "SCHEDULES", "BACKWARD_CHOICES", "activation_choices", "fixed_on_resume",
           "resumable_fields", "resume_changes", "saved_options", "load_file"]

KINDS = ("dense", "conv")
SCHEDULES = ("cosine", "constant")
BACKWARD_CHOICES = tuple(BACKWARDS) + ("auto",)
# The families whose layer takes no activation option: monotone DEQ is written for relu, the
# explicit reference uses relu.
_FIXED_ACTIVATION = {"mondeq": "relu", "explicit": "relu"}


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """Every option of a training run (see ``optjax train --help`` for the flags).

    Data: ``dataset`` (digits | fashion-mnist | mnist | cifar10), ``data_dir``, and
    ``train_subset`` / ``test_subset`` to keep only the first n samples (quick runs).

    Model: ``family`` (opteq | deq | mondeq | deep_opteq | explicit), ``kind`` (dense | conv),
    ``width`` (features or channels of the equilibrium state), ``head_units`` (hidden units of
    the conv head), ``activation`` (deep_opteq: one name, or one per tier separated by commas),
    ``rho`` (``||W|| <= rho``, OptEq families); the conv stem's ``stem_channels`` and
    ``stem_stride`` (None: automatic) and the side ``head_grid`` of the grid pooled into the
    head (None: half the default stem's); deep OptEq's chain: ``tier_channels`` (comma-separated
    multipliers of ``width``, one per tier), ``tier_strides`` (conv: comma-separated, one per
    coupling; default "1", every tier on the stem's grid) and ``sweep`` (gauss_seidel | jacobi); see
    :class:`optjax.nn.classifiers.ImplicitClassifier`; forward ``solver`` (None: the layer's
    default), ``tol``, ``max_steps``; ``anderson_ridge`` (the Anderson solver's ridge, when it
    is the forward solver: DEQ's default; None: the solver's own); ``backward`` mode with
    ``backward_steps`` and ``backward_tol``; ``certify`` (OptEq layers: None, the default,
    certifies in evaluation only, True every call, False never; see :mod:`optjax.nn.opteq`);
    ``lipschitz_margin`` (0: off) trains for certified robustness at that L2 radius (the loss
    adds the margins that certify it, :func:`optjax.nn.robustness.margin_offsets`; not for DEQ,
    which has no bound); ``jacobian_penalty`` (DEQ only; 0: off) adds that multiple of the
    Hutchinson estimate of ``||J||_F^2 / d`` at the equilibrium to the loss (Bai et al. 2021;
    :func:`optjax.deq.jacobian_frobenius`): OptEq's Jacobian is bounded by construction.

    Optimisation: AdamW with ``learning_rate``, ``weight_decay``, linear warm-up over
    ``warmup_epochs`` then ``schedule`` (cosine decay to 0, or constant); ``grad_clip`` (global
    norm; None: off); ``epochs`` x (``num_train // batch_size``) steps; ``seed`` fixes the
    initialisation and the data order (epoch e uses the permutation drawn from ``(seed, e)``).

    Augmentation (training batches only, never at evaluation): ``augment_crop`` pads each image
    with that many zero pixels on every side (zeros of the standardised image, i.e. the training
    set's mean) and crops a random window of the original size; ``augment_flip`` mirrors each
    image left-right with probability 1/2 (for natural images: it is wrong for digits and
    letters). Both are drawn from ``(seed, step, position in the batch)``.

    Output: ``out_dir`` receives ``config.json``, ``metrics.jsonl``, ``checkpoints/``, the plots
    and ``eval.json``; a checkpoint every ``checkpoint_every`` steps (0: at each epoch end), the
    last ``keep_checkpoints`` kept; ``stop_after`` ends the run early after that many steps (in
    total, counted from step 0) with a checkpoint, as an interruption would.
    """

    # data
    dataset: str = "digits"
    data_dir: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    # model
    family: str = "opteq"
    kind: str = "conv"
    width: int = 32
    head_units: int = 32
    activation: str = "relu"
    rho: float = 0.95
    stem_channels: int = 32
    stem_stride: int | None = None
    head_grid: int | None = None
    tier_channels: str = "1,1"
    tier_strides: str = "1"
    sweep: str = "gauss_seidel"
    solver: str | None = None
    anderson_ridge: float | None = None
    tol: float = 1e-3
    max_steps: int = 50
    backward: str = "auto"
    backward_steps: int = 30
    backward_tol: float | None = None
    certify: bool | None = None
    lipschitz_margin: float = 0.0
    jacobian_penalty: float = 0.0
    # optimisation
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-2
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    schedule: str = "cosine"
    grad_clip: float | None = 1.0
    seed: int = 0
    # augmentation
    augment_crop: int = 0
    augment_flip: bool = False
    # output
    out_dir: str = "runs/digits"
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    stop_after: int | None = None
    eval_batch_size: int = 256
    progress: bool = True
    plots: bool = True

    def _validate(self) -> None:
        _check_types(self)
        name = "TrainConfig"
        require(self.dataset in _DATASETS,
                f"{name}.dataset must be one of {', '.join(_DATASETS)}, got {self.dataset!r}")
        require(self.family in _FAMILIES,
                f"{name}.family must be one of {', '.join(_FAMILIES)}, got {self.family!r}")
        require(self.kind in KINDS,
                f"{name}.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        require(self.schedule in SCHEDULES,
                f"{name}.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        require(self.backward in BACKWARD_CHOICES,
                f"{name}.backward must be one of {', '.join(BACKWARD_CHOICES)}, got "
                f"{self.backward!r}")
        require(self.backward != "splitting" or self.family == "mondeq",
                f"{name}.backward='splitting' runs Peaceman--Rachford on the backward system, "
                f"which only the mondeq family has; got family {self.family!r}: use auto, cg, "
                "gmres or fixed_point")
        require(self.solver is None or self.solver in _solvers.SOLVERS,
                f"{name}.solver must be one of {', '.join(_solvers.SOLVERS)} (or None: the "
                f"layer's default), got {self.solver!r}")
        _check_activation(self.family, self.activation, self.tier_channels)
        require(self.sweep in _SWEEPS,
                f"{name}.sweep must be one of {', '.join(_SWEEPS)}, got {self.sweep!r}")
        require(self.sweep == "gauss_seidel" or self.family == "deep_opteq",
                f"{name}.sweep orders the deep OptEq chain's tiers; the {self.family} family has "
                "one layer: drop it (or use family deep_opteq)")
        _check_design(self.family, self.kind, self.stem_channels, self.stem_stride,
                      self.tier_channel_multipliers, self.tier_stride_values, self.head_grid)
        require(self.kind == "conv" or self.head_units == 32,
                f"{name}.head_units sets the hidden head of a conv classifier; the dense "
                f"classifier has none: drop it (got {self.head_units})")
        for field in ("width", "head_units", "max_steps", "backward_steps", "epochs", "batch_size",
                      "keep_checkpoints", "eval_batch_size"):
            positive_int(name, field, getattr(self, field))
        for field in ("train_subset", "test_subset", "stop_after"):
            if getattr(self, field) is not None:
                positive_int(name, field, getattr(self, field))
        positive_int(name, "checkpoint_every", self.checkpoint_every, minimum=0)
        positive_int(name, "augment_crop", self.augment_crop, minimum=0)
        positive_int(name, "seed", self.seed, minimum=0)
        in_interval(name, "rho", self.rho, 0.0, 1.0)
        in_interval(name, "tol", self.tol, 0.0, 1.0)
        if self.backward_tol is not None:
            in_interval(name, "backward_tol", self.backward_tol, 0.0, 1.0)
        require(isinstance(self.lipschitz_margin, (int, float)) and self.lipschitz_margin >= 0,
                f"{name}.lipschitz_margin must be a radius >= 0 (0: off), got "
                f"{self.lipschitz_margin!r}")
        require(self.lipschitz_margin == 0 or self.family != "deq",
                f"{name}.lipschitz_margin needs a Lipschitz bound, which the deq family does not "
                "have; use opteq, deep_opteq, mondeq or explicit")
        require(isinstance(self.jacobian_penalty, (int, float)) and self.jacobian_penalty >= 0,
                f"{name}.jacobian_penalty must be a weight >= 0 (0: off), got "
                f"{self.jacobian_penalty!r}")
        require(self.jacobian_penalty == 0 or self.family == "deq",
                f"{name}.jacobian_penalty regularises a DEQ's Jacobian; the {self.family} "
                "family's is bounded by construction (set it to 0, or use family deq)")
        if self.anderson_ridge is not None:
            in_interval(name, "anderson_ridge", self.anderson_ridge, 0.0, 1e6)
        in_interval(name, "learning_rate", self.learning_rate, 0.0, 10.0)
        in_interval(name, "weight_decay", self.weight_decay, 0.0, 10.0, open_low=False)
        in_interval(name, "warmup_epochs", self.warmup_epochs, 0.0, float(self.epochs),
                    open_low=False)
        if self.grad_clip is not None:
            in_interval(name, "grad_clip", self.grad_clip, 0.0, float("inf"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def tier_channel_multipliers(self) -> tuple[float, ...]:
        """``tier_channels`` as numbers (deep OptEq: one multiplier of ``width`` per tier)."""
        return _numbers("tier_channels", self.tier_channels, float)

    @property
    def tier_stride_values(self) -> tuple[int, ...]:
        """``tier_strides`` as ints (deep OptEq conv: one per coupling)."""
        return _numbers("tier_strides", self.tier_strides, int)

    @property
    def activations(self) -> str | tuple[str, ...]:
        """``activation``, split into one name per tier where it lists several (deep OptEq)."""
        names = tuple(a.strip() for a in self.activation.split(","))
        return names if len(names) > 1 else self.activation

    def model_fields(self) -> dict[str, Any]:
        """The options that fix the model (compared with a checkpoint's before restoring it)."""
        return {k: getattr(self, k) for k in MODEL_FIELDS}

    @property
    def out_path(self) -> pathlib.Path:
        return pathlib.Path(self.out_dir)


#: The model: its parameter layout and what its weights mean.
MODEL_FIELDS = ("dataset", "family", "kind", "width", "head_units", "activation",
                "stem_channels", "stem_stride", "head_grid", "tier_channels", "tier_strides",
                "jacobian_penalty")
#: What a step number means: the batch of step s comes from (seed, epoch) and the position in
#: an epoch of num_train // batch_size steps.
DATA_ORDER_FIELDS = ("train_subset", "batch_size", "seed")
#: Where and how results are written; changing them changes nothing that is computed.
OUTPUT_FIELDS = ("data_dir", "out_dir", "stop_after", "checkpoint_every", "keep_checkpoints",
                 "eval_batch_size", "progress", "plots")

_FIXED_REASONS = {
    "dataset": "the input shape, the classes and the data",
    "family": "the parameter layout", "kind": "the parameter layout",
    "width": "the parameter layout", "head_units": "the parameter layout",
    "activation": "the function the trained weights compute",
    "stem_channels": "the parameter layout", "stem_stride": "the parameter layout",
    "head_grid": "the parameter layout", "tier_channels": "the parameter layout",
    "tier_strides": "the parameter layout",
    "jacobian_penalty": "the loss, and the layer's random stream in the checkpoint",
    "train_subset": "which samples an epoch holds, so what a step number means",
    "batch_size": "the number of steps per epoch, so what a step number means",
    "seed": "the data order of every epoch (and the augmentation)",
}


def fixed_on_resume() -> dict[str, str]:
    """The options a resumed run must keep, each with what it fixes."""
    return {k: f"it fixes {_FIXED_REASONS[k]}" for k in (*MODEL_FIELDS, *DATA_ORDER_FIELDS)}


def resumable_fields() -> tuple[str, ...]:
    """The options that may change when resuming (output and computation options)."""
    fixed = fixed_on_resume()
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in fixed)


#: Model options whose default has changed, with what a saved record lacking one means (it was
#: written before the option existed). tier_strides: the multi-scale deep OptEq chain, the only
#: one then and the default until the one-grid chain ("1").
RECORDED_BEFORE: dict[str, Any] = {"tier_strides": "2"}


def saved_options(record: Any) -> Any:
    """A saved configuration or model record (a checkpoint's ``config`` or ``model`` mapping)
    as today's options for the model it describes: an option the record lacks takes the value it
    meant when the record was written (:data:`RECORDED_BEFORE`; other absent options, today's
    default), and ``tier_strides``, which shapes deep OptEq's conv chain only, takes today's
    default in every other model (their records hold the default of their day, which
    ``TrainConfig`` would refuse now). A non-mapping is returned as it is, for ``from_dict``."""
    if not isinstance(record, Mapping):
        return record
    options = {**RECORDED_BEFORE, **record}
    family = options.get("family", TrainConfig.family)
    kind = options.get("kind", TrainConfig.kind)
    if (family, kind) != ("deep_opteq", "conv"):
        options["tier_strides"] = TrainConfig.tier_strides
    return options


def resume_changes(saved: Mapping[str, Any], config: TrainConfig) -> list[str]:
    """The computation options of ``config`` that differ from a checkpoint's configuration
    ``saved``, as ``"name old -> new"``; output options may differ silently.

    Raises :class:`ConfigError` naming every fixed option (:func:`fixed_on_resume`) that
    differs, with what it fixes."""
    now = config.to_dict()
    fixed = fixed_on_resume()
    # A checkpoint written before an option existed ran with its default of that day.
    defaults = TrainConfig().to_dict()
    saved = saved_options(saved)
    saved = {**{k: defaults[k] for k in now if k not in saved}, **saved}
    refused = [f"{k} (checkpoint {saved.get(k)!r}, now {now[k]!r}: {fixed[k]})" for k in fixed
               if saved.get(k) != now[k]]
    if refused:
        raise ConfigError(
            "--resume continues the run in its checkpoint, but these options differ and cannot "
            "change: " + "; ".join(refused) + ". Drop them (the run's own values are used), or "
            "start a new run in another --out-dir. Options that may change when resuming: "
            + ", ".join(_flag(k) for k in resumable_fields()))
    return [f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in now
            if k not in fixed and k not in OUTPUT_FIELDS and saved.get(k, now[k]) != now[k]]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def activation_choices(family: str) -> str:
    """The activations ``family`` accepts, in words."""
    if family in _FIXED_ACTIVATION:
        return f"{_FIXED_ACTIVATION[family]} only"
    names = ", ".join(_activations.available())
    if family == "deq":
        return f"{names}, or any jax.nn function name (e.g. gelu, silu)"
    return names


def _numbers(field: str, text: str, kind: type) -> tuple:
    try:
        return tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"TrainConfig.{field} must be comma-separated "
                          f"{'numbers' if kind is float else 'ints'}, e.g. "
                          f"{'0.5,1,2' if kind is float else '1,2'}; got {text!r}") from None


def _check_activation(family: str, name: str, tier_channels: str = "1,1") -> None:
    if "," in name:
        names = [n.strip() for n in name.split(",")]
        tiers = len(tier_channels.split(","))
        require(family == "deep_opteq",
                f"TrainConfig.activation {name!r}: one activation per tier is for the deep_opteq "
                f"family; {family} has one layer: give one name")
        require(len(names) == tiers,
                f"TrainConfig.activation {name!r} names {len(names)} activations for a chain of "
                f"{tiers} tiers (tier_channels {tier_channels!r}): give one, or one per tier")
        for n in names:
            _check_activation(family, n)
        return
    where = f"TrainConfig.activation {name!r}"
    if family in _FIXED_ACTIVATION:
        require(name == _FIXED_ACTIVATION[family],
                f"{where}: family {family!r} has a fixed activation ({_FIXED_ACTIVATION[family]}); "
                "drop --activation, or choose the family opteq, deep_opteq or deq")
        return
    if name in _activations.available():
        return
    if family == "deq":
        import jax

        require(callable(getattr(jax.nn, name, None)),
                f"{where} is unknown for family 'deq'; available: {activation_choices(family)}")
        return
    try:
        _activations.get(name)
    except _activations.NotAProxError:
        raise ConfigError(
            f"{where}: {name} is not a proximal operator (nondecreasing and 1-Lipschitz), which "
            f"family {family!r} needs for its equilibrium to minimise a convex objective; "
            f"available for {family}: {activation_choices(family)} (or use --family deq, which "
            "takes any jax.nn activation)") from None
    except ValueError:
        pass
    raise ConfigError(f"{where} is unknown; available for family {family!r}: "
                      f"{activation_choices(family)}")


def _allowed(annotation: str) -> tuple[type, ...]:
    hint = typing.get_type_hints(TrainConfig)[annotation]
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(args)


def _check_types(config: TrainConfig) -> None:
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        allowed = _allowed(field.name)
        ok = isinstance(value, allowed)
        if isinstance(value, bool) and bool not in allowed:
            ok = False  # True is an int in Python; not here
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            ok = True  # 1 is an acceptable float
        if not ok:
            names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            raise ConfigError(
                f"TrainConfig.{field.name} must be {names}, got {value!r} "
                f"({type(value).__name__})")
