"""Training and evaluating classifiers built on optjax layers: the ``optjax train`` and
``optjax eval`` commands as functions.

* :class:`TrainConfig` (:mod:`optjax.train.config`): every option, typed, frozen, unknown keys
  refused;
* :func:`train` (:mod:`optjax.train.loop`): a jit-compiled, data-parallel AdamW run with metrics
  (JSON lines), orbax checkpoints, exact resumption (or resumption with changed optimisation
  and solver options, reported), several processes, and plots;
* :func:`evaluate` (:mod:`optjax.train.evaluate`): accuracy and certificate statistics of a
  saved run;
* :func:`prepare` (:mod:`optjax.train.run`): the set-up both share (data, model, optimiser,
  initial state, steps);
* the pure steps (:mod:`optjax.train.step`), data augmentation on device
  (:mod:`optjax.train.augment`), sharding helpers (:mod:`optjax.train.sharding`), checkpoints
  verified file by file (:mod:`optjax.train.checkpoint`), the run's identity
  (:mod:`optjax.train.identity`).
"""

from optjax.train.checkpoint import CheckpointError, Checkpoints
from optjax.train.config import TrainConfig
from optjax.train.evaluate import EvalReport, evaluate
from optjax.train.loop import TrainResult, train
from optjax.train.metrics import read_metrics
from optjax.train.run import prepare

__all__ = ["CheckpointError", "Checkpoints", "EvalReport", "TrainConfig", "TrainResult",
           "evaluate", "prepare", "read_metrics", "train"]
