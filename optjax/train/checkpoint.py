"""Checkpoints of a :class:`TrainState` with orbax, verified before and after reading.

A checkpoint (folder ``checkpoints/<step>``) holds the state's leaves as arrays (``leaf_00000``,
...), a JSON record (the leaves' pytree paths, shapes, dtypes and SHA-256 digests, the run's id,
the model options and the full configuration), and, written once orbax has committed the step,
``files.json``: the size and SHA-256 digest of every file of the step. Restoring checks, in this
order, that every file is as it was written (else "corrupt", naming the file; so orbax never
reads a damaged file), that the record belongs to this run (else "another run") and matches the
model being restored (else "different model", naming the differences), and that every array read
back has the digest it was saved with: a damaged file never becomes silently wrong weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
from typing import TYPE_CHECKING, Any, TypeVar

import jax
import numpy as np

from optjax.train.config import TrainConfig, saved_options
from optjax.train.identity import is_main_process
from optjax.train.sharding import host_value as _host

if TYPE_CHECKING:
    from optjax.train.step import TrainState

_T = TypeVar("_T")

__all__ = ["CheckpointError", "Checkpoints"]

FORMAT = 2
MANIFEST = "files.json"


def _part(name: str) -> str:
    """The part of a checkpoint a file belongs to: the arrays (``"state"``) or the records
    (``"meta"``: the JSON record and orbax's own metadata), verified when each is read."""
    return "state" if name.startswith("state/") else "meta"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, of another run, or was written by a different model."""


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _file_digest(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe(state: Any) -> tuple[list[str], list[list[int]], list[str]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    return ([jax.tree_util.keystr(p) for p, _ in flat], [list(np.shape(v)) for _, v in flat],
            [str(np.dtype(getattr(v, "dtype", np.asarray(v).dtype))) for _, v in flat])


def _key(i: int) -> str:
    return f"leaf_{i:05d}"


def _cause(err: BaseException) -> str:
    """The innermost cause of ``err``, on one line, without orbax's TensorStore spec dump."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = " ".join(str(err).split())
    text = text.split(" See full TensorStore details")[0]
    return f"{type(err).__name__}: {text[:300]}"


class Checkpoints:
    """The checkpoints of one run, in ``directory`` (created on first save).

    Args:
      directory: where the step folders go (``out_dir/checkpoints``).
      config: the run's configuration (its model fields are checked on restore).
      keep: how many of the latest checkpoints to keep.
      run_id: the run's identity, written into every checkpoint (see
        :mod:`optjax.train.identity`; None: unchecked).
    """

    def __init__(self, directory: str | pathlib.Path, config: TrainConfig, *, keep: int = 2,
                 run_id: str | None = None) -> None:
        import orbax.checkpoint as ocp

        # orbax logs every save at INFO level; keep the training output readable.
        logging.getLogger("absl").setLevel(logging.WARNING)
        self._ocp = ocp
        self.directory = pathlib.Path(directory).absolute()
        self.config = config
        self.run_id = run_id
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

    def save(self, state: TrainState, *, epoch: int,
             extra: dict[str, Any] | None = None) -> pathlib.Path:
        """Write ``state`` as checkpoint number ``int(state.step)`` (replacing none: a step that
        already has a checkpoint is left as it is)."""
        step = int(_host(state.step))
        if step in self.all_steps():
            return self.path(step)
        leaves = jax.tree.leaves(state)
        paths, shapes, dtypes = _describe(state)
        meta = dict(format=FORMAT, run_id=self.run_id, step=step, epoch=epoch, paths=paths,
                    shapes=shapes, dtypes=dtypes, sha256=[_digest(_host(v)) for v in leaves],
                    model=self.config.model_fields(), config=self.config.to_dict(),
                    **(extra or {}))
        arrays = {_key(i): v for i, v in enumerate(leaves)}
        ocp = self._ocp
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()
        self._write_manifest(step)
        return self.path(step)

    def _write_manifest(self, step: int) -> None:
        folder = self.path(step)
        if is_main_process():
            files = {str(p.relative_to(folder)): [p.stat().st_size, _file_digest(p)]
                     for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
            temporary = folder / (MANIFEST + ".tmp")
            temporary.write_text(json.dumps(files, indent=1) + "\n")
            temporary.replace(folder / MANIFEST)  # complete or absent, never half written
        if jax.process_count() > 1:  # the others read it only once it is there
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"optjax checkpoint {step} manifest")

    def _corrupt(self, step: int, what: str) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {self.path(step)} is corrupt or incomplete: {what}. Nothing was loaded. "
            f"Delete that folder to fall back to an earlier checkpoint (saved steps: "
            f"{self.all_steps()}), or start afresh in a new --out-dir (or with --overwrite)")

    def _verify_files(self, step: int, part: str) -> None:
        """Every file of ``part`` (:func:`_part`) of the step's folder has the size and digest
        it was saved with (checked before orbax reads any of them)."""
        folder = self.path(step)
        try:
            files = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError:
            raise self._corrupt(step, f"its file record {MANIFEST} is missing (the save did "
                                "not finish)") from None
        except ValueError:
            raise self._corrupt(step, f"its file record {MANIFEST} is damaged") from None
        recorded = {k: v for k, v in files.items() if _part(k) == part}
        if not recorded:
            raise self._corrupt(step, f"its file record {MANIFEST} lists no {part} files")
        for name, (size, digest) in recorded.items():
            path = folder / name
            if not path.is_file():
                raise self._corrupt(step, f"file {name} is missing")
            now = path.stat().st_size
            if now != size:
                how = "truncated" if now < size else "longer than when saved"
                raise self._corrupt(step, f"file {name} is {how} ({now} bytes, saved {size})")
            if _file_digest(path) != digest:
                raise self._corrupt(step, f"file {name} changed since it was saved (its SHA-256 "
                                    "differs)")

    def _unreadable(self, step: int, err: Exception) -> CheckpointError:
        return self._corrupt(step, f"it cannot be read ({_cause(err)})")

    def check_step(self, step: int) -> None:
        """Raise :class:`CheckpointError` unless ``step`` has a checkpoint, listing those that
        exist."""
        steps = self.all_steps()
        if step not in steps:
            have = f"the saved steps are {steps}" if steps else "it holds none"
            raise CheckpointError(f"there is no checkpoint of step {step} in {self.directory}; "
                                  f"{have}")

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON record of checkpoint ``step`` (its files verified first)."""
        self.check_step(step)
        self._verify_files(step, "meta")
        ocp = self._ocp
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))["meta"]
        except Exception as err:  # orbax raises many types for damaged files
            raise self._unreadable(step, err) from err
        if not isinstance(meta, dict):
            raise self._unreadable(step, ValueError("the record is not a JSON object"))
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"checkpoint {self.path(step)} has record format {meta.get('format')!r}, not "
                f"{FORMAT}: it was written by another version of optjax. Start afresh in a new "
                "--out-dir (or with --overwrite)")
        return meta

    def check_run(self, run_id: str) -> None:
        """Raise :class:`CheckpointError` if any checkpoint belongs to another run than
        ``run_id`` (before anything is loaded, saved or pruned)."""
        foreign = []
        for step in self.all_steps():
            theirs = self.read_meta(step).get("run_id")
            if theirs != run_id:
                foreign.append(f"{self.path(step)} (run {theirs})")
        if foreign:
            raise CheckpointError(
                f"{self.directory} holds checkpoints of another run: {'; '.join(foreign)}; this "
                f"run is {run_id} (see run.json). They were copied here from another run "
                "directory. Nothing was loaded, pruned or rewritten: move them out of "
                f"{self.directory} and run again, or resume the run they belong to in its own "
                "--out-dir")

    def restore(self, template: _T, step: int | None = None, *,
                sharding: jax.sharding.Sharding | None = None) -> tuple[_T, dict[str, Any]]:
        """The state saved at ``step`` (default: the latest), with the pytree structure of
        ``template`` (a freshly initialised state of the same model), placed with ``sharding``
        (default: on the default device)."""
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(
                    f"no checkpoint in {self.directory}: train without --resume first, or point "
                    "--out-dir at the run to continue")
        meta = self.read_meta(step)
        if self.run_id is not None and meta.get("run_id") != self.run_id:
            self.check_run(self.run_id)
        self._check_compatible(meta, template, step)
        self._verify_files(step, "state")
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
                raise self._corrupt(step, f"array {meta['paths'][i]} does not match the digest "
                                    "recorded when it was saved")
            restored.append(value)
        return jax.tree.unflatten(treedef, restored), meta

    def _check_compatible(self, meta: dict[str, Any], template: Any, step: int) -> None:
        model = self.config.model_fields()
        # A checkpoint written before a model option existed was written with its default of
        # that day (saved_options).
        saved = {**type(self.config)().model_fields(), **saved_options(meta.get("model", {}))}
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
