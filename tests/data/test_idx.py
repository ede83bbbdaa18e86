"""IDX reader and the mnist / fashion-mnist loaders, on small files written by the spec."""

import gzip
import struct

import numpy as np
import pytest

from optjax.data import DataError, load, read_idx
from optjax.data.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR

# dtype code of the IDX magic number -> big-endian numpy dtype (the IDX spec).
_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B,
          np.dtype("i4"): 0x0C, np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}
NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array):
    """Encode ``array`` as IDX: 0x00 0x00, dtype code, ndim, big-endian uint32 dims, data."""
    array = np.asarray(array)
    header = bytes([0, 0, _CODES[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, compress):
    data = idx_bytes(array)
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_split(rng, n, side=5):
    images = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the range
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    return images, labels


def write_dataset(directory, compress=True, n_train=12, n_test=7):
    rng = np.random.default_rng(0)
    arrays = (*make_split(rng, n_train), *make_split(rng, n_test))
    directory.mkdir(parents=True, exist_ok=True)
    paths = [write_idx(directory / name, a, compress) for name, a in zip(NAMES, arrays)]
    return arrays, paths


def test_read_idx_decodes_literal_bytes_big_endian(tmp_path):
    # Written by hand from the spec, independent of the writer helper above.
    u8 = b"\x00\x00\x08\x02" + b"\x00\x00\x00\x02" + b"\x00\x00\x00\x03" + bytes(range(6))
    (tmp_path / "u8").write_bytes(u8)
    np.testing.assert_array_equal(read_idx(tmp_path / "u8"), [[0, 1, 2], [3, 4, 5]])
    i16 = b"\x00\x00\x0b\x01" + b"\x00\x00\x00\x02" + b"\x01\x02\xff\xfe"
    (tmp_path / "i16.gz").write_bytes(gzip.compress(i16))
    out = read_idx(tmp_path / "i16.gz")
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, [258, -2])


def test_read_idx_unreadable_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path)


@pytest.mark.parametrize("dtype", list(_CODES))
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips_every_dtype(tmp_path, dtype, compress):
    array = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    if dtype.kind == "u":
        array = np.arange(24, dtype=dtype).reshape(2, 3, 4) * 10
    path = write_idx(tmp_path / "a-idx3", array, compress)
    out = read_idx(path)
    assert out.dtype == dtype and out.dtype.isnative and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("compress", [True, False])
