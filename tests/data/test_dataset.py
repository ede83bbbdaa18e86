"""Dataset validates its arrays, standardizes by train statistics, and takes prefixes."""

import dataclasses

import numpy as np
import pytest

from optjax.data import DataError, Dataset


def _make(n_train=6, n_test=4, shape=(2, 3, 3), num_classes=3, **changes):
    rng = np.random.default_rng(0)
    fields = dict(
        name="toy",
        x_train=rng.uniform(size=(n_train, *shape)).astype(np.float32),
        y_train=(np.arange(n_train) % num_classes).astype(np.int32),
        x_test=rng.uniform(size=(n_test, *shape)).astype(np.float32),
        y_test=(np.arange(n_test) % num_classes).astype(np.int32),
        num_classes=num_classes,
        class_names=tuple(f"c{i}" for i in range(num_classes)),
    )
    fields.update(changes)
    return Dataset(**fields)


def test_properties_and_repr():
    ds = _make()
    assert ds.input_shape == (2, 3, 3)
    assert (ds.num_train, ds.num_test) == (6, 4)
    assert repr(ds) == ("Dataset(name='toy', num_train=6, num_test=4, input_shape=(2, 3, 3), "
                        "num_classes=3)")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"


@pytest.mark.parametrize("changes,match", [
    (dict(x_train=np.zeros((6, 2, 3, 3), np.float64)), "x_train must be a float32 numpy array"),
    (dict(x_test=np.zeros((4, 2, 3), np.float32)), r"x_test must be .*shape \(N, H, W, C\)"),
    (dict(x_train=[[0.0]]), "x_train must be a float32 numpy array.*got list"),
    (dict(y_train=np.zeros(6, np.int64)), "y_train must be an int32 numpy array"),
    (dict(y_test=np.zeros((4, 1), np.int32)), r"y_test must be an int32 numpy array of shape"),
    (dict(y_train=np.zeros(5, np.int32)), "x_train has 6 samples but y_train has 5 labels"),
    (dict(x_test=np.zeros((0, 2, 3, 3), np.float32), y_test=np.zeros(0, np.int32)),
     "at least 1"),
    (dict(y_test=np.array([0, 1, 2, 3], np.int32)), r"labels in \[0, 3\].*\[0, 3\)"),
    (dict(y_train=np.array([0, -1, 0, 0, 0, 0], np.int32)), r"labels in \[-1, 0\]"),
    (dict(x_test=np.full((4, 2, 3, 3), np.nan, np.float32)), "x_test contains NaN or infinite"),
    (dict(x_test=np.zeros((4, 2, 3, 1), np.float32)), r"train images have shape \(2, 3, 3\)"),
    (dict(class_names=("a", "b")), "class_names must be a tuple of 3 strings"),
    (dict(class_names=["a", "b", "c"]), "class_names must be a tuple"),
    (dict(num_classes=True), "num_classes must be an integer >= 1"),
    (dict(name=""), "name must be a non-empty string"),
])
def test_invalid_fields_are_refused_with_a_message(changes, match):
    with pytest.raises(DataError, match=match):
        _make(**changes)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_standardized_uses_train_statistics_per_channel():
    rng = np.random.default_rng(1)
    scale = np.array([0.1, 2.0, 5.0])
    shift = np.array([-3.0, 0.5, 10.0])
    x_train = (rng.normal(size=(50, 4, 5, 3)) * scale + shift).astype(np.float32)
    x_test = (rng.normal(size=(20, 4, 5, 3)) * scale + shift + 1.0).astype(np.float32)
    ds = _make(n_train=50, n_test=20, shape=(4, 5, 3), x_train=x_train, x_test=x_test)
    st = ds.standardized()
    assert st.x_train.dtype == np.float32 and st.x_test.dtype == np.float32
    np.testing.assert_allclose(st.x_train.mean(axis=(0, 1, 2), dtype=np.float64), 0.0, atol=1e-5)
    np.testing.assert_allclose(st.x_train.std(axis=(0, 1, 2), dtype=np.float64), 1.0, rtol=1e-5)
    mean = x_train.astype(np.float64).mean(axis=(0, 1, 2))
    std = x_train.astype(np.float64).std(axis=(0, 1, 2))
    np.testing.assert_allclose(st.x_test, (x_test - mean) / std, rtol=1e-5, atol=1e-5)
    # Labels and metadata are carried over unchanged; the original is untouched.
    assert st.y_train is ds.y_train and st.class_names == ds.class_names and st.name == "toy"
    assert ds.x_train is x_train


def test_standardized_statistics_do_not_depend_on_chunking():
    # More samples than one chunk of the accumulation loop.
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(5000, 2, 2, 2)).astype(np.float32)
    ds = _make(n_train=5000, shape=(2, 2, 2), x_train=x)
    st = ds.standardized()
    np.testing.assert_allclose(st.x_train.std(axis=(0, 1, 2), dtype=np.float64), 1.0, rtol=1e-5)


def test_standardized_centres_a_constant_channel_without_dividing_by_zero():
    x_train = np.zeros((6, 2, 3, 3), np.float32)
    x_train[..., 0] = 0.25
    x_train[::2, ..., 1] = 1.0
    st = _make(x_train=x_train).standardized()
    assert np.all(st.x_train[..., 0] == 0.0) and np.all(st.x_train[..., 2] == 0.0)
    assert set(np.unique(st.x_train[..., 1])) == {-1.0, 1.0}


def test_subset_keeps_the_first_samples():
    ds = _make()
    sub = ds.subset(num_train=2, num_test=3)
    assert (sub.num_train, sub.num_test) == (2, 3)
    np.testing.assert_array_equal(sub.x_train, ds.x_train[:2])
    np.testing.assert_array_equal(sub.y_test, ds.y_test[:3])
    assert ds.subset(num_test=1).num_train == 6
    assert ds.subset().num_test == 4
    assert ds.subset(num_train=np.int64(6)).num_train == 6


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_train=7), r"num_train=7 is out of range.*6 samples.*\[1, 6\]"),
    (dict(num_test=0), r"num_test=0 is out of range"),
    (dict(num_test=-1), r"num_test=-1 is out of range"),
    (dict(num_train=2.0), "num_train must be an integer or None"),
    (dict(num_train=True), "num_train must be an integer or None"),
])
def test_subset_refuses_bad_counts(kwargs, match):
    with pytest.raises(DataError, match=match):
        _make().subset(**kwargs)
