"""What the user sees while training: a progress bar per epoch (loss, accuracy, mean forward
steps, largest residual), one line per finished epoch, and a summary table at the end."""

from __future__ import annotations

import math
from typing import Any, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["Reporter", "summary_table", "format_metrics"]


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, fmt)


def format_metrics(m: dict[str, Any]) -> str:
    """``loss 0.123 acc 96.9% fwd 12.3 steps res 8.1e-04`` from a step record."""
    return (f"loss {_num(m.get('loss'), '.4f')} acc {_num(100 * m['accuracy'], '.1f')}% "
            f"fwd {_num(m.get('steps'), '.1f')} steps res {_num(m.get('residual'), '.1e')}")


class Reporter:
    """Progress bars and epoch lines on ``console`` (stderr by default; bars only when it is a
    terminal and ``progress`` is on, the epoch lines always)."""

    def __init__(self, *, progress: bool = True, console: Console | None = None):
        if console is None:
            console = Console(stderr=True)
            if not console.is_terminal:  # logs: wide enough for the summary table
                console = Console(stderr=True, width=140)
        self.console = console
        self._progress = None
        if progress and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("{task.fields[metrics]}"),
                console=self.console, transient=True)
        self._task = None

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int = 0) -> None:
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(f"epoch {epoch + 1}/{epochs}", total=total,
                                             completed=done, metrics="")

    def step(self, metrics: dict[str, Any]) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, metrics=format_metrics(metrics))

    def epoch(self, record: dict[str, Any], epochs: int) -> None:
        self.console.print(
            f"epoch {record['epoch'] + 1}/{epochs}: train {format_metrics(record)} | test loss "
            f"{_num(record.get('test_loss'), '.4f')} acc "
            f"{_num(100 * record.get('test_accuracy', math.nan), '.2f')}% | "
            f"{record['time']:.1f} s", highlight=False)

    def print(self, *args, **kwargs) -> None:
        self.console.print(*args, highlight=False, **kwargs)


def summary_table(epochs: Sequence[dict[str, Any]]) -> Table:
    """One row per epoch: train and test loss/accuracy, forward steps (mean, max), largest
    residual, share converged, time."""
    table = Table(title="training summary")
    for name in ("epoch", "train loss", "train acc", "test loss", "test acc", "fwd steps",
                 "max steps", "max residual", "converged", "time (s)"):
        table.add_column(name, justify="right")
    for r in epochs:
        table.add_row(
            str(r["epoch"] + 1), _num(r["loss"], ".4f"), _num(100 * r["accuracy"], ".1f") + "%",
            _num(r.get("test_loss"), ".4f"),
            _num(100 * r.get("test_accuracy", math.nan), ".2f") + "%",
            _num(r.get("steps"), ".1f"), _num(r.get("steps_max"), ".0f"),
            _num(r.get("residual"), ".1e"), _num(100 * r.get("converged", math.nan), ".1f") + "%",
            _num(r.get("time"), ".1f"))
    return table
