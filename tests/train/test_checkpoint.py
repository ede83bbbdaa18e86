"""Checkpoints: a damaged, foreign or missing checkpoint is refused with a message, never
loaded; the run's own checkpoints and metrics are left as they were."""

import hashlib
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import optax
import pytest

from optjax.config import ConfigError
from optjax.train import CheckpointError
from optjax.train.checkpoint import Checkpoints

from tests.train._runs import cli, run, tiny_config


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run stopped after 3 steps (one checkpoint, at step 3); copy it before changing it."""
    out = tmp_path_factory.mktemp("saved")
    result = run(tiny_config(out, stop_after=3))
    assert result.paths["checkpoint"] == out / "checkpoints" / "3"
    return out


@pytest.fixture()
def copy(saved, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(saved, out)
    return out


def _array_files(step_dir: pathlib.Path):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()
             and "ocdbt.process_0" in p.parts and p.parent.name == "d"]
    assert files, "expected orbax's array data files under state/ocdbt.process_0/d"
    return files


def test_flipped_bytes_are_named_and_nothing_else_is_printed(copy, capfd):
    for f in _array_files(copy / "checkpoints" / "3"):
        data = bytearray(f.read_bytes())
        for i in range(len(data) // 2, len(data), 7):
            data[i] ^= 0xFF
        f.write_bytes(bytes(data))
    assert cli("train", "--resume", "--out-dir", str(copy)) == 2
    err = capfd.readouterr().err
    assert "checkpoints/3 is corrupt or incomplete: file state/ocdbt.process_0/d/" in err
    assert "changed since it was saved" in err and "Delete that folder" in err
    assert err.count("\n") == 1, err  # one message, no tracebacks from orbax's threads


@pytest.mark.slow  # end to end, ~10-20 s: CI runs it with the slow checks
def test_a_truncated_data_file_gives_one_message_and_no_tracebacks(copy):
    # In a child process: everything it prints up to its exit counts (orbax used to leave
    # ~130 lines of "Exception ignored in <coroutine ...>" behind when a read failed).
    biggest = max(_array_files(copy / "checkpoints" / "3"), key=lambda p: p.stat().st_size)
    size = biggest.stat().st_size
    biggest.write_bytes(biggest.read_bytes()[:size // 2])
    done = subprocess.run([sys.executable, "-m", "optjax", "eval", "--out-dir", str(copy)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("optjax: error: checkpoint") and \
        done.stderr.count("\n") == 1, done.stderr[-3000:]
    assert f"is truncated ({size // 2} bytes, saved {size})" in done.stderr
    assert "Exception ignored" not in done.stderr and done.stdout == ""


def test_another_model_is_refused(copy):
    checkpoints = Checkpoints(copy / "checkpoints", tiny_config(copy, width=24))
    with pytest.raises(CheckpointError, match=r"different model \(width: checkpoint 16, now 24\)"):
        checkpoints.restore(_template(tiny_config(copy, width=24)))


def _template(config):
    from optjax.train.loop import prepare
    with jax.enable_x64(False):
        return prepare(config).state


def test_another_optimiser_layout_is_refused(copy):
    template = _template(tiny_config(copy))
    # SGD with momentum: another optimiser state than AdamW's
    template = template.__class__(step=template.step, params=template.params,
                                  opt_state=optax.sgd(0.1, 0.9).init(template.params),
                                  rest=template.rest)
    checkpoints = Checkpoints(copy / "checkpoints", tiny_config(copy))
    with pytest.raises(CheckpointError, match="does not fit this model: paths differ"):
        checkpoints.restore(template)


def test_resume_without_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in .*train without --resume"):
        run(tiny_config(tmp_path), resume=True)
    assert not (tmp_path / "checkpoints").exists()  # and nothing created


def test_an_array_that_reads_back_different_is_refused(copy):
    # Damage that still decodes and whose file record was rewritten too: the digest of the
    # array read back is the last line of defence.
    folder = copy / "checkpoints" / "3"
    record = folder / "meta" / "metadata"
    meta = json.loads(record.read_text())
    meta["sha256"][0] = "0" * 64
    record.write_text(json.dumps(meta))
    files = json.loads((folder / "files.json").read_text())
    files["meta/metadata"] = [record.stat().st_size,
                              hashlib.sha256(record.read_bytes()).hexdigest()]
    (folder / "files.json").write_text(json.dumps(files))
    with pytest.raises(CheckpointError, match=r"corrupt or incomplete: array .* does not match "
                                              "the digest"):
        run(tiny_config(copy), resume=True)


def test_eval_says_which_step_and_epoch_it_evaluated(copy, capsys):
    assert cli("eval", "--out-dir", str(copy)) == 0
    assert "test: checkpoint of step 3 (epoch 1)" in capsys.readouterr().out
    assert cli("eval", "--out-dir", str(copy), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["step"], report["epoch"]) == (3, 0)


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """Another run, with the same options, stopped after 5 steps."""
    out = tmp_path_factory.mktemp("other")
    run(tiny_config(out, stop_after=5))
    return out


def test_a_checkpoint_of_another_run_is_refused_and_nothing_is_changed(copy, other, capsys):
    shutil.copytree(other / "checkpoints" / "5", copy / "checkpoints" / "5")
    metrics = (copy / "metrics.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match=r"holds checkpoints of another run: .*checkpoints/5"
                                              r".*Nothing was loaded, pruned or rewritten"):
        run(tiny_config(copy, keep_checkpoints=1), resume=True)
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["3", "5"]
    assert (copy / "metrics.jsonl").read_bytes() == metrics
    assert cli("eval", "--out-dir", str(copy)) == 2  # the latest is the foreign one
    assert "another run" in capsys.readouterr().err
    # moved out again, the run resumes from its own checkpoint
    shutil.rmtree(copy / "checkpoints" / "5")
    resumed = run(tiny_config(copy, stop_after=4), resume=True)
    assert int(resumed.state.step) == 4


def test_metrics_of_another_run_are_refused(copy, other):
    shutil.copy(other / "metrics.jsonl", copy / "metrics.jsonl")
    with pytest.raises(ConfigError, match="holds the metrics of another run"):
        run(tiny_config(copy), resume=True)
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["3"]


def test_a_moved_run_without_run_json_adopts_its_checkpoints_identity(copy):
    run_id = json.loads((copy / "run.json").read_text())["run_id"]
    (copy / "run.json").unlink()
    resumed = run(tiny_config(copy, stop_after=4), resume=True)
    assert resumed.run_id == run_id
    assert json.loads((copy / "run.json").read_text())["run_id"] == run_id
