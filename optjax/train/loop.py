"""The training run: data, model, jit-compiled data-parallel steps, metrics, checkpoints, plots.

Exact resumption: the data order of epoch ``e`` is the permutation drawn from ``(seed, e)``,
the initialisation depends only on ``seed``, and the checkpoint holds the whole
:class:`TrainState` (step, parameters, optimiser state, power-iteration vectors). So training
``N`` steps equals training ``k``, stopping (``stop_after`` or Ctrl-C), and resuming to ``N``,
parameter for parameter.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from typing import Any

import jax
import numpy as np

from optjax import data as _data
from optjax.config import ConfigError
from optjax.nn.baselines import param_count
from optjax.train import sharding
from optjax.train.checkpoint import Checkpoints
from optjax.train.config import TrainConfig
from optjax.train.evaluate import EvalReport, evaluate_split, summarize
from optjax.train.metrics import MetricsLog, read_metrics
from optjax.train.model import build_model
from optjax.train.report import Reporter, summary_table
from optjax.train.step import (TrainState, init_state, make_eval_step, make_optimizer,
                               make_train_step, split_model)

__all__ = ["train", "TrainResult", "TrainingDiverged", "Run", "prepare", "RESUMABLE_FIELDS"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the state before that step was checkpointed."""


# Options that may differ when resuming: they do not change what is computed.
RESUMABLE_FIELDS = ("data_dir", "out_dir", "stop_after", "checkpoint_every", "keep_checkpoints",
                    "eval_batch_size", "progress", "plots")
_STEP_METRICS = ("loss", "accuracy", "steps", "steps_max", "residual", "converged")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a run leaves: final ``state``, its ``records`` (metrics), the test ``report`` (None
    when the run stopped early), ``paths`` of what it wrote, and how it ended
    (``"finished"``, ``"stopped"`` at ``stop_after``, or ``"interrupted"``)."""

    config: TrainConfig
    state: TrainState
    records: list[dict[str, Any]]
    report: EvalReport | None
    paths: dict[str, Any]
    ending: str
    run: "Run" = dataclasses.field(repr=False)


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

    def model(self, state: TrainState | None = None, *, training: bool = False):
        """The NNX model holding ``state``'s weights (default: the initial state)."""
        state = self.state if state is None else state
        return self.parts.merge(state.params, state.rest, training=training)


