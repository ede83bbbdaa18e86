"""JSON-lines metrics: non-finite values survive, a resumed run drops what came after its
checkpoint, a damaged line is named."""

import math

import numpy as np
import pytest

from optjax.train.metrics import MetricsLog, read_metrics


def test_round_trip_with_non_finite_values(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    log.write("step", step=1, loss=np.float32(0.5), bound=float("inf"), residual=float("nan"))
    (record,) = read_metrics(tmp_path / "m.jsonl")
    assert record["loss"] == 0.5 and record["bound"] == math.inf and math.isnan(record["residual"])


def test_resuming_keeps_only_the_steps_up_to_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for s in range(1, 6):
        log.write("step", step=s, loss=1.0 / s)
    log.write("eval", step=5, accuracy=0.9)
    MetricsLog(tmp_path / "m.jsonl", keep_until_step=3)
    assert [r["step"] for r in read_metrics(tmp_path / "m.jsonl")] == [1, 2, 3]
    MetricsLog(tmp_path / "m.jsonl", fresh=True)
    assert read_metrics(tmp_path / "m.jsonl") == []


def test_a_damaged_line_is_named(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"event": "step"}\n{"event": \n')
    with pytest.raises(ValueError, match="m.jsonl, line 2: not a JSON object"):
        read_metrics(tmp_path / "m.jsonl")
