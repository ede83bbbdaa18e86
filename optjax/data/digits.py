"""The scikit-learn 8x8 handwritten digits (1797 images shipped inside scikit-learn, no download).

Split into 1437 train / 360 test images by a fixed stratified split (20% test, seed 0), so the
split is the same on every machine and run.
"""

from __future__ import annotations

import numpy as np

from optjax.data.dataset import DataError, Dataset

CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits() -> Dataset:
    """The digits dataset: images (N, 8, 8, 1) float32 in [0, 1] (pixel / 16), labels 0-9.

    Needs scikit-learn; raises :class:`DataError` saying how to install it when it is missing.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise DataError(
            f"the 'digits' dataset needs scikit-learn, which could not be imported ({err}); "
            f"install it with `pip install scikit-learn` (or `pip install 'optjax[train]'`)"
        ) from err
    try:
        bunch = sk_load_digits()
    except OSError as err:
        raise DataError(f"scikit-learn could not read its bundled digits data ({err}); "
                        f"reinstall it with `pip install --force-reinstall scikit-learn`") from err
    images = np.asarray(bunch.images, dtype=np.float64)
    labels = np.asarray(bunch.target)
    x = (images / 16.0).astype(np.float32)[..., None]
    y = labels.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED)
    return Dataset(
        name="digits",
        x_train=np.ascontiguousarray(x_train), y_train=np.ascontiguousarray(y_train),
        x_test=np.ascontiguousarray(x_test), y_test=np.ascontiguousarray(y_test),
        num_classes=len(CLASS_NAMES), class_names=CLASS_NAMES,
    )