def prepare(config: TrainConfig) -> Run:
    """Load the data, build the model and optimiser, compile nothing yet."""
    data = _data.load(config.dataset, config.data_dir)
    if config.train_subset or config.test_subset:
        data = data.subset(config.train_subset, config.test_subset)
    data = data.standardized()
    mesh = sharding.data_mesh()
    sharding.check_batch_size(config.batch_size, mesh)
    steps_per_epoch = data.num_train // config.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {data.num_train} "
                          "training samples; lower it")
    model = build_model(config, data.input_shape, data.num_classes)
    num_params = param_count(model)
    parts, params, rest = split_model(model)
    tx, schedule = make_optimizer(config, steps_per_epoch)
    state = sharding.replicate(mesh, init_state(params, rest, tx))
    return Run(config, data, parts, state, tx, schedule, mesh, steps_per_epoch, num_params,
               make_train_step(parts, tx, schedule, mesh), make_eval_step(parts, mesh))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The data order of an epoch: a function of ``(seed, epoch)`` only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _check_resume(config: TrainConfig, meta: dict[str, Any]) -> None:
    saved = meta.get("config", {})
    diff = [f"{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in config.to_dict().items()
            if k not in RESUMABLE_FIELDS and saved.get(k) != v]
    if diff:
        raise ConfigError(
            "--resume continues a run exactly, but these options differ from its checkpoint: "
            + "; ".join(diff) + ". Drop them (the run's own values are used), or start a new run "
            "in another --out-dir")


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          reporter: Reporter | None = None) -> TrainResult:
    """Train as ``config`` says; see the module docstring for resumption.

    ``resume`` continues from the latest checkpoint in ``config.out_dir``; without it an
    ``out_dir`` that already holds checkpoints is refused unless ``overwrite`` (which deletes
    them and the metrics)."""
    out = config.out_path
    ckpt_dir = out / "checkpoints"
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; choose one")
    if not resume and ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"{out} already holds checkpoints of a run: pass --resume to continue it, "
                "--overwrite to start again there, or another --out-dir")
        shutil.rmtree(ckpt_dir)
    run = prepare(config)
    reporter = reporter or Reporter(progress=config.progress)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = Checkpoints(ckpt_dir, config, keep=config.keep_checkpoints)
    state = run.state
    if resume:
        state, meta = checkpoints.restore(state, sharding=sharding.replicated(run.mesh))
        _check_resume(config, meta)
    start = int(sharding.host_value(state.step))
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1) + "\n")
    log = MetricsLog(out / "metrics.jsonl", keep_until_step=start, fresh=not resume)
    spe, bs = run.steps_per_epoch, config.batch_size
    total = config.epochs * spe
    end = min(total, config.stop_after) if config.stop_after else total
    data = run.data
    reporter.print(
        f"optjax train: {config.family} {config.kind} (width {config.width}, {run.num_params:,} "
        f"parameters) on {config.dataset} ({data.num_train} train / {data.num_test} test, "
        f"{data.input_shape}); {jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"{config.epochs} epochs x {spe} steps of {bs}"
        + (f"; resuming at step {start}" if resume else ""))

    # Per-epoch accumulators, refilled from the log when resuming mid-epoch.
    sums: dict[str, float] = {}
    count = 0
    if start % spe:
        for r in read_metrics(log.path, "step"):
            if r["epoch"] == start // spe:
                count += 1
                for k in _STEP_METRICS:
                    _accumulate(sums, k, r[k])
    ending = "finished"
    rows = sharding.process_rows(bs)
    with reporter:
        try:
            for s in range(start, end):
                epoch, b = divmod(s, spe)
                if b == 0 or s == start:
                    epoch_start = time.perf_counter()  # epoch time: training steps only
                    order = epoch_order(config.seed, epoch, data.num_train)
                    reporter.start_epoch(epoch, config.epochs, spe, done=b)
                idx = order[b * bs:(b + 1) * bs][rows]
                x, y = sharding.global_batch(run.mesh, data.x_train[idx], data.y_train[idx])
                before = state
                state, metrics = run.train_step(state, x, y)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                log.write("step", step=s + 1, epoch=epoch, **metrics)
                if not math.isfinite(metrics["loss"]):
                    saved = checkpoints.save(before, epoch=epoch)
                    raise TrainingDiverged(
                        f"the loss became {metrics['loss']} at step {s + 1} (forward solves in "
                        f"that batch: {100 * metrics['converged']:.1f}% converged, largest "
                        f"residual {metrics['residual']:.3g}, mean steps {metrics['steps']:.1f}). "
                        f"The state before that step is saved in {saved}. Lower the learning "
                        "rate or --grad-clip, raise --max-steps, or change the solver (for "
                        "Anderson, a larger --anderson-ridge); then --resume or start afresh")
                reporter.step(metrics)
                count += 1
                for k in _STEP_METRICS:
                    _accumulate(sums, k, metrics[k])
                if b == spe - 1:
                    record = _end_epoch(run, state, epoch, s + 1, sums, count,
                                        time.perf_counter() - epoch_start)
                    log.write("epoch", **record)
                    reporter.epoch(record, config.epochs)
                    sums, count = {}, 0
                    if config.checkpoint_every == 0:
                        checkpoints.save(state, epoch=epoch)
                if config.checkpoint_every and (s + 1) % config.checkpoint_every == 0:
                    checkpoints.save(state, epoch=epoch)
        except KeyboardInterrupt:
            ending = "interrupted"
    step = int(sharding.host_value(state.step))
    paths: dict[str, Any] = dict(metrics=log.path, config=out / "config.json")
    if step > 0:
        paths["checkpoint"] = checkpoints.save(state, epoch=(step - 1) // spe)
    if ending == "finished" and step < total:
        ending = "stopped"
    report = None
    if ending != "finished":
        reporter.print(f"{ending} at step {step} of {total}; checkpoint {paths.get('checkpoint')}"
                       f"\ncontinue with: optjax train --resume --out-dir {out}")
    else:
        report, paths = _finish(run, state, log, reporter, paths)
    return TrainResult(config, state, read_metrics(log.path), report, paths, ending, run)


def _accumulate(sums: dict[str, float], key: str, value: float) -> None:
    if key in ("steps_max", "residual"):
        current = sums.get(key, -math.inf)
        sums[key] = value if (math.isnan(value) or value > current) else current  # NaN sticks
    else:
        sums[key] = sums.get(key, 0.0) + value


def _end_epoch(run: Run, state, epoch: int, step: int, sums, count: int, seconds: float):
    record = dict(epoch=epoch, step=step, time=seconds)
    for k in _STEP_METRICS:
        record[k] = sums[k] if k in ("steps_max", "residual") else sums[k] / count
    test = summarize(evaluate_split(run.eval_step, state, run.data.x_test, run.data.y_test,
                                    run.config.eval_batch_size, run.mesh))
    record.update(test_loss=test.loss, test_accuracy=test.accuracy, test_steps=test.steps_mean,
                  test_converged=test.converged)
    return record


def _finish(run: Run, state, log: MetricsLog, reporter: Reporter, paths):
    config = run.config
    out = config.out_path
    report = summarize(evaluate_split(run.eval_step, state, run.data.x_test, run.data.y_test,
                                      config.eval_batch_size, run.mesh))
    log.write("eval", step=int(sharding.host_value(state.step)), split="test", **report.to_dict())
    paths["eval"] = report.save(out / "eval.json")
    records = read_metrics(log.path)
    reporter.print(summary_table([r for r in records if r["event"] == "epoch"]))
    for line in report.lines():
        reporter.print("test: " + line)
    if config.plots:
        from optjax.train.plots import save_plots
        paths["plots"] = save_plots(records, report.per_sample["suboptimality_bound"], out)
    reporter.print(f"metrics: {paths['metrics']}")
    reporter.print(f"checkpoint: {paths['checkpoint']}")
    for p in paths.get("plots", []):
        reporter.print(f"plot: {p}")
    return report, paths
