"""The in-memory :class:`Dataset` every loader returns, and :class:`DataError`.

Images are float32 arrays of shape (N, H, W, C), channels last; labels are int32 of shape (N,).
A Dataset validates itself on construction, so a loader cannot hand back inconsistent arrays.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

# Samples per chunk when computing channel statistics: bounds the float64 temporaries.
_STATS_CHUNK = 4096


class DataError(ValueError):
    """A dataset is unknown, missing, corrupt or inconsistent; the message says what to do."""


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/test split of images and integer labels.

    ``x_*``: float32, shape (N, H, W, C), finite (in [0, 1] as loaded; any finite values after
    :meth:`standardized`). ``y_*``: int32, shape (N,), values in [0, num_classes). The fields are
    frozen but the arrays are ordinary numpy arrays: do not modify them in place.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        where = f"Dataset {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise DataError(f"Dataset name must be a non-empty string, got {self.name!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) \
                or self.num_classes < 1:
            raise DataError(f"{where}: num_classes must be an integer >= 1, "
                            f"got {self.num_classes!r}")
        if not isinstance(self.class_names, tuple) \
                or not all(isinstance(c, str) for c in self.class_names) \
                or len(self.class_names) != self.num_classes:
            raise DataError(f"{where}: class_names must be a tuple of {self.num_classes} strings "
                            f"(one per class), got {self.class_names!r}")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
                raise DataError(f"{where}: x_{split} must be a float32 numpy array of shape "
                                f"(N, H, W, C), got {_describe(x)}; convert it with "
                                f"np.asarray(x, np.float32) and add a channel axis if needed")
            if not isinstance(y, np.ndarray) or y.dtype != np.int32 or y.ndim != 1:
                raise DataError(f"{where}: y_{split} must be an int32 numpy array of shape (N,), "
                                f"got {_describe(y)}; convert it with np.asarray(y, np.int32)")
            if 0 in x.shape[1:]:
                raise DataError(f"{where}: x_{split} holds images of shape {x.shape[1:]}; every "
                                f"image needs at least one row, column and channel (H, W, C)")
            if x.shape[0] != y.shape[0] or x.shape[0] < 1:
                raise DataError(f"{where}: x_{split} has {x.shape[0]} samples but y_{split} has "
                                f"{y.shape[0]} labels; they must match and be at least 1")
            if y.min() < 0 or y.max() >= self.num_classes:
                raise DataError(f"{where}: y_{split} has labels in [{y.min()}, {y.max()}] but "
                                f"they must lie in [0, {self.num_classes}); check num_classes "
                                f"and the label files")
            if not np.isfinite(x).all():
                raise DataError(f"{where}: x_{split} contains NaN or infinite values; the data "
                                f"files are corrupt or a preprocessing step divided by zero")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(f"{where}: train images have shape {self.x_train.shape[1:]} but test "
                            f"images have shape {self.x_test.shape[1:]}; both splits must share "
                            f"(H, W, C)")

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, num_train={self.num_train}, "
                f"num_test={self.num_test}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes})")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        h, w, c = self.x_train.shape[1:]
        return (int(h), int(w), int(c))

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])

    def standardized(self) -> Dataset:
        """A copy with each channel shifted and scaled by the train-set mean and std.

        The same train statistics are applied to the test split. A channel that is constant on
        the train set is only centred (its std is taken as 1). Statistics are accumulated in
        float64; the result is float32.
        """
        mean, std = _channel_stats(self.x_train)
        mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
        return dataclasses.replace(
            self,
            x_train=(self.x_train - mean32) / std32,
            x_test=(self.x_test - mean32) / std32,
        )

    def subset(self, num_train: int | None = None, num_test: int | None = None) -> Dataset:
        """A copy keeping the first ``num_train`` train and ``num_test`` test samples.

        ``None`` keeps a whole split. Raises :class:`DataError` unless 1 <= n <= available.
        """
        n_train = self._check_count("num_train", num_train, self.num_train)
        n_test = self._check_count("num_test", num_test, self.num_test)
        return dataclasses.replace(
            self,
            x_train=self.x_train[:n_train], y_train=self.y_train[:n_train],
            x_test=self.x_test[:n_test], y_test=self.y_test[:n_test],
        )

    def _check_count(self, label: str, n: int | None, available: int) -> int:
        if n is None:
            return available
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise DataError(f"{label} must be an integer or None, got {n!r}")
        if not 1 <= n <= available:
            raise DataError(f"{label}={n} is out of range: dataset {self.name!r} has {available} "
                            f"samples in that split; pass a value in [1, {available}] or None "
                            f"for all of them")
        return int(n)


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"array of dtype {a.dtype} and shape {a.shape}"
    return type(a).__name__


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (population) of (N, H, W, C) data, in float64."""
    mean = x.mean(axis=(0, 1, 2), dtype=np.float64)
    sq = np.zeros(x.shape[-1], dtype=np.float64)
    for start in range(0, x.shape[0], _STATS_CHUNK):
        d = x[start:start + _STATS_CHUNK].astype(np.float64) - mean
        sq += np.einsum("nhwc,nhwc->c", d, d)
    std = np.sqrt(sq / (x.shape[0] * x.shape[1] * x.shape[2]))
    return mean, np.where(std > 0, std, 1.0)


def resolve_dir(data_dir: str | os.PathLike[str], dataset: str) -> Path:
    """``data_dir`` as a Path to an existing directory, or :class:`DataError`."""
    try:
        path = Path(os.fspath(data_dir)).expanduser()
    except TypeError:
        raise DataError(f"data_dir for {dataset!r} must be a path (str or os.PathLike), "
                        f"got {type(data_dir).__name__}") from None
    if not path.exists():
        raise DataError(f"data directory {str(path)!r} for {dataset!r} does not exist; pass "
                        f"--data-dir (data_dir=) pointing at the directory holding its files")
    if not path.is_dir():
        raise DataError(f"data_dir {str(path)!r} for {dataset!r} is not a directory; pass the "
                        f"directory holding the files, not a file")
    return path
