"""``load`` dispatch: the dataset names, unknown names and bad data directories."""

import pathlib

import pytest

import optjax.data
from optjax.data import DATASETS, DataError, Dataset, load


def test_public_api():
    assert DATASETS == ("digits", "fashion-mnist", "mnist", "cifar10")
    assert {"load", "Dataset", "DataError", "DATASETS"} <= set(optjax.data.__all__)
    assert isinstance(load("digits"), Dataset)


@pytest.mark.parametrize("name", ["imagenet", "MNIST", "fashion_mnist", ""])
def test_unknown_name_lists_the_datasets(name):
    with pytest.raises(DataError, match=rf"unknown dataset {name!r}; choose one of: digits, "
                                        r"fashion-mnist, mnist, cifar10"):
        load(name)


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist", "cifar10"])
def test_nonexistent_data_dir(tmp_path, name):
    absent = tmp_path / "nowhere"
    with pytest.raises(DataError, match=rf"data directory '{absent}' for '{name}' does not exist"
                                        r".*--data-dir"):
        load(name, data_dir=absent)


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist", "cifar10"])
def test_data_dir_that_is_a_file(tmp_path, name):
    file = tmp_path / "file"
    file.write_bytes(b"")
    with pytest.raises(DataError, match="is not a directory"):
        load(name, data_dir=str(file))


def test_data_dir_expands_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match=rf"data directory '{tmp_path / 'x'}'"):
        load("mnist", data_dir=pathlib.Path("~/x"))


def test_data_dir_of_the_wrong_type():
    with pytest.raises(DataError, match="must be a path"):
        load("mnist", data_dir=3)
