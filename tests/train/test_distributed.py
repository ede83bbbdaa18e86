"""Multi-process training for real: two processes on this machine, one CPU device each,
coordinated by ``jax.distributed`` on a localhost port (CPU collectives: gloo, JAX's default),
train through ``optjax train --distributed`` and give the losses of one process."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from optjax.train import read_metrics


# 4 steps of 32 samples (16 per process), then the test evaluation of 64 samples.
ARGS = ["--kind", "dense", "--width", "16", "--train-subset", "128", "--test-subset", "64",
        "--batch-size", "32", "--epochs", "1", "--warmup-epochs", "0.25", "--eval-batch-size",
        "64", "--no-progress", "--no-plots"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes and a coordinator: ~40 s on 2 cores; CI runs it
def test_two_processes_give_the_losses_of_one(tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    processes = [subprocess.Popen(
        [sys.executable, "-m", "optjax", "train", "--distributed", "--coordinator-address",
         address, "--num-processes", "2", "--process-id", str(i), *ARGS, "--out-dir",
         str(tmp_path / "two")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]
    # The reference, meanwhile: the same run on one device, in a process of its own so that it
    # has one device whatever XLA_FLAGS this one runs with (e.g.
    # --xla_force_host_platform_device_count=4), and the flags of the two others.
    reference = subprocess.run(
        [sys.executable, "-m", "optjax", "train", *ARGS, "--out-dir", str(tmp_path / "one")],
        env=env, capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert "1 cpu device(s);" in reference.stderr
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=300)[1])
        finally:
            process.kill()
    for i, (process, err) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"process {i}:\n{err[-3000:]}"
    assert "2 cpu device(s) in 2 processes" in outputs[0]
    assert "optjax train" not in outputs[1]  # the first process alone reports

    one = read_metrics(tmp_path / "one" / "metrics.jsonl")
    two = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["event"] for r in two] == [r["event"] for r in one] == \
        ["run"] + ["step"] * 4 + ["epoch", "eval"]  # written once, not once per process
    for a, b in zip(one[1:], two[1:]):
        # Same data, initialisation and steps; only the order of the sums over the batch
        # differs (each process reduces its 16 rows, then the two partial sums are added), and
        # the kernels for 16 rows instead of 32: a float32 rounding difference of a few units
        # in the last place, which 4 Adam steps leave far below 1e-5 relative. Rounding can also
        # stop a sample's forward solve (tol 1e-3) a step earlier or later, moving the mean loss
        # by about tol / 32 (1e-5 relative) per such sample: rtol 1e-4 allows a few. A
        # prediction changes only for a sample whose two largest logits are that close: at most
        # one in a step's 32 (the epoch's accuracy is the mean of its steps') or in the 64 of
        # the evaluation.
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4, err_msg=str(a))
        samples = a.get("num_samples", 32)
        assert abs(b["accuracy"] - a["accuracy"]) <= 1 / samples + 1e-9, (a, b)
    assert two[-1]["num_samples"] == 64  # the evaluation gathered both processes' samples
    assert (tmp_path / "two" / "checkpoints" / "4" / "files.json").is_file()
