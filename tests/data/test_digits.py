"""The digits dataset: fixed stratified split, shapes, dtypes, ranges, standardization."""

import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits

from optjax.data import DataError, load
from optjax.data.digits import load_digits


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def test_shapes_dtypes_and_ranges(digits):
    assert digits.name == "digits"
    assert digits.x_train.shape == (1437, 8, 8, 1) and digits.x_test.shape == (360, 8, 8, 1)
    assert digits.y_train.shape == (1437,) and digits.y_test.shape == (360,)
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int32
    assert digits.input_shape == (8, 8, 1)
    assert digits.num_classes == 10 and digits.class_names == tuple("0123456789")
    for x in (digits.x_train, digits.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    for y in (digits.y_train, digits.y_test):
        assert set(np.unique(y)) == set(range(10))


def test_split_is_a_partition_of_the_sklearn_images_over_16(digits):
    sk = sk_load_digits()

    def rows(images, labels):
        # k/16 is exact in float32, so the float64 bytes match exactly.
        flat = np.asarray(images, np.float64).reshape(len(labels), -1)
        return sorted(img.tobytes() + bytes([int(lab)]) for img, lab in zip(flat, labels))

    ours = rows(np.concatenate([digits.x_train, digits.x_test]),
                np.concatenate([digits.y_train, digits.y_test]))
    assert ours == rows(sk.images / 16.0, sk.target)


def test_split_is_stratified(digits):
    total = np.bincount(np.concatenate([digits.y_train, digits.y_test]), minlength=10)
    test = np.bincount(digits.y_test, minlength=10)
    assert np.all(np.abs(test - 0.2 * total) <= 1.0), (test, total)


def test_split_is_deterministic(digits):
    again = load_digits()
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, field), getattr(digits, field))


def test_data_dir_is_ignored(digits, tmp_path):
    np.testing.assert_array_equal(load("digits", data_dir=tmp_path / "absent").y_test,
                                  digits.y_test)


def test_standardized_has_zero_mean_unit_std_on_train(digits):
    st = digits.standardized()
    assert st.x_train.dtype == np.float32 and st.input_shape == (8, 8, 1)
    np.testing.assert_allclose(st.x_train.mean(axis=(0, 1, 2), dtype=np.float64), 0.0, atol=1e-6)
    np.testing.assert_allclose(st.x_train.std(axis=(0, 1, 2), dtype=np.float64), 1.0, rtol=1e-5)
    # The test split uses the train statistics, so it is close to but not exactly standard.
    assert abs(float(st.x_test.mean())) < 0.1


def test_missing_scikit_learn_says_how_to_install(monkeypatch):
    # A None entry in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match=r"needs scikit-learn.*pip install scikit-learn"):
        load("digits")
