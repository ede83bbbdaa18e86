"""Data parallelism: the same run on 4 (host-platform) devices as on 1, within float32
reduction-order rounding; batch sizes that do not split over the devices are refused."""

import os
import subprocess
import sys

import numpy as np
import pytest

from optjax.train import read_metrics
from optjax.train.sharding import check_batch_size, data_mesh

ARGS = ["--kind", "dense", "--width", "16", "--train-subset", "256", "--test-subset", "64",
        "--batch-size", "32", "--epochs", "1", "--warmup-epochs", "0.25", "--no-progress",
        "--no-plots"]


def _train(out_dir, devices: int):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", "optjax", "train", *ARGS, "--out-dir",
                           str(out_dir)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{devices} cpu device(s)" in done.stderr
    return read_metrics(out_dir / "metrics.jsonl")


@pytest.mark.slow  # end to end, ~10-20 s: CI runs it with the slow checks
def test_four_devices_give_the_losses_of_one(tmp_path):
    """Same data, same initialisation; what differs is the order of the batch reductions and
    the kernels (8-row shards instead of 32-row batches), so float32 rounding: a few units in
    the last place (1e-7 relative in the losses, measured). Rounding can also stop a sample's
    forward solve (tol 1e-3) one step earlier or later, which moves that sample's state by about
    its residual (<= tol) and the batch's mean loss by about tol / 32 (1e-5 relative at a loss of
    2-3). The mean forward steps allow that for at most 3 of the 32 samples (3/32 < 0.1), the
    loss for as many (rtol 1e-4), and a prediction changes only for a sample whose two largest
    logits are that close: at most one per batch. Another batch than the reference's moves the
    loss far more (steps 1 and 2 here, one small update apart: 2e-3 relative)."""
    one = _train(tmp_path / "one", 1)
    four = _train(tmp_path / "four", 4)
    steps = [(a, b) for a, b in zip(one, four) if a["event"] == "step"]
    assert len(steps) == 8
    for a, b in steps:
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4, err_msg=f"step {a['step']}")
        assert abs(b["accuracy"] - a["accuracy"]) <= 1 / 32 + 1e-9, (a, b)
        np.testing.assert_allclose(b["steps"], a["steps"], atol=0.1)
    final_one, final_four = one[-1], four[-1]
    assert final_one["event"] == final_four["event"] == "eval"
    np.testing.assert_allclose(final_four["loss"], final_one["loss"], rtol=1e-4)


def test_a_batch_that_does_not_split_is_refused():
    mesh = data_mesh()

    class FourDevices:
        devices = np.empty(4)

    check_batch_size(64, mesh)
    with pytest.raises(ValueError, match="batch_size 30 is not divisible by the 4 devices"):
        check_batch_size(30, FourDevices())
