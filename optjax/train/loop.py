"""The training run over a prepared set-up (:mod:`optjax.train.run`): jit-compiled, data-parallel
steps, metrics, checkpoints, plots.

Exact resumption: the data order of epoch ``e`` is the permutation drawn from ``(seed, e)``,
the augmentation of step ``s`` is drawn from ``(seed, s)``, the initialisation depends only on
``seed``, and the checkpoint holds the whole :class:`TrainState` (step, parameters, optimiser
state, power-iteration vectors). So training ``N`` steps equals training ``k``, stopping
(``stop_after`` or Ctrl-C), and resuming to ``N``, parameter for parameter, unless the resumed
run changes a computation option (:func:`optjax.train.config.resume_changes`: allowed, reported
and logged, and from then on the run differs from an uninterrupted one).

Every run has an identity (:mod:`optjax.train.identity`): checkpoints and metrics of another run
found in ``out_dir`` are refused before anything is loaded, pruned or rewritten.

With several processes (``jax.distributed``), each feeds its rows of every global batch; the
first process alone writes the metrics, ``config.json``, ``run.json``, plots and reports, and
orbax writes each checkpoint once.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import pathlib
import shutil
import signal
import threading
import time
from typing import Any, Literal, cast

import jax
import numpy as np
from rich.console import Console

from optjax.config import ConfigError
from optjax.train import sharding
from optjax.train.checkpoint import CheckpointError, Checkpoints
from optjax.train.config import (OUTPUT_FIELDS, TrainConfig, fixed_on_resume, resume_changes,
                                 resumable_fields)
from optjax.train.evaluate import EvalReport, evaluate_split, summarize
from optjax.train.identity import is_main_process, new_run_id, read_run_id, write_run_id
from optjax.train.metrics import MetricsLog, check_run, read_metrics
from optjax.train.plots import save_plots
from optjax.train.report import Reporter, summary_table
# Run and prepare live in optjax.train.run; they stay importable from here (benchmarks do).
from optjax.train.run import Run, prepare
from optjax.train.step import TrainState

__all__ = ["train", "TrainResult", "TrainingDiverged", "Run", "prepare", "epoch_order"]


class _StopOnInterrupt:
    """Ctrl-C (SIGINT) during training asks for a stop at the next step boundary, so that it
    never lands inside a checkpoint write or a library call that could swallow the
    KeyboardInterrupt; a second Ctrl-C interrupts at once. Installed only in the main thread
    (where Python runs signal handlers); the previous handler is restored on exit."""

    def __init__(self) -> None:
        self.requested = False
        self._installed = False
        self._previous: Any = None  # the handler to restore

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        if self._installed:
            previous = self._previous
            signal.signal(signal.SIGINT,
                          signal.default_int_handler if previous is None else previous)
        return False


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the state before that step was checkpointed."""


_STEP_METRICS = ("loss", "accuracy", "steps", "steps_max", "residual", "converged",
                 "backward_steps", "backward_steps_max", "backward_converged")
