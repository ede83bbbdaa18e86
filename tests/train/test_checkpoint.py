"""Checkpoints: a damaged or foreign checkpoint is refused with a message, never loaded."""

import json
import pathlib
import re
import subprocess
import sys

import pytest

from optjax.train import CheckpointError
from optjax.train.checkpoint import Checkpoints

from tests.train._runs import run, tiny_config


@pytest.fixture()
def stopped(tmp_path):
    """A run stopped after 3 steps: one checkpoint, at step 3."""
    result = run(tiny_config(tmp_path, stop_after=3))
    assert result.paths["checkpoint"] == tmp_path / "checkpoints" / "3"
    return result


def _array_files(step_dir: pathlib.Path):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()
             and "ocdbt.process_0" in p.parts and p.parent.name == "d"]
    assert files, "expected orbax's array data files under state/ocdbt.process_0/d"
    return files


def test_flipped_bytes_are_detected(stopped, tmp_path):
    for f in _array_files(tmp_path / "checkpoints" / "3"):
        data = bytearray(f.read_bytes())
        for i in range(len(data) // 2, len(data), 7):
            data[i] ^= 0xFF
        f.write_bytes(bytes(data))
    # In a child process: orbax leaves asyncio coroutines behind when a read fails.
    done = subprocess.run([sys.executable, "-m", "optjax", "train", "--resume", "--out-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert re.search(r"checkpoints/3.*(corrupt|cannot be read)", done.stderr), done.stderr[-2000:]


def test_a_missing_record_is_detected(stopped, tmp_path):
    (tmp_path / "checkpoints" / "3" / "meta" / "metadata").unlink()
    with pytest.raises(CheckpointError, match="cannot be read.*corrupt or incomplete"):
        run(tiny_config(tmp_path), resume=True)


def test_another_model_is_refused(stopped, tmp_path):
    with pytest.raises(CheckpointError, match=r"different model \(width: checkpoint 16, now 24\)"):
        run(tiny_config(tmp_path, width=24), resume=True)


def test_another_optimiser_layout_is_refused(stopped, tmp_path):
    # Without gradient clipping the optimiser state has another structure.
    checkpoints = Checkpoints(tmp_path / "checkpoints", tiny_config(tmp_path, grad_clip=None))
    from optjax.train.loop import prepare
    import jax
    with jax.enable_x64(False):
        template = prepare(tiny_config(tmp_path, grad_clip=None)).state
    with pytest.raises(CheckpointError, match="does not fit this model: paths differ"):
        checkpoints.restore(template)


def test_resume_without_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in .*train without --resume"):
        run(tiny_config(tmp_path), resume=True)


def test_an_array_that_reads_back_different_is_refused(stopped, tmp_path):
    # Damage that still decodes (as a bit flip inside a stored float would): the recorded digest
    # no longer matches what is read back.
    record = tmp_path / "checkpoints" / "3" / "meta" / "metadata"
    meta = json.loads(record.read_text())
    meta["sha256"][0] = "0" * 64
    record.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"is corrupt: array .* does not match the digest"):
        run(tiny_config(tmp_path), resume=True)
