"""The training configuration: one typed, frozen, flat record of every option of a run.

Built from defaults, a JSON or TOML file, and command-line flags (in that order of precedence,
last wins); unknown keys and values of the wrong type are refused with a message naming them.
The model fields (:data:`MODEL_FIELDS`) define the parameter layout: a checkpoint can only be
resumed or evaluated with the same values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import types
import typing
from typing import Any, Mapping

from optjax.backward import BACKWARDS
from optjax.config import Config, ConfigError, in_interval, positive_int, require
from optjax.data import DATASETS as _DATASETS
from optjax.nn.classifiers import FAMILIES as _FAMILIES

__all__ = ["TrainConfig", "MODEL_FIELDS", "load_file"]

_SCHEDULES = ("cosine", "constant")
_BACKWARDS = tuple(BACKWARDS) + ("auto",)


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """Every option of a training run (see ``optjax train --help`` for the flags).

    Data: ``dataset`` (digits | fashion-mnist | mnist | cifar10), ``data_dir``, and
    ``train_subset`` / ``test_subset`` to keep only the first n samples (quick runs).

    Model: ``family`` (opteq | deq | mondeq | deep_opteq | explicit), ``kind`` (dense | conv),
    ``width`` (features or channels of the equilibrium state), ``activation``, ``rho``
    (``||W|| <= rho``, OptEq families), forward ``solver`` (None: the layer's default), ``tol``,
    ``max_steps``; ``anderson_ridge`` (the Anderson solver's ridge, when it is the forward
    solver: DEQ's default; None: the solver's own); ``backward`` mode with ``backward_steps``
    and ``backward_tol``; ``certify`` (exact ``||W||`` and certificates every call, OptEq).

    Optimisation: AdamW with ``learning_rate``, ``weight_decay``, linear warm-up over
    ``warmup_epochs`` then ``schedule`` (cosine decay to 0, or constant); ``grad_clip`` (global
    norm; None: off); ``epochs`` x (``num_train // batch_size``) steps; ``seed`` fixes the
    initialisation and the data order (epoch e uses the permutation drawn from ``(seed, e)``).

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
    activation: str = "relu"
    rho: float = 0.95
    solver: str | None = None
    anderson_ridge: float | None = None
    tol: float = 1e-3
    max_steps: int = 50
    backward: str = "gmres"
    backward_steps: int = 30
    backward_tol: float | None = None
    certify: bool = True
    # optimisation
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-2
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    schedule: str = "cosine"
    grad_clip: float | None = 1.0
    seed: int = 0
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
        require(self.kind in ("dense", "conv"),
                f"{name}.kind must be 'dense' or 'conv', got {self.kind!r}")
        require(not (self.family == "deep_opteq" and self.kind == "conv"),
                "family 'deep_opteq' is dense only: use kind='dense'")
        require(self.schedule in _SCHEDULES,
                f"{name}.schedule must be one of {', '.join(_SCHEDULES)}, got {self.schedule!r}")
        require(self.backward in _BACKWARDS,
                f"{name}.backward must be one of {', '.join(_BACKWARDS)}, got {self.backward!r}")
        for field in ("width", "max_steps", "backward_steps", "epochs", "batch_size",
                      "keep_checkpoints", "eval_batch_size"):
            positive_int(name, field, getattr(self, field))
        for field in ("train_subset", "test_subset", "stop_after"):
            if getattr(self, field) is not None:
                positive_int(name, field, getattr(self, field))
        positive_int(name, "checkpoint_every", self.checkpoint_every, minimum=0)
        positive_int(name, "seed", self.seed, minimum=0)
        in_interval(name, "rho", self.rho, 0.0, 1.0)
        in_interval(name, "tol", self.tol, 0.0, 1.0)
        if self.backward_tol is not None:
            in_interval(name, "backward_tol", self.backward_tol, 0.0, 1.0)
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

    def model_fields(self) -> dict[str, Any]:
        """The options that fix the parameter layout (compared when resuming)."""
        return {k: getattr(self, k) for k in MODEL_FIELDS}

    @property
    def out_path(self) -> pathlib.Path:
        return pathlib.Path(self.out_dir)


MODEL_FIELDS = ("dataset", "family", "kind", "width", "activation")


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


def load_file(path: str | os.PathLike) -> dict[str, Any]:
    """The options in a JSON (``.json``) or TOML (``.toml``) file, as a mapping (not validated:
    :meth:`TrainConfig.from_dict` does that)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise ConfigError(f"config file {path}: reading TOML needs Python >= 3.11; use a "
                                  ".json file") from None
            options = tomllib.loads(text)
        elif path.suffix == ".json":
            options = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: use a .json or .toml file")
    except (ValueError, json.JSONDecodeError) as err:  # tomllib.TOMLDecodeError is a ValueError
        if isinstance(err, ConfigError):
            raise
        kind = path.suffix[1:].upper()
        raise ConfigError(f"config file {path} is not valid {kind}: {err}") from None
    if not isinstance(options, Mapping):
        raise ConfigError(
            f"config file {path} must hold a table of options, got {type(options).__name__}")
    return dict(options)
