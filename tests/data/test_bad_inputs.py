"""Bad data (tests/_cases.py): each must be refused with a message that says what is wrong AND
what to do. Unknown data sets, missing, truncated or foreign IDX files, CIFAR-10 pickles that
run code or are damaged, empty subsets, images with NaN or without pixels, labels outside the
classes, an evaluation of zero samples.
"""

import os
import pickle

import numpy as np
import pytest

from optjax.data import DataError, Dataset, load, read_idx
from tests._cases import Case, assert_says, params

# --- the data ------------------------------------------------------------------------------------
# ``input``: a function of a fresh directory that feeds the bad data to optjax.


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _dataset(**changes):
    x = np.zeros((4, 2, 2, 1), np.float32)
    y = np.arange(4, dtype=np.int32) % 2
    fields = dict(name="toy", x_train=x, y_train=y, x_test=x, y_test=y, num_classes=2,
                  class_names=("a", "b"))
    return Dataset(**{**fields, **changes})


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def _empty_evaluation(tmp):
    from optjax.train.evaluate import evaluate_split
    evaluate_split(None, None, np.zeros((0, 2, 2, 1), np.float32), np.zeros(0, np.int32), 8,
                   mesh=type("Mesh", (), {"devices": np.empty(1)}))


DATA: list[Case] = [
    Case("unknown dataset", lambda tmp: load("imagenet"),
         ("unknown dataset 'imagenet'", "choose one of: digits, fashion-mnist, mnist, cifar10")),
    Case("data directory that is a file", lambda tmp: load("mnist", _write(tmp / "f", b"")),
         ("is not a directory", "pass the directory holding the files")),
    Case("missing IDX files", lambda tmp: load("fashion-mnist", tmp),
         ("missing train-images-idx3-ubyte", "apt-get install -y dataset-fashion-mnist")),
    Case("truncated IDX file", lambda tmp: read_idx(_write(
        tmp / "x", b"\x00\x00\x08\x01\x00\x00\x00\x09" + bytes(4))),
         ("is truncated", "declares shape (9,)", "download or install it again")),
    Case("not an IDX file", lambda tmp: read_idx(_write(tmp / "x", b"GIF89a..")),
         ("bad magic number", "download or install it again")),
    Case("a .gz that is not gzip", lambda tmp: read_idx(_write(tmp / "x.gz", b"\x00\x00")),
         ("is named .gz but is not gzip-compressed", "download or install it again")),
    Case("a CIFAR-10 pickle that runs code", lambda tmp: load("cifar10", _cifar_with(
        tmp, pickle.dumps(_Evil()))),
         ("refusing to unpickle it", "cs.toronto.edu")),
    Case("a damaged CIFAR-10 pickle", lambda tmp: load("cifar10", _cifar_with(tmp, b"\x80\x04")),
         ("cannot unpickle CIFAR-10 file", "extract it with")),
    Case("an empty subset", lambda tmp: _dataset().subset(0),
         ("num_train=0 is out of range", "pass a value in [1, 4] or None")),
    Case("images with NaN", lambda tmp: _dataset(x_test=np.full((4, 2, 2, 1), np.nan,
                                                                np.float32)),
         ("x_test contains NaN or infinite values", "corrupt")),
    Case("images without pixels", lambda tmp: _dataset(x_train=np.zeros((4, 0, 0, 1),
                                                                        np.float32)),
         ("holds images of shape (0, 0, 1)", "at least one row, column and channel")),
    Case("labels outside the classes", lambda tmp: _dataset(y_train=np.full(4, 5, np.int32)),
         ("labels in [5, 5]", "check num_classes")),
    Case("an evaluation of zero samples", _empty_evaluation,
         ("nothing to evaluate: 0 samples", "pass at least one sample")),
]


def _cifar_with(tmp, first_batch: bytes):
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch"):
        (tmp / name).write_bytes(first_batch)
    return tmp


@pytest.mark.parametrize("case", params(DATA))
def test_the_data(case, tmp_path):
    with pytest.raises((DataError, ValueError)) as error:
        case.input(tmp_path)
    assert_says(str(error.value), case)
