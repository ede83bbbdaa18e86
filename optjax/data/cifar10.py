"""CIFAR-10 from the "CIFAR-10 python version" pickle batches (cifar-10-python.tar.gz).

The directory holds ``data_batch_1`` ... ``data_batch_5``, ``test_batch`` and optionally
``batches.meta``; ``data_dir`` may be that ``cifar-10-batches-py`` folder or its parent. Each
batch is a pickled dict with ``b"data"`` (uint8, (N, 3072): the 1024 red, then green, then blue
values of a 32x32 image, row-major) and ``b"labels"`` (N ints).

Security: unpickling can run arbitrary code. Only files in the directory the user passes are
read, through an unpickler that refuses every global except the few numpy constructors a
CIFAR-10 batch uses; still, only point ``data_dir`` at files you trust.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from optjax.data.dataset import DataError, Dataset, resolve_dir

SUBDIR = "cifar-10-batches-py"
TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
CLASS_NAMES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
_SIDE, _CHANNELS = 32, 3
_ROW = _SIDE * _SIDE * _CHANNELS

HOW_TO_GET = (
    "download the 'CIFAR-10 python version' (cifar-10-python.tar.gz) from "
    "https://www.cs.toronto.edu/~kriz/cifar.html, extract it with "
    "`tar xzf cifar-10-python.tar.gz`, and pass --data-dir (data_dir=) pointing at the extracted "
    f"{SUBDIR} folder or its parent; optjax does not download it"
)

# The globals a CIFAR-10 batch (pickled by Python 2 or 3, numpy 1 or 2) refers to, plus numpy
# scalars (labels re-pickled as numpy integers). Nothing else is resolved, so a crafted pickle
# cannot call arbitrary functions.
_ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise _RefusedGlobal(f"{module}.{name}")


def _unpickle(path: Path) -> Any:
    """Unpickle ``path`` (``encoding="bytes"``) with the restricted unpickler."""
    try:
        with open(path, "rb") as f:
            return _BatchUnpickler(f, encoding="bytes").load()
    except _RefusedGlobal as err:
        raise DataError(f"CIFAR-10 file {str(path)!r} refers to {err}, which a CIFAR-10 batch "
                        f"never contains; refusing to unpickle it (pickles can run code); use "
                        f"the official files: {HOW_TO_GET}") from None
    except OSError as err:
        raise DataError(f"cannot read CIFAR-10 file {str(path)!r}: {err}") from err
    except Exception as err:  # unpickling corrupt data raises many types
        raise DataError(f"cannot unpickle CIFAR-10 file {str(path)!r} "
                        f"({type(err).__name__}: {err}); it is corrupt or not a CIFAR-10 python "
                        f"batch; {HOW_TO_GET}") from err


def _field(batch: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataError(f"CIFAR-10 file {str(path)!r} has no {key!r} entry (keys: "
                    f"{sorted(map(repr, batch))}); it is not a CIFAR-10 python batch; "
                    f"{HOW_TO_GET}")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 rows (N, 3072) and int32 labels (N,) of one batch file."""
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR-10 file {str(path)!r} holds a {type(batch).__name__}, not the "
                        f"dict of a CIFAR-10 python batch; {HOW_TO_GET}")
    data, labels = _field(batch, "data", path), _field(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != _ROW:
        what = (f"dtype {data.dtype} and shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise DataError(f"CIFAR-10 file {str(path)!r}: 'data' is {what}, expected a uint8 array "
                        f"of shape (N, {_ROW}) (32x32 images, 3 channels); the file is corrupt "
                        f"or from another dataset; {HOW_TO_GET}")
    try:
        y = np.asarray(labels)
    except Exception:
        y = np.asarray(None)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"CIFAR-10 file {str(path)!r}: 'labels' must be a list of integers, got "
                        f"{type(labels).__name__}; the file is corrupt; {HOW_TO_GET}")
    if y.shape[0] != data.shape[0]:
        raise DataError(f"CIFAR-10 file {str(path)!r} has {data.shape[0]} images but "
                        f"{y.shape[0]} labels; the file is corrupt; {HOW_TO_GET}")
    if y.size and (y.min() < 0 or y.max() >= len(CLASS_NAMES)):
        raise DataError(f"CIFAR-10 file {str(path)!r} has labels in [{y.min()}, {y.max()}], "
                        f"outside [0, {len(CLASS_NAMES)}); the file is corrupt; {HOW_TO_GET}")
    return data, y.astype(np.int32)


def _read_class_names(path: Path) -> tuple[str, ...]:
    meta = _unpickle(path)
    names = _field(meta, "label_names", path) if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)) or len(names) != len(CLASS_NAMES) \
            or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"CIFAR-10 file {str(path)!r} must be a dict whose 'label_names' lists "
                        f"{len(CLASS_NAMES)} names; it is corrupt: delete it (it is optional) "
                        f"or extract the archive again; {HOW_TO_GET}")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)


def _to_images(rows: np.ndarray) -> np.ndarray:
    """uint8 rows (N, 3072), channels first, to float32 (N, 32, 32, 3) in [0, 1]."""
    chw = rows.reshape(-1, _CHANNELS, _SIDE, _SIDE)
    x = np.ascontiguousarray(chw.transpose(0, 2, 3, 1), dtype=np.float32)
    x /= np.float32(255)
    return x


def _batch_dir(directory: Path) -> Path:
    required = (*TRAIN_BATCHES, TEST_BATCH)
    if any((directory / name).is_file() for name in required):
        return directory
    nested = directory / SUBDIR
    return nested if nested.is_dir() else directory


def load_cifar10(data_dir: str | os.PathLike[str] | None) -> Dataset:
    """CIFAR-10: images (N, 32, 32, 3) float32 in [0, 1], 50000 train / 10000 test.

    ``data_dir`` (required) is the ``cifar-10-batches-py`` folder or its parent. Class names come
    from ``batches.meta`` when present.
    """
    if data_dir is None:
        raise DataError(f"dataset 'cifar10' needs --data-dir (data_dir=): a directory holding "
                        f"{', '.join(TRAIN_BATCHES)} and {TEST_BATCH}; {HOW_TO_GET}")
    given = resolve_dir(data_dir, "cifar10")
    directory = _batch_dir(given)
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if not (directory / n).is_file()]
    if missing:
        searched = (f"{str(given)!r} and {str(given / SUBDIR)!r}" if directory == given
                    else repr(str(directory)))
        raise DataError(f"dataset 'cifar10': missing {', '.join(missing)} in {searched}; the "
                        f"directory must hold {', '.join(TRAIN_BATCHES)} and {TEST_BATCH} "
                        f"({META} optional); {HOW_TO_GET}")
    train = [_read_batch(directory / n) for n in TRAIN_BATCHES]
    test_rows, y_test = _read_batch(directory / TEST_BATCH)
    meta = directory / META
    class_names = _read_class_names(meta) if meta.is_file() else CLASS_NAMES
    x_train = _to_images(np.concatenate([rows for rows, _ in train]))
    y_train = np.concatenate([labels for _, labels in train])
    return Dataset(name="cifar10", x_train=x_train, y_train=y_train,
                   x_test=_to_images(test_rows), y_test=y_test,
                   num_classes=len(CLASS_NAMES), class_names=class_names)
