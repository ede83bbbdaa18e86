"""Dataset loaders: ``load(name, data_dir=None) -> Dataset``.

Datasets (:data:`DATASETS`):

- ``digits``: scikit-learn's 8x8 digits, bundled with scikit-learn (``data_dir`` is ignored).
- ``fashion-mnist``: IDX files; ``data_dir`` defaults to ``/usr/share/datasets/fashion-mnist``
  (``apt-get install dataset-fashion-mnist``).
- ``mnist``: IDX files in ``data_dir`` (required; optjax does not download MNIST).
- ``cifar10``: the "CIFAR-10 python version" pickle batches in ``data_dir`` (required); only
  point it at trusted files, since pickles can run code.

Images are float32 (N, H, W, C) in [0, 1]; labels int32 (N,). Every failure raises
:class:`DataError` saying what is wrong and how to fix it. Only numpy is needed (plus
scikit-learn for ``digits``).
"""

from __future__ import annotations

import os

from optjax.data.dataset import DataError, Dataset
from optjax.data.cifar10 import load_cifar10
from optjax.data.digits import load_digits
from optjax.data.idx import load_fashion_mnist, load_mnist, read_idx

DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "mnist", "cifar10")


def load(name: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) from ``data_dir``.

    ``data_dir`` is ignored for ``digits``; for the others a given directory must exist.
    Raises :class:`DataError` for an unknown name or missing, corrupt or inconsistent files.
    """
    if name == "digits":
        return load_digits()
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    if name == "mnist":
        return load_mnist(data_dir)
    if name == "cifar10":
        return load_cifar10(data_dir)
    raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "load",
    "load_cifar10",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
]
