"""The IDX file format (MNIST, Fashion-MNIST) and the loaders built on it.

An IDX file is: two zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), the number of dimensions, one big-endian uint32 size per dimension,
then the values, big-endian, row-major. Files may be gzip-compressed; compression is detected
from the content, not the name.

Each dataset directory holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each with or without ``.gz``.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from optjax.data.dataset import DataError, Dataset, resolve_dir

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

#: The four files of an IDX dataset, by role, without the optional ``.gz``.
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: Where the Debian/Ubuntu package ``dataset-fashion-mnist`` installs Fashion-MNIST.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The array stored in an IDX file (gzip or raw), in native byte order.

    Raises :class:`DataError` naming the file when it cannot be read, is not valid gzip, has a
    bad magic number, or its payload length differs from the product of its dimensions.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read IDX file {str(path)!r}: {err}") from err
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"IDX file {str(path)!r} is a corrupt or truncated gzip file ({err}); "
                            f"download or install it again") from err
    elif path.suffix == ".gz":
        raise DataError(f"IDX file {str(path)!r} is named .gz but is not gzip-compressed; "
                        f"download or install it again")
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    where = f"IDX file {str(path)!r}"
    fix = "download or install it again"
    if len(raw) < 4:
        raise DataError(f"{where} is {len(raw)} bytes long, too short for the 4-byte magic "
                        f"number; {fix}")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or code not in _DTYPES or ndim < 1:
        raise DataError(f"{where} has bad magic number 0x{raw[:4].hex()} (expected 0x0000 then a "
                        f"dtype code among {', '.join(f'0x{c:02x}' for c in _DTYPES)} and the "
                        f"number of dimensions >= 1); it is not an IDX file or is corrupt; {fix}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{where} is truncated inside its header ({len(raw)} bytes, the header "
                        f"of a {ndim}-d array needs {header}); {fix}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        state = "truncated" if actual < expected else "longer than its header says"
        raise DataError(f"{where} is {state}: its header declares shape {tuple(dims)} "
                        f"({expected} bytes of data) but it holds {actual} bytes; {fix}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def _find_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """The file found for each role (``name.gz`` preferred over ``name``) and the missing names."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, name in IDX_FILES.items():
        for candidate in (directory / f"{name}.gz", directory / name):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            missing.append(name)
    return found, missing


def _expected_files() -> str:
    return ", ".join(f"{name}[.gz]" for name in IDX_FILES.values())


def _load_split(images_path: Path, labels_path: Path,
                num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"IDX file {str(images_path)!r} holds an array of dtype {images.dtype} "
                        f"and shape {images.shape}; images must be uint8 of shape (N, H, W); "
                        f"check that the file is an image file")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"IDX file {str(labels_path)!r} holds an array of dtype {labels.dtype} "
                        f"and shape {labels.shape}; labels must be uint8 of shape (N,); check "
                        f"that the file is a label file")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{str(images_path)!r} holds {images.shape[0]} images but "
                        f"{str(labels_path)!r} holds {labels.shape[0]} labels; the two files do "
                        f"not belong together, download or install them again")
    if labels.size and labels.max() >= num_classes:
        raise DataError(f"IDX file {str(labels_path)!r} has label {int(labels.max())}, outside "
                        f"[0, {num_classes}); it is corrupt or from another dataset")
    x = images.astype(np.float32)[..., None]
    x /= np.float32(255)
    return x, labels.astype(np.int32)


def load_idx_dataset(name: str, directory: Path, class_names: tuple[str, ...],
                     how_to_get: str) -> Dataset:
    """Load the four IDX files of ``directory`` as a :class:`Dataset` (pixels / 255).

    ``how_to_get`` ends the missing-file message: how the user can obtain the files.
    """
    found, missing = _find_files(directory)
    if missing:
        raise DataError(f"dataset {name!r}: missing {', '.join(missing)} (with or without .gz) "
                        f"in {str(directory)!r}; the directory must hold the four IDX files "
                        f"{_expected_files()}; {how_to_get}")
    x_train, y_train = _load_split(found["train_images"], found["train_labels"], len(class_names))
    x_test, y_test = _load_split(found["test_images"], found["test_labels"], len(class_names))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"dataset {name!r}: train images in {str(found['train_images'])!r} are "
                        f"{x_train.shape[1:3]} but test images in {str(found['test_images'])!r} "
                        f"are {x_test.shape[1:3]}; the files come from different datasets")
    return Dataset(name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   num_classes=len(class_names), class_names=class_names)


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Fashion-MNIST: images (N, 28, 28, 1) float32 in [0, 1], 60000 train / 10000 test.

    ``data_dir`` defaults to :data:`FASHION_MNIST_DIR`, where the Debian/Ubuntu package
    ``dataset-fashion-mnist`` installs the files.
    """
    if data_dir is None:
        directory = FASHION_MNIST_DIR
        how = (f"install them with `{FASHION_MNIST_INSTALL}` or pass --data-dir (data_dir=) "
               f"pointing at a directory that holds them")
        if not directory.is_dir():
            raise DataError(f"dataset 'fashion-mnist': default directory {str(directory)!r} does "
                            f"not exist; it should hold the four IDX files {_expected_files()}; "
                            f"{how}")
    else:
        directory = resolve_dir(data_dir, "fashion-mnist")
        how = (f"put them there, or install them with `{FASHION_MNIST_INSTALL}` and drop "
               f"--data-dir to use {str(FASHION_MNIST_DIR)!r}")
    return load_idx_dataset("fashion-mnist", directory, FASHION_MNIST_CLASSES, how)


def load_mnist(data_dir: str | os.PathLike[str] | None) -> Dataset:
    """MNIST from the four IDX files in ``data_dir`` (required): images (N, 28, 28, 1) in [0, 1].

    optjax does not download MNIST; the user supplies the files.
    """
    how = ("optjax cannot download MNIST: obtain the four IDX files yourself and pass --data-dir "
           "(data_dir=) pointing at the directory that holds them")
    if data_dir is None:
        raise DataError(f"dataset 'mnist' needs --data-dir (data_dir=): a directory holding the "
                        f"four IDX files {_expected_files()}; optjax cannot download MNIST, "
                        f"obtain the files yourself")
    directory = resolve_dir(data_dir, "mnist")
    return load_idx_dataset("mnist", directory, MNIST_CLASSES, how)
