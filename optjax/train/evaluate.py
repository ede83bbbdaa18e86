"""Evaluation over a whole split: accuracy, loss, the forward solves' statistics (steps,
residual, share converged; NaN for a model without an equilibrium layer) and for OptEq models the
certificate statistics (largest and median suboptimality bound)."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from optjax.config import ConfigError
from optjax.train import sharding
from optjax.train.checkpoint import CheckpointError, Checkpoints
from optjax.train.config import TrainConfig, saved_options
from optjax.train.identity import read_run_id
from optjax.train.metrics import json_safe
from optjax.train.run import Run, prepare
from optjax.train.step import TrainState

__all__ = ["EvalReport", "evaluate_split", "summarize"]


@dataclasses.dataclass(frozen=True)
class EvalReport:
    """Summary of one evaluation (``per_sample`` holds the arrays it was computed from).

    Attributes:
      accuracy, loss: over the split.
      steps_mean, steps_max: forward solver steps.
      residual_max: largest final residual.
      converged: share of samples whose solve reached ``tol``.
      bound_max, bound_median: largest and median certified bound on ``F(z) - F*`` (NaN for
        families without a certificate).
      certified: share of samples with a finite certificate.
      step, epoch: the training step of the evaluated state and the epoch it belongs to
        (counted from 0, as in the metrics); None when unknown.

    The forward statistics are NaN for a model without an equilibrium layer (``explicit``).
    """

    accuracy: float
    loss: float
    num_samples: int
    steps_mean: float
    steps_max: float
    residual_max: float
    converged: float
    bound_max: float
    bound_median: float
    certified: float
    per_sample: dict[str, np.ndarray] = dataclasses.field(repr=False, compare=False)
    step: int | None = None
    epoch: int | None = None

    @property
    def has_equilibrium(self) -> bool:
        """Whether the model solved anything (an explicit model has no forward statistics)."""
        return not math.isnan(self.steps_mean)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("per_sample")
        return out

    def lines(self) -> list[str]:
        out = []
        if self.step is not None:
            out.append(f"checkpoint of step {self.step}"
                       + (f" (epoch {self.epoch + 1})" if self.epoch is not None else ""))
        out.append(f"accuracy {100 * self.accuracy:.2f}% ({self.num_samples} samples), loss "
                   f"{self.loss:.4f}")
        if not self.has_equilibrium:
            out.append("forward: no equilibrium layer (explicit model): no solver statistics "
                       "and no certificate")
            return out
        out.append(f"forward steps mean {self.steps_mean:.1f}, max {self.steps_max:.0f}; "
                   f"largest residual {self.residual_max:.2e}; converged "
                   f"{100 * self.converged:.1f}%")
        if self.certified > 0:
            out.append(f"certificate F(z) - F* <= r^2/(2 mu): largest {self.bound_max:.2e}, "
                       f"median {self.bound_median:.2e} ({100 * self.certified:.1f}% certified)")
        else:
            out.append("certificate: none (only OptEq layers have one)")
        return out

    def save(self, path: str | pathlib.Path) -> pathlib.Path:
        path = pathlib.Path(path)
        path.write_text(json.dumps(json_safe(self.to_dict()), indent=1) + "\n")
        return path


def evaluate_split(eval_step: Callable, state: TrainState, x: np.ndarray, y: np.ndarray,
                   batch_size: int, mesh: Mesh) -> dict[str, np.ndarray]:
    """Per-sample outputs of ``eval_step`` over all of ``(x, y)``: the last batch is padded
    (and the padding dropped), batches are sharded over ``mesh``."""
    devices = mesh.devices.size
    batch = -(-batch_size // devices) * devices  # round up to a multiple of the devices
    n = len(y)
    if n == 0 or batch_size < 1:
        raise ValueError(f"nothing to evaluate: {n} samples in batches of {batch_size}; pass at "
                         "least one sample and a batch size >= 1")
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch):
        idx = np.arange(start, start + batch)
        idx = np.minimum(idx, n - 1)  # pad with copies of the last sample
        rows = sharding.process_rows(batch)
        xb, yb = sharding.global_batch(mesh, x[idx][rows], y[idx][rows])
        out = eval_step(state, xb, yb)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            out = multihost_utils.process_allgather(out, tiled=True)
        keep = min(batch, n - start)
        for k, v in out.items():
            chunks.setdefault(k, []).append(np.asarray(v)[:keep])
    return {k: np.concatenate(v) for k, v in chunks.items()}


def summarize(per_sample: dict[str, np.ndarray], *, step: int | None = None,
              epoch: int | None = None) -> EvalReport:
    """The :class:`EvalReport` of the per-sample outputs of :func:`evaluate_split`."""
    bounds = per_sample["suboptimality_bound"]
    if bounds.size == 0:
        raise ValueError("nothing to summarise: the evaluation covered 0 samples")
    finite = bounds[np.isfinite(bounds)]
    return EvalReport(
        accuracy=float(per_sample["correct"].mean()),
        loss=float(per_sample["loss"].mean()),
        num_samples=int(per_sample["correct"].size),
        steps_mean=float(per_sample["steps"].mean()),
        steps_max=float(per_sample["steps"].max()),
        residual_max=float(per_sample["residual"].max()),
        converged=float(per_sample["converged"].mean()),
        bound_max=float(finite.max()) if finite.size else math.nan,
        bound_median=float(np.median(finite)) if finite.size else math.nan,
        certified=float(finite.size / bounds.size),
        per_sample=per_sample,
        step=step,
        epoch=epoch,
    )


def restore(out_dir: str | pathlib.Path, *, step: int | None = None,
            data_dir: str | None = None,
            batch_size: int | None = None) -> tuple[Run, TrainState, dict[str, Any]]:
    """``(run, state, meta)``: the prepared run of the checkpoint in ``out_dir`` (the latest, or
    ``step``), with the configuration it was trained with, and its restored state."""
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"the evaluation batch size must be >= 1, got {batch_size}")
    out = pathlib.Path(out_dir)
    ckpt_dir = out / "checkpoints"
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{out} holds no checkpoints ({ckpt_dir} is missing): train there "
                              "first with optjax train --out-dir " + str(out))
    # The run's configuration comes from the checkpoint itself.
    probe = Checkpoints(ckpt_dir, TrainConfig(out_dir=str(out)))
    chosen = step if step is not None else probe.latest_step()
    if chosen is None:
        raise CheckpointError(f"no checkpoint in {ckpt_dir}: train there first")
    meta = probe.read_meta(chosen)  # says so if that step does not exist
    run_id = read_run_id(out)
    if run_id is not None and meta.get("run_id") != run_id:
        probe.check_run(run_id)
    try:
        # a missing record (None) is refused by from_dict with a ConfigError, caught below
        config = TrainConfig.from_dict(saved_options(meta.get("config")))
    except (TypeError, ConfigError) as err:
        raise CheckpointError(f"checkpoint {probe.path(chosen)} has an unusable configuration "
                              f"record ({err})") from None
    changes = dict(out_dir=str(out), progress=False)
    if data_dir is not None:
        changes["data_dir"] = data_dir
    if batch_size is not None:
        changes["eval_batch_size"] = batch_size
    config = config.replace(**changes)
    run = prepare(config)
    state, meta = Checkpoints(ckpt_dir, config, run_id=meta.get("run_id")).restore(
        run.state, chosen, sharding=sharding.replicated(run.mesh))
    return run, state, meta


def _split_data(run: Run, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in ("test", "train"):
        raise ConfigError(f"split must be 'test' or 'train', got {split!r}")
    return (run.data.x_test, run.data.y_test) if split == "test" else \
        (run.data.x_train, run.data.y_train)


def evaluate(out_dir: str | pathlib.Path, *, step: int | None = None, split: str = "test",
             data_dir: str | None = None, batch_size: int | None = None) -> EvalReport:
    """Evaluate the checkpoint of a run in ``out_dir`` (the latest, or ``step``) on ``split``
    (``"test"`` or ``"train"``), with the configuration the run was trained with. The report
    says which step (and epoch) it evaluated."""
    if split not in ("test", "train"):
        raise ConfigError(f"split must be 'test' or 'train', got {split!r}")
    run, state, meta = restore(out_dir, step=step, data_dir=data_dir, batch_size=batch_size)
    x, y = _split_data(run, split)
    return summarize(evaluate_split(run.eval_step, state, x, y, run.config.eval_batch_size,
                                    run.mesh),
                     step=int(meta["step"]), epoch=int(meta["epoch"]))


def evaluate_robustness(out_dir: str | pathlib.Path, epsilons: Iterable[float], *,
                        step: int | None = None, split: str = "test",
                        samples: int | None = 1000, pgd_steps: int = 100,
                        data_dir: str | None = None,
                        batch_size: int | None = None) -> dict[str, Any]:
    """Certified and empirical (L2 PGD) robust accuracy of a run's checkpoint at each of
    ``epsilons`` (:func:`optjax.nn.robustness.robust_accuracy`), on the first ``samples``
    images of ``split`` (None: all). Returns its dict with ``step``, ``samples`` and
    ``family`` added."""
    from optjax.nn.robustness import robust_accuracy

    epsilons = [float(e) for e in epsilons]
    if not epsilons or any(not e >= 0 for e in epsilons):
        raise ConfigError(f"--robustness takes radii >= 0, e.g. 0.1,0.25,0.5; got {epsilons}")
    if samples is not None and samples < 1:
        raise ConfigError(f"--robustness-samples must be >= 1, got {samples}")
    run, state, meta = restore(out_dir, step=step, data_dir=data_dir, batch_size=batch_size)
    x, y = _split_data(run, split)
    if samples is not None:
        x, y = x[:samples], y[:samples]
    out = robust_accuracy(run.model(state), jnp.asarray(x), jnp.asarray(y),
                          epsilons, pgd_steps=pgd_steps,
                          batch_size=run.config.eval_batch_size)
    return {**out, "step": int(meta["step"]), "samples": int(len(y)),
            "family": run.config.family, "pgd_steps": pgd_steps}


def robustness_lines(report: dict) -> list[str]:
    """The report of :func:`evaluate_robustness` as lines of text."""
    lip = report["lipschitz"]
    lines = [f"{report['family']} at step {report['step']}, {report['samples']} images: clean "
             f"accuracy {100 * report['clean']:.2f}%; Lipschitz bound "
             + ("none (a DEQ has no bound)" if lip is None else f"{lip:.4g}")
             + ("" if report["radius_median"] is None else
                f", median certified radius {report['radius_median']:.4g}")]
    for eps in report["pgd"]:
        cert = report["certified"][eps]
        lines.append(f"eps {eps:g}: certified {'-' if cert is None else f'{100 * cert:.2f}%'}, "
                     f"PGD ({report['pgd_steps']} steps) {100 * report['pgd'][eps]:.2f}%")
    return lines
