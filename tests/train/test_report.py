"""What the user sees: progress bars on terminals, epoch lines always, a summary table."""

import io

from rich.console import Console

from optjax.train.report import Reporter, format_metrics, summary_table

STEP = dict(loss=0.25, accuracy=0.9, steps=12.5, residual=8e-4)
EPOCH = dict(epoch=0, loss=0.3, accuracy=0.85, test_loss=0.4, test_accuracy=0.8, steps=12.0,
             steps_max=15.0, residual=9e-4, converged=1.0, time=1.5)


def _console(terminal: bool):
    return Console(file=io.StringIO(), force_terminal=terminal, width=150)


def test_progress_bar_shows_loss_accuracy_steps_and_residual():
    console = _console(True)
    with Reporter(progress=True, console=console) as reporter:
        reporter.start_epoch(0, 2, total=4)
        reporter.step(STEP)
        console.print(reporter._progress.get_renderable())  # the live bar, as drawn
        reporter.epoch(EPOCH, 2)
    text = console.file.getvalue()
    assert "epoch 1/2" in text and "1/4" in text
    assert format_metrics(STEP) == "loss 0.2500 acc 90.0% fwd 12.5 steps res 8.0e-04"
    assert format_metrics(STEP) in text
    assert "test loss 0.4000 acc 80.00%" in text


def test_without_a_terminal_only_epoch_lines_and_the_table():
    console = _console(False)
    with Reporter(progress=True, console=console) as reporter:
        assert reporter._progress is None
        reporter.start_epoch(0, 1, total=4)
        reporter.step(STEP)
        reporter.epoch(EPOCH, 1)
        reporter.print(summary_table([EPOCH]))
    text = console.file.getvalue()
    assert "epoch 1/1: train loss 0.3000" in text
    for column in ("train loss", "test acc", "fwd steps", "max residual", "converged"):
        assert column in text
    assert "80.00%" in text and "100.0%" in text


def test_the_table_is_not_cut_to_a_narrow_console():
    # A log file or a pipe: rich takes 80 columns, narrower than the table.
    console = Console(file=io.StringIO(), force_terminal=False, width=80)
    wide = dict(EPOCH, loss=0.123456, test_loss=1.234567, residual=1.23e-4, time=123.4)
    Reporter(progress=False, console=console).print(summary_table([wide]))
    text = console.file.getvalue()
    row = next(line for line in text.splitlines() if "0.1235" in line)
    for number in ("1.2346", "85.0%", "80.00%", "12.0", "15", "1.2e-04", "100.0%", "123.4"):
        assert f" {number} " in row, (number, text)
    assert "…" not in text


def test_without_solver_statistics_the_solver_columns_are_left_out():
    nan = float("nan")
    explicit = dict(EPOCH, steps=nan, steps_max=nan, residual=nan, converged=nan)
    console = _console(False)
    console.print(summary_table([explicit]))
    text = console.file.getvalue()
    assert "no equilibrium layer" in text and "train loss" in text
    for column in ("fwd steps", "max residual", "converged"):
        assert column not in text
    assert format_metrics(explicit) == "loss 0.3000 acc 85.0%"