def test_loaders_round_trip_pixels_and_labels(tmp_path, name, compress):
    (xtr, ytr, xte, yte), _ = write_dataset(tmp_path, compress=compress)
    ds = load(name, data_dir=tmp_path)
    assert ds.name == name and ds.num_classes == 10
    assert ds.x_train.shape == (12, 5, 5, 1) and ds.x_test.shape == (7, 5, 5, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_array_equal(ds.x_train[..., 0], xtr.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(ds.x_test[..., 0], xte.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(np.rint(ds.x_train[..., 0] * 255), xtr)
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    np.testing.assert_array_equal(ds.y_train, ytr)
    np.testing.assert_array_equal(ds.y_test, yte)
    expected_names = FASHION_MNIST_CLASSES if name == "fashion-mnist" else tuple("0123456789")
    assert ds.class_names == expected_names


def test_gzip_and_raw_files_may_be_mixed_and_gzip_wins(tmp_path):
    (xtr, _, _, _), paths = write_dataset(tmp_path, compress=True)
    # A raw copy of the train images with different pixels: the .gz file is the one read.
    write_idx(tmp_path / NAMES[0], 255 - xtr, compress=False)
    paths[3].unlink()
    write_idx(tmp_path / NAMES[3], np.zeros(7, np.uint8), compress=False)
    ds = load("mnist", data_dir=str(tmp_path))
    np.testing.assert_array_equal(np.rint(ds.x_train[..., 0] * 255), xtr)
    assert np.all(ds.y_test == 0)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_missing_files_are_named_with_the_directory(tmp_path, name):
    _, paths = write_dataset(tmp_path)
    paths[1].unlink()
    paths[2].unlink()
    with pytest.raises(DataError) as info:
        load(name, data_dir=tmp_path)
    msg = str(info.value)
    assert "missing train-labels-idx1-ubyte, t10k-images-idx3-ubyte" in msg
    assert str(tmp_path) in msg
    for expected in NAMES:
        assert expected in msg
    if name == "mnist":
        assert "cannot download MNIST" in msg and "--data-dir" in msg
    else:
        assert "apt-get update && apt-get install -y dataset-fashion-mnist" in msg


def test_mnist_needs_a_data_dir():
    with pytest.raises(DataError, match=r"'mnist' needs --data-dir.*train-images-idx3-ubyte"
                                        r".*cannot download MNIST"):
        load("mnist")


def test_fashion_mnist_default_directory_missing_says_how_to_install(monkeypatch, tmp_path):
    absent = tmp_path / "not-installed"
    monkeypatch.setattr("optjax.data.idx.FASHION_MNIST_DIR", absent)
    with pytest.raises(DataError) as info:
        load("fashion-mnist")
    msg = str(info.value)
    assert str(absent) in msg and "t10k-labels-idx1-ubyte" in msg and "--data-dir" in msg
    assert "apt-get update && apt-get install -y dataset-fashion-mnist" in msg


@pytest.mark.parametrize("index,make,match", [
    (0, lambda good: gzip.compress(b"\x01\x00\x08\x03" + good[4:]), "bad magic number 0x01000803"),
    (0, lambda good: gzip.compress(good[:2] + b"\x07" + good[3:]), "bad magic number 0x00000703"),
    (0, lambda good: gzip.compress(b"\x00\x00"), "too short for the 4-byte magic"),
    (0, lambda good: gzip.compress(good[:10]), "truncated inside its header"),
    (0, lambda good: gzip.compress(good[:-3]), r"is truncated: its header declares shape "
                                               r"\(12, 5, 5\) \(300 bytes.*holds 297 bytes"),
    (1, lambda good: gzip.compress(good + b"\x00"), "longer than its header says"),
    (2, lambda good: gzip.compress(good)[:-20], "corrupt or truncated gzip"),
    (2, lambda good: b"\x1f\x8b" + b"garbage" * 10, "corrupt or truncated gzip"),
    (3, lambda good: b"this is not gzip at all", "named .gz but is not gzip-compressed"),
])
def test_corrupt_files_are_named_and_explained(tmp_path, index, make, match):
    arrays, paths = write_dataset(tmp_path)
    paths[index].write_bytes(make(idx_bytes(arrays[index])))
    with pytest.raises(DataError, match=match) as info:
        load("mnist", data_dir=tmp_path)
    assert str(paths[index]) in str(info.value)


def test_image_label_count_mismatch(tmp_path):
    _, paths = write_dataset(tmp_path)
    write_idx(tmp_path / NAMES[1], np.zeros(11, np.uint8), compress=True)
    with pytest.raises(DataError, match=r"holds 12 images but .* holds 11 labels") as info:
        load("fashion-mnist", data_dir=tmp_path)
    assert str(paths[0]) in str(info.value) and str(paths[1]) in str(info.value)


def test_label_out_of_range(tmp_path):
    _, paths = write_dataset(tmp_path)
    write_idx(tmp_path / NAMES[3], np.full(7, 10, np.uint8), compress=True)
    with pytest.raises(DataError, match=r"has label 10, outside \[0, 10\)") as info:
        load("mnist", data_dir=tmp_path)
    assert str(paths[3]) in str(info.value)


@pytest.mark.parametrize("index,array,match", [
    (0, np.zeros((12, 25), np.uint8), r"images must be uint8 of shape \(N, H, W\)"),
    (0, np.zeros((12, 5, 5), np.int32), r"images must be uint8"),
    (1, np.zeros((12, 1), np.uint8), r"labels must be uint8 of shape \(N,\)"),
])
def test_wrong_array_kinds_are_refused(tmp_path, index, array, match):
    write_dataset(tmp_path)
    write_idx(tmp_path / NAMES[index], array, compress=True)
    with pytest.raises(DataError, match=match):
        load("mnist", data_dir=tmp_path)


def test_train_and_test_image_sizes_must_agree(tmp_path):
    write_dataset(tmp_path)
    write_idx(tmp_path / NAMES[2], np.zeros((7, 6, 6), np.uint8), compress=True)
    with pytest.raises(DataError, match="different datasets"):
        load("mnist", data_dir=tmp_path)


@pytest.mark.slow
def test_real_fashion_mnist_from_the_debian_package():
    if not FASHION_MNIST_DIR.is_dir():
        pytest.fail(f"{FASHION_MNIST_DIR} does not exist; install Fashion-MNIST with "
                    f"`apt-get update && apt-get install -y dataset-fashion-mnist`")
    ds = load("fashion-mnist")
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    # Fashion-MNIST is exactly balanced: 6000 train and 1000 test images per class.
    assert np.all(np.bincount(ds.y_train, minlength=10) == 6000)
    assert np.all(np.bincount(ds.y_test, minlength=10) == 1000)
    assert ds.class_names[9] == "Ankle boot" and ds.y_train[0] == 9
