"""CIFAR-10 loader on small pickle batches written in the official "python version" layout."""

import os
import pickle

import numpy as np
import pytest

from optjax.data import DataError, load
from optjax.data.cifar10 import CLASS_NAMES

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
PER_BATCH = 4


def write_batch(path, rows, labels, protocol=2):
    batch = {b"batch_label": b"testing", b"labels": list(map(int, labels)), b"data": rows,
             b"filenames": [b"f%d.png" % i for i in range(len(labels))]}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def write_cifar(root, nested=True, meta=True):
    """Six batches of PER_BATCH random images in root[/cifar-10-batches-py]; their rows, labels."""
    directory = root / "cifar-10-batches-py" if nested else root
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    for i, name in enumerate(BATCHES):
        rows = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=PER_BATCH)
        # Protocols 2 (like the official Python 2 files) and 5 (numpy's _frombuffer path).
        write_batch(directory / name, rows, labels, protocol=2 if i % 2 else 5)
        out[name] = (rows, labels)
    if meta:
        names = [b"class%d" % i for i in range(10)]
        (directory / "batches.meta").write_bytes(pickle.dumps(
            {b"num_cases_per_batch": PER_BATCH, b"label_names": names, b"num_vis": 3072},
            protocol=2))
    return directory, out


@pytest.mark.parametrize("nested", [True, False])
def test_round_trip_in_both_directory_forms(tmp_path, nested):
    directory, batches = write_cifar(tmp_path, nested=nested)
    ds = load("cifar10", data_dir=tmp_path)
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.x_train.shape == (5 * PER_BATCH, 32, 32, 3)
    assert ds.x_test.shape == (PER_BATCH, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_train.flags.c_contiguous
    rows = np.concatenate([batches[n][0] for n in BATCHES[:5]])
    labels = np.concatenate([batches[n][1] for n in BATCHES[:5]])
    expected = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255
    np.testing.assert_array_equal(ds.x_train, expected)
    np.testing.assert_array_equal(np.rint(ds.x_test * 255).transpose(0, 3, 1, 2).reshape(-1, 3072),
                                  batches["test_batch"][0])
    np.testing.assert_array_equal(ds.y_train, labels)
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][1])
    # Class names come from batches.meta.
    assert ds.class_names == tuple(f"class{i}" for i in range(10))
    # The nested folder itself is accepted too.
    if nested:
        np.testing.assert_array_equal(load("cifar10", data_dir=directory).x_test, ds.x_test)


def test_channel_layout_red_green_blue_planes(tmp_path):
    directory, _ = write_cifar(tmp_path, meta=False)
    # One image: red = its row index, green = its column index, blue = 200 everywhere.
    r = np.repeat(np.arange(32, dtype=np.uint8)[:, None], 32, axis=1)
    g = r.T.copy()
    b = np.full((32, 32), 200, np.uint8)
    row = np.concatenate([r.ravel(), g.ravel(), b.ravel()])  # 1024 R, then 1024 G, then 1024 B
    rows = np.stack([row] * PER_BATCH)
    write_batch(directory / "test_batch", rows, [3] * PER_BATCH)
    ds = load("cifar10", data_dir=directory)
    img = np.rint(ds.x_test[0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(img[..., 0], r)
    np.testing.assert_array_equal(img[..., 1], g)
    np.testing.assert_array_equal(img[..., 2], b)
    assert img[5, 7].tolist() == [5, 7, 200]  # pixel (row 5, column 7)
    assert ds.class_names == CLASS_NAMES  # no batches.meta: the standard names


def test_missing_batch_names_it_and_says_where_to_get_cifar(tmp_path):
    directory, _ = write_cifar(tmp_path)
    (directory / "data_batch_3").unlink()
    with pytest.raises(DataError) as info:
        load("cifar10", data_dir=tmp_path)
    msg = str(info.value)
    assert "missing data_batch_3" in msg and str(directory) in msg
    assert "cifar-10-python.tar.gz" in msg and "--data-dir" in msg


def test_empty_directory_lists_both_places_searched(tmp_path):
    with pytest.raises(DataError) as info:
        load("cifar10", data_dir=tmp_path)
    msg = str(info.value)
    assert "missing data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, " \
           "test_batch" in msg
    assert repr(str(tmp_path)) in msg and repr(str(tmp_path / "cifar-10-batches-py")) in msg


def test_cifar_needs_a_data_dir():
    with pytest.raises(DataError, match=r"'cifar10' needs --data-dir.*cifar-10-python.tar.gz"):
        load("cifar10")


def _pickled(obj):
    return pickle.dumps(obj, protocol=2)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


GOOD = np.zeros((PER_BATCH, 3072), np.uint8)


@pytest.mark.parametrize("content,match", [
    (b"not a pickle at all", r"cannot unpickle CIFAR-10 file .*corrupt or not a CIFAR-10"),
    (_pickled({b"data": GOOD, b"labels": [0] * PER_BATCH})[:-30], "cannot unpickle"),
    (_pickled([1, 2, 3]), "holds a list, not the dict"),
    (_pickled({b"labels": [0] * PER_BATCH}), "has no 'data' entry"),
    (_pickled({b"data": GOOD}), "has no 'labels' entry"),
    (_pickled({b"data": np.zeros((PER_BATCH, 3000), np.uint8), b"labels": [0] * PER_BATCH}),
     r"'data' is dtype uint8 and shape \(4, 3000\), expected a uint8 array of shape \(N, 3072\)"),
    (_pickled({b"data": GOOD.astype(np.float32), b"labels": [0] * PER_BATCH}),
     "'data' is dtype float32"),
    (_pickled({b"data": b"raw bytes", b"labels": [0] * PER_BATCH}), "'data' is bytes"),
    (_pickled({b"data": GOOD, b"labels": [0] * 3}), "has 4 images but 3 labels"),
    (_pickled({b"data": GOOD, b"labels": [0, 1, 2, 10]}), r"labels in \[0, 10\]"),
    (_pickled({b"data": GOOD, b"labels": ["a"] * PER_BATCH}), "'labels' must be a list of int"),
    (_pickled({b"data": GOOD, b"labels": _Evil()}), "refers to posix.system|refers to nt.system"),
])
def test_corrupt_batches_are_named_and_explained(tmp_path, content, match):
    directory, _ = write_cifar(tmp_path)
    (directory / "data_batch_2").write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        load("cifar10", data_dir=tmp_path)
    assert str(directory / "data_batch_2") in str(info.value)


def test_unpickler_refuses_code_execution(tmp_path, capfd):
    directory, _ = write_cifar(tmp_path)
    (directory / "test_batch").write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(DataError, match="refusing to unpickle it"):
        load("cifar10", data_dir=tmp_path)
    assert "should-never-run" not in capfd.readouterr().out


def test_str_keys_and_numpy_integer_labels_are_accepted(tmp_path):
    directory, batches = write_cifar(tmp_path)
    rows, labels = batches["test_batch"]
    assert isinstance(list(labels)[0], np.int64)  # pickled as numpy scalars
    (directory / "test_batch").write_bytes(pickle.dumps({"data": rows, "labels": list(labels)}))
    ds = load("cifar10", data_dir=tmp_path)
    np.testing.assert_array_equal(ds.y_test, labels)


def test_corrupt_meta_is_refused(tmp_path):
    directory, _ = write_cifar(tmp_path)
    (directory / "batches.meta").write_bytes(_pickled({b"label_names": [b"a", b"b"]}))
    with pytest.raises(DataError, match="'label_names' lists 10 names") as info:
        load("cifar10", data_dir=tmp_path)
    assert str(directory / "batches.meta") in str(info.value)
