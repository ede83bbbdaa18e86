"""The identity of a run: a random id drawn when the run is created, written to
``out_dir/run.json``, into every checkpoint's record and as the first record of the metrics.

A checkpoint or a metrics file whose id differs from the run's was copied in from another run:
it is refused (never loaded, and nothing of the run is pruned or rewritten because of it).
"""

from __future__ import annotations

import datetime
import json
import pathlib
import uuid

import jax
import numpy as np

__all__ = ["RUN_FILE", "new_run_id", "read_run_id", "write_run_id", "is_main_process"]

RUN_FILE = "run.json"


def is_main_process() -> bool:
    """Whether this process writes the run's shared files (metrics, plots, reports)."""
    return jax.process_index() == 0


def new_run_id() -> str:
    """A fresh random id (32 hex digits), the same on every process (process 0's)."""
    run_id = uuid.uuid4().hex
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        words = np.frombuffer(bytes.fromhex(run_id), np.uint32)
        words = multihost_utils.broadcast_one_to_all(words)
        run_id = np.asarray(words, np.uint32).tobytes().hex()
    return run_id


def read_run_id(out_dir: str | pathlib.Path) -> str | None:
    """The id in ``out_dir/run.json``; None when the file is absent."""
    path = pathlib.Path(out_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        run_id = json.loads(path.read_text())["run_id"]
    except (ValueError, KeyError, TypeError):
        run_id = None
    if not isinstance(run_id, str):
        from optjax.config import ConfigError

        raise ConfigError(f"{path} is damaged (it must hold {{\"run_id\": \"...\"}}); delete it "
                          "to adopt the identity of the run's latest checkpoint")
    return run_id


def write_run_id(out_dir: str | pathlib.Path, run_id: str) -> None:
    if not is_main_process():
        return
    path = pathlib.Path(out_dir) / RUN_FILE
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    path.write_text(json.dumps(dict(run_id=run_id, created=created)) + "\n")
