"""Metrics as JSON lines: one object per line with an ``"event"``, appended as training goes, so
a crash loses nothing already written.

* ``"run"`` (first line): ``run_id``, the run's identity (:mod:`optjax.train.identity`);
* ``"resume"``: ``step`` where a run was resumed with ``changed`` computation options (the run
  is no longer identical to an uninterrupted one from there on);
* ``"step"``: ``step`` (steps done), ``epoch``, ``loss``, ``accuracy``, ``learning_rate``,
  ``grad_norm``, forward solver ``steps`` (batch mean) and ``steps_max``, ``residual`` (batch
  max), ``converged`` (share of the batch), and the backward (gradient) solve's
  ``backward_steps`` (batch mean), ``backward_steps_max`` and ``backward_converged``;
* ``"epoch"``: the same averaged over the epoch (``steps_max``, ``residual``,
  ``backward_steps_max``: maxima), ``time``
  (seconds of training steps, without the test evaluation and the checkpoint), ``test_loss``,
  ``test_accuracy``, ``test_steps``, ``test_converged``;
* ``"eval"``: the final :class:`optjax.train.EvalReport` of the test set.

Solver statistics are NaN for a model without an equilibrium layer (``explicit``).

Non-finite numbers are written as the strings ``"nan"``, ``"inf"`` (JSON has none).
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Iterable

__all__ = ["MetricsLog", "read_metrics", "json_safe", "check_run"]


def json_safe(value: Any) -> Any:
    """JSON-safe value: numpy/jax scalars to Python numbers, non-finite floats to strings
    (JSON has no NaN or Infinity)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and getattr(value, "size", 1) == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf"
    return value


def check_run(path: str | pathlib.Path, run_id: str) -> None:
    """Raise :class:`optjax.config.ConfigError` if the metrics file at ``path`` (if any) was
    written by another run than ``run_id`` (a file without a ``"run"`` record passes)."""
    path = pathlib.Path(path)
    if not path.is_file():
        return
    theirs = next((r.get("run_id") for r in read_metrics(path, "run")), run_id)
    if theirs != run_id:
        from optjax.config import ConfigError

        raise ConfigError(
            f"{path} holds the metrics of another run ({theirs}; this run is {run_id}, see "
            "run.json): it was copied here from another run directory. Nothing was changed: "
            "move it away and resume again")


class MetricsLog:
    """Appends records to ``path``. ``keep_until_step`` drops records of later steps already in
    the file (a resumed run rewrites what happened after its checkpoint); a new file (or
    ``fresh``) starts with the ``"run"`` record of ``run_id`` when given, and a file of another
    run is refused (:func:`check_run`) before anything is changed. With ``enabled`` False
    (processes other than the first of a multi-process run) nothing is written."""

    def __init__(self, path: str | pathlib.Path, *, keep_until_step: int | None = None,
                 fresh: bool = False, run_id: str | None = None, enabled: bool = True):
        self.path = pathlib.Path(path)
        self.enabled = enabled
        if run_id is not None and not fresh:
            check_run(self.path, run_id)
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh or not self.path.exists():
            self.path.write_text("")
            if run_id is not None:
                self.write("run", run_id=run_id)
        elif keep_until_step is not None:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= keep_until_step
                    and r.get("event") != "eval"]
            self.path.write_text("".join(json.dumps(json_safe(r)) + "\n" for r in kept))

    def write(self, event: str, **record: Any) -> dict[str, Any]:
        record = {"event": event, **json_safe(record)}
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        return record


def read_metrics(path: str | pathlib.Path, event: str | None = None) -> list[dict[str, Any]]:
    """The records of a metrics file (only those of ``event`` if given); "nan"/"inf" strings
    come back as floats."""
    records = []
    for n, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {n}: not a JSON object ({err})") from None
        record = {k: (float(v) if v in ("nan", "inf", "-inf") else v) for k, v in record.items()}
        if event is None or record.get("event") == event:
            records.append(record)
    return records


def epochs(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == "epoch"]
