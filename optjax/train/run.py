"""The set-up of a training run: from a :class:`TrainConfig`, the data (loaded, subset,
standardised), the model split into its parts, the optimiser and its schedule, the initial
:class:`TrainState` replicated over the device mesh, and the (not yet compiled) train and eval
steps. Shared by :mod:`optjax.train.loop` (training) and :mod:`optjax.train.evaluate`
(evaluating a saved run)."""

from __future__ import annotations

import dataclasses
from typing import Any

from optjax import data as _data
from optjax.config import ConfigError
from optjax.nn.base import param_count
from optjax.nn.classifiers import ImplicitClassifier
from optjax.train import sharding
from optjax.train.augment import Augmentation
from optjax.train.config import TrainConfig
from optjax.train.model import build_model
from optjax.train.step import (TrainState, init_state, make_eval_step, make_optimizer,
                               make_train_step, split_model)

__all__ = ["Run", "prepare"]


@dataclasses.dataclass(frozen=True)
class Run:
    """A prepared run: the data, the split model, the compiled steps, the mesh."""

    config: TrainConfig
    data: Any
    parts: Any
    state: TrainState
    tx: Any
    schedule: Any
    mesh: Any
    steps_per_epoch: int
    num_params: int
    train_step: Any
    eval_step: Any

    def model(self, state: TrainState | None = None, *,
              training: bool = False) -> ImplicitClassifier:
        """The NNX model holding ``state``'s weights (default: the initial state)."""
        state = self.state if state is None else state
        return self.parts.merge(state.params, state.rest, training=training)


def prepare(config: TrainConfig) -> Run:
    """Load the data, build the model and optimiser, compile nothing yet."""
    mesh = sharding.data_mesh()
    sharding.check_batch_size(config.batch_size, mesh)
    data = _data.load(config.dataset, config.data_dir)
    if config.train_subset or config.test_subset:
        data = data.subset(config.train_subset, config.test_subset)
    data = data.standardized()
    steps_per_epoch = data.num_train // config.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {data.num_train} "
                          f"training samples of {config.dataset}; lower --batch-size (or raise "
                          "--train-subset)")
    height, width, _ = data.input_shape
    if config.augment_crop >= min(height, width):
        raise ConfigError(f"augment_crop {config.augment_crop} must be smaller than the "
                          f"{height} x {width} images of {config.dataset}; use a few pixels")
    model = build_model(config, data.input_shape, data.num_classes)
    num_params = param_count(model)
    parts, params, rest = split_model(model)
    tx, schedule = make_optimizer(config, steps_per_epoch)
    state = sharding.replicate(mesh, init_state(params, rest, tx))
    augment = Augmentation(config.seed, config.augment_crop, config.augment_flip)
    return Run(config, data, parts, state, tx, schedule, mesh, steps_per_epoch, num_params,
               make_train_step(parts, tx, schedule, mesh, augment, config.lipschitz_margin,
                               config.jacobian_penalty), make_eval_step(parts, mesh))
