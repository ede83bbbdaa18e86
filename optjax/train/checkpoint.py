"""Checkpoints of a :class:`TrainState` with orbax, verified on restore.

A checkpoint holds the state's leaves as arrays (``leaf_00000``, ...) and a JSON record: the
leaves' pytree paths, shapes, dtypes and SHA-256 digests, the model options and the full
configuration. Restoring checks, in this order, that the record matches the model being
restored (else "incompatible", naming the differences) and that every array read back has the
digest it was saved with (else "corrupt"): a damaged file never becomes silently wrong weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
from typing import Any

import jax
import numpy as np

from optjax.train.config import TrainConfig
from optjax.train.sharding import host_value as _host

__all__ = ["CheckpointError", "Checkpoints"]

FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or was written by a different model."""


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _describe(state) -> tuple[list[str], list[list[int]], list[str]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    return ([jax.tree_util.keystr(p) for p, _ in flat], [list(np.shape(v)) for _, v in flat],
            [str(np.dtype(getattr(v, "dtype", np.asarray(v).dtype))) for _, v in flat])


def _key(i: int) -> str:
    return f"leaf_{i:05d}"


class Checkpoints:
    """The checkpoints of one run, in ``directory`` (created on first save).

    Args:
      directory: where the step folders go (``out_dir/checkpoints``).
      config: the run's configuration (its model fields are checked on restore).
      keep: how many of the latest checkpoints to keep.
    """

    def __init__(self, directory: str | pathlib.Path, config: TrainConfig, *, keep: int = 2):
        import orbax.checkpoint as ocp

        # orbax logs every save at INFO level; keep the training output readable.
        logging.getLogger("absl").setLevel(logging.WARNING)
        self._ocp = ocp
        self.directory = pathlib.Path(directory).absolute()
        self.config = config
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def path(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def save(self, state, *, epoch: int, extra: dict[str, Any] | None = None) -> pathlib.Path:
        """Write ``state`` as checkpoint number ``int(state.step)`` (replacing none: a step that
        already has a checkpoint is left as it is)."""
        step = int(_host(state.step))
        if step in self.all_steps():
            return self.path(step)
        leaves = jax.tree.leaves(state)
        paths, shapes, dtypes = _describe(state)
        meta = dict(format=FORMAT, step=step, epoch=epoch, paths=paths, shapes=shapes,
                    dtypes=dtypes, sha256=[_digest(_host(v)) for v in leaves],
                    model=self.config.model_fields(), config=self.config.to_dict(),
                    **(extra or {}))
        arrays = {_key(i): v for i, v in enumerate(leaves)}
        ocp = self._ocp
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()
        return self.path(step)

    def _unreadable(self, step: int, err: Exception) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {self.path(step)} cannot be read ({type(err).__name__}: "
            f"{str(err)[:300]}). It is corrupt or incomplete: delete that folder to fall back "
            f"to an earlier checkpoint ({self.all_steps()} exist), or start afresh in a new "
            "--out-dir (or with --overwrite)")

    def read_meta(self, step: int) -> dict[str, Any]:
        ocp = self._ocp
        record = self.path(step) / "meta" / "metadata"
        if not record.is_file():  # checked here: orbax's own failure is less clear
            raise self._unreadable(step, FileNotFoundError(f"{record} is missing"))
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))["meta"]
        except Exception as err:  # orbax raises many types for damaged files
            raise self._unreadable(step, err) from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise self._unreadable(step, ValueError("missing or unknown checkpoint record"))
        return meta

    def restore(self, template, step: int | None = None, *, sharding=None):
        """The state saved at ``step`` (default: the latest), with the pytree structure of
        ``template`` (a freshly initialised state of the same model), placed with ``sharding``
        (default: on the default device)."""
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(
                    f"no checkpoint in {self.directory}: train without --resume first, or point "
                    "--out-dir at the run to continue")
        elif step not in self.all_steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory}; saved steps: "
                f"{self.all_steps()}")
        meta = self.read_meta(step)
        self._check_compatible(meta, template, step)
        leaves, treedef = jax.tree.flatten(template)
        target = {
            _key(i): jax.ShapeDtypeStruct(np.shape(v), v.dtype, sharding=sharding)
            if sharding is not None else np.zeros(np.shape(v), v.dtype)
            for i, v in enumerate(leaves)
        }
        ocp = self._ocp
        try:
            arrays = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target)))["state"]
        except Exception as err:
            raise self._unreadable(step, err) from err
        restored = []
        for i, want in enumerate(meta["sha256"]):
            value = arrays.get(_key(i)) if isinstance(arrays, dict) else None
            if value is None or _digest(_host(value)) != want:
                raise CheckpointError(
                    f"checkpoint {self.path(step)} is corrupt: array {meta['paths'][i]} does not "
                    "match the digest recorded when it was saved. Delete that folder to fall "
                    "back to an earlier checkpoint, or start afresh in a new --out-dir")
            restored.append(value)
        return jax.tree.unflatten(treedef, restored), meta

    def _check_compatible(self, meta, template, step: int) -> None:
        model = self.config.model_fields()
        saved = meta.get("model", {})
        diff = [f"{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in model.items()
                if saved.get(k) != v]
        if diff:
            raise CheckpointError(
                f"checkpoint {self.path(step)} was written by a different model ("
                + "; ".join(diff) + "). Use the same model options to resume it, or a new "
                "--out-dir for a new model")
        paths, shapes, dtypes = _describe(template)
        if (paths, shapes, dtypes) != (meta["paths"], meta["shapes"], meta["dtypes"]):
            lines = []
            for name, want, got in (("paths", meta["paths"], paths),
                                    ("shapes", meta["shapes"], shapes),
                                    ("dtypes", meta["dtypes"], dtypes)):
                if want != got:
                    mismatch = [f"{a} != {b}" for a, b in zip(want, got) if a != b][:3]
                    lines.append(f"{name} differ ({len(want)} saved, {len(got)} now"
                                 + (f"; e.g. {', '.join(map(str, mismatch))}" if mismatch else "")
                                 + ")")
            raise CheckpointError(
                f"checkpoint {self.path(step)} does not fit this model: " + "; ".join(lines)
                + ". It was written by another version of the model or optimiser; use a new "
                "--out-dir")

    @staticmethod
    def describe_config(meta: dict[str, Any]) -> str:
        return json.dumps(meta.get("config", {}), indent=1, sort_keys=True)
