"""What the user sees while training: a progress bar per epoch (loss, accuracy, mean forward
steps, largest residual), one line per finished epoch, and a summary table at the end.

Nothing is cut to the console's width: lines are not wrapped when the output is not a terminal
(logs), and a table is printed at its full width whatever the console's (rich would otherwise
squeeze it into 80 columns and cut the numbers)."""

from __future__ import annotations

import math
from typing import Any, Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn,
                           TimeElapsedColumn)
from rich.table import Table

__all__ = ["Reporter", "summary_table", "format_metrics"]


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, fmt)


def format_metrics(m: dict[str, Any]) -> str:
    """``loss 0.123 acc 96.9% fwd 12.3 steps res 8.1e-04`` from a step record (without the
    forward part when there are no solver statistics)."""
    text = f"loss {_num(m.get('loss'), '.4f')} acc {_num(100 * m['accuracy'], '.1f')}%"
    steps = m.get("steps")
    if steps is None or math.isnan(steps):
        return text
    text += f" fwd {_num(m.get('steps'), '.1f')} steps res {_num(m.get('residual'), '.1e')}"
    backward = m.get("backward_steps")
    if backward is None or math.isnan(backward):
        return text
    return text + f" bwd {_num(backward, '.1f')} steps"


class Reporter:
    """Progress bars and epoch lines on ``console`` (stderr by default; bars only when it is a
    terminal and ``progress`` is on, the epoch lines always)."""

    def __init__(self, *, progress: bool = True, console: Console | None = None):
        self.console = Console(stderr=True) if console is None else console
        self._progress = None
        if progress and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("{task.fields[metrics]}"),
                console=self.console, transient=True)
        self._task: TaskID | None = None

    def __enter__(self) -> Reporter:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
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
        self.print(
            f"epoch {record['epoch'] + 1}/{epochs}: train {format_metrics(record)} | test loss "
            f"{_num(record.get('test_loss'), '.4f')} acc "
            f"{_num(100 * record.get('test_accuracy', math.nan), '.2f')}% | "
            f"{record['time']:.1f} s")

    def print(self, *args: Any, **kwargs: Any) -> None:
        console = self.console
        kwargs.setdefault("soft_wrap", not console.is_terminal)
        widest = max((_natural_width(console, a) for a in args if not isinstance(a, str)),
                     default=0)
        if widest <= console.width:
            console.print(*args, highlight=False, **kwargs)
            return
        width = console.width
        console.width = widest  # rich squeezes a table into the console's width otherwise
        try:
            console.print(*args, highlight=False, **kwargs)
        finally:
            console.width = width


def _natural_width(console: Console, renderable: Any) -> int:
    """The width ``renderable`` takes when nothing limits it."""
    return Measurement.get(console, console.options.update_width(10_000), renderable).maximum


def summary_table(epochs: Sequence[dict[str, Any]]) -> Table:
    """One row per epoch: train and test loss/accuracy, forward steps (mean, max), largest
    residual, share converged, backward steps (mean) and share converged, time. Without forward statistics (a model with no equilibrium
    layer) the solver columns are left out and the title says so."""
    solver = any(not math.isnan(r.get("steps", math.nan)) for r in epochs)
    table = Table(title="training summary" if solver or not epochs else
                  "training summary (no equilibrium layer: no solver statistics)")
    columns = ["epoch", "train loss", "train acc", "test loss", "test acc"]
    if solver:
        columns += ["fwd steps", "max steps", "max residual", "converged", "bwd steps",
                    "bwd converged"]
    for name in columns + ["time (s)"]:
        table.add_column(name, justify="right", no_wrap=True)
    for r in epochs:
        row = [str(r["epoch"] + 1), _num(r["loss"], ".4f"), _percent(r["accuracy"], ".1f"),
               _num(r.get("test_loss"), ".4f"), _percent(r.get("test_accuracy"), ".2f")]
        if solver:
            row += [_num(r.get("steps"), ".1f"), _num(r.get("steps_max"), ".0f"),
                    _num(r.get("residual"), ".1e"), _percent(r.get("converged"), ".1f"),
                    _num(r.get("backward_steps"), ".1f"),
                    _percent(r.get("backward_converged"), ".1f")]
        table.add_row(*row, _num(r.get("time"), ".1f"))
    return table


def _percent(value: Any, fmt: str) -> str:
    return "-" if value is None or math.isnan(value) else format(100 * value, fmt) + "%"