_MAXIMA = ("steps_max", "residual", "backward_steps_max")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a run leaves: final ``state``, its ``records`` (metrics), the test ``report`` (None
    when the run stopped early), ``paths`` of what it wrote, how it ended (``"finished"``,
    ``"stopped"`` at ``stop_after``, or ``"interrupted"``), its ``run_id`` and the computation
    options it ``changed`` when resuming (``"name old -> new"``)."""

    config: TrainConfig
    state: TrainState
    records: list[dict[str, Any]]
    report: EvalReport | None
    paths: dict[str, Any]
    ending: str
    run: "Run" = dataclasses.field(repr=False)
    run_id: str = ""
    changed: tuple[str, ...] = ()


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The data order of an epoch: a function of ``(seed, epoch)`` only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _resume_hint() -> str:
    """What ``--resume`` accepts, in words (for the messages that suggest resuming)."""
    flags = lambda names: " ".join("--" + k.replace("_", "-") for k in names)  # noqa: E731
    computation = [k for k in resumable_fields() if k not in OUTPUT_FIELDS]
    return (f"--resume accepts new values of {flags(computation)} (and of the output options "
            f"{flags(OUTPUT_FIELDS)}), not of {flags(fixed_on_resume())}")


def _resumed_identity(out: pathlib.Path, checkpoints: Checkpoints) -> str:
    """The id of the run to resume: the one in run.json, else its latest checkpoint's;
    checkpoints and metrics of another run are refused."""
    latest = checkpoints.latest_step()
    if latest is None:
        raise CheckpointError(
            f"no checkpoint in {checkpoints.directory}: train without --resume first, or point "
            "--out-dir at the run to continue")
    run_id = read_run_id(out)
    if run_id is None:  # a run directory moved without its run.json: adopt its checkpoints'
        run_id = cast(str, checkpoints.read_meta(latest).get("run_id"))  # saved by train()
    checkpoints.check_run(run_id)
    check_run(out / "metrics.jsonl", run_id)
    return run_id


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          reporter: Reporter | None = None) -> TrainResult:
    """Train as ``config`` says; see the module docstring for resumption.

    ``resume`` continues from the latest checkpoint in ``config.out_dir`` (``config`` may change
    the options that :func:`~optjax.train.config.resume_changes` allows); without it an
    ``out_dir`` that already holds checkpoints is refused unless ``overwrite`` (which deletes
    them and the metrics)."""
    out = config.out_path
    ckpt_dir = out / "checkpoints"
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other (--resume continues "
                          "the run in --out-dir, --overwrite deletes it); choose one")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out-dir {out} is a file; pass a directory (it is created if "
                          "missing)")
    if resume and not (ckpt_dir.is_dir() and any(ckpt_dir.iterdir())):
        raise CheckpointError(
            f"no checkpoint in {ckpt_dir}: train without --resume first, or point --out-dir at "
            "the run to continue")
    if not resume and ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"{out} already holds checkpoints of a run: pass --resume to continue it, "
                "--overwrite to start again there, or another --out-dir")
        if is_main_process():
            shutil.rmtree(ckpt_dir)
        _barrier("optjax overwrite")
    main = is_main_process()
    changed: list[str] = []
    if resume:  # everything about the checkpoints is checked before data and model are loaded
        checkpoints = Checkpoints(ckpt_dir, config, keep=config.keep_checkpoints)
        run_id = checkpoints.run_id = _resumed_identity(out, checkpoints)
        latest = cast(int, checkpoints.latest_step())  # not None: _resumed_identity checked
        saved = checkpoints.read_meta(latest).get("config", {})
        changed = resume_changes(saved, config)
    else:
        run_id = new_run_id()
    run = prepare(config)
    if not resume:
        checkpoints = Checkpoints(ckpt_dir, config, keep=config.keep_checkpoints, run_id=run_id)
    if reporter is None:
        # Processes other than the first print nothing.
        reporter = Reporter(progress=config.progress) if main else \
            Reporter(progress=False, console=Console(file=io.StringIO()))
    if main:
        out.mkdir(parents=True, exist_ok=True)
    write_run_id(out, run_id)
    state = run.state
    if resume:
        state, _ = checkpoints.restore(state, sharding=sharding.replicated(run.mesh))
    start = int(sharding.host_value(state.step))
    spe, bs = run.steps_per_epoch, config.batch_size
    total = config.epochs * spe
    if start > total:
        raise ConfigError(f"the run already took {start} steps, more than --epochs "
                          f"{config.epochs} x {spe} steps; raise --epochs to continue it")
    if main:
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1) + "\n")
    log = MetricsLog(out / "metrics.jsonl", keep_until_step=start, fresh=not resume,
                     run_id=run_id, enabled=main)
    if changed:
        log.write("resume", step=start, changed=changed)
    end = min(total, config.stop_after) if config.stop_after else total
    data = run.data
    reporter.print(
        f"optjax train: {config.family} {config.kind} (width {config.width}, {run.num_params:,} "
        f"parameters) on {config.dataset} ({data.num_train} train / {data.num_test} test, "
        f"{data.input_shape}); {jax.device_count()} {jax.devices()[0].platform} device(s)"
        + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else "")
        + f"; {config.epochs} epochs x {spe} steps of {bs}"
        + (f"; resuming at step {start}" if resume else ""))
    if changed:
        reporter.print(f"changed since the checkpoint: {'; '.join(changed)}. From step {start} "
                       "on, the run is no longer identical to an uninterrupted one")

    # Per-epoch accumulators, refilled from the log when resuming mid-epoch.
    sums: dict[str, float] = {}
    count = 0
    if start % spe:
        for r in read_metrics(log.path, "step"):
            if r["epoch"] == start // spe:
                count += 1
                for k in _STEP_METRICS:
                    _accumulate(sums, k, r.get(k, math.nan))  # older logs lack some
    ending = "finished"
    rows = sharding.process_rows(bs)
    with reporter, _StopOnInterrupt() as interrupt:
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
                    raise TrainingDiverged(_divergence(metrics, s + 1, saved, out))
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
                if interrupt.requested:
                    ending = "interrupted"
                    break
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
    records = read_metrics(log.path) if log.path.exists() else []
    return TrainResult(config, state, records, report, paths, ending, run, run_id, tuple(changed))


def _divergence(metrics: dict[str, float], step: int, saved: pathlib.Path,
                out: pathlib.Path) -> str:
    if math.isnan(metrics["steps"]):
        solves = "the model has no equilibrium layer"
    else:
        solves = (f"forward solves in that batch: {100 * metrics['converged']:.1f}% converged, "
                  f"largest residual {metrics['residual']:.3g}, mean steps "
                  f"{metrics['steps']:.1f}")
    return (f"the loss became {metrics['loss']} at step {step} ({solves}). The state before "
            f"that step is saved in {saved}. Lower --learning-rate or --grad-clip, raise "
            "--max-steps, or change --solver (for Anderson, a larger --anderson-ridge), then "
            f"continue with: optjax train --resume --out-dir {out} --learning-rate ... "
            f"({_resume_hint()}); or start afresh with --overwrite")


def _accumulate(sums: dict[str, float], key: str, value: float) -> None:
    if key in _MAXIMA:
        current = sums.get(key, -math.inf)
        sums[key] = value if (math.isnan(value) or value > current) else current  # NaN sticks
    else:
        sums[key] = sums.get(key, 0.0) + value


def _end_epoch(run: Run, state: TrainState, epoch: int, step: int, sums: dict[str, float],
               count: int, seconds: float) -> dict[str, Any]:
    record = dict(epoch=epoch, step=step, time=seconds)
    for k in _STEP_METRICS:
        record[k] = sums[k] if k in _MAXIMA else sums[k] / count
    test = summarize(evaluate_split(run.eval_step, state, run.data.x_test, run.data.y_test,
                                    run.config.eval_batch_size, run.mesh), step=step,
                     epoch=epoch)
    record.update(test_loss=test.loss, test_accuracy=test.accuracy, test_steps=test.steps_mean,
                  test_converged=test.converged)
    return record


def _finish(run: Run, state: TrainState, log: MetricsLog, reporter: Reporter,
            paths: dict[str, Any]) -> tuple[EvalReport, dict[str, Any]]:
    config = run.config
    out = config.out_path
    step = int(sharding.host_value(state.step))
    report = summarize(evaluate_split(run.eval_step, state, run.data.x_test, run.data.y_test,
                                      config.eval_batch_size, run.mesh),
                       step=step, epoch=(step - 1) // run.steps_per_epoch)
    log.write("eval", split="test", **report.to_dict())
    main = is_main_process()
    if main:
        paths["eval"] = report.save(out / "eval.json")
    records = read_metrics(log.path) if main else []
    reporter.print(summary_table([r for r in records if r["event"] == "epoch"]))
    for line in report.lines():
        reporter.print("test: " + line)
    if config.plots and main:
        paths["plots"] = save_plots(records, report.per_sample["suboptimality_bound"], out)
    reporter.print(f"metrics: {paths['metrics']}")
    reporter.print(f"checkpoint: {paths['checkpoint']}")
    for p in paths.get("plots", []):
        reporter.print(f"plot: {p}")
    return report, paths
