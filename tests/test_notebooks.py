"""The notebooks run top to bottom in their fast mode (OPTJAX_FAST=1), and every assertion in
them holds: each notebook checks the mathematical claims it makes, so a broken claim fails here
with the failing cell and its traceback.

Needs the ``notebooks`` extra (nbclient, nbformat, ipykernel, matplotlib), which ``make test``
installs; without it the import fails loudly rather than skipping.
The kernel is ipykernel's built-in ``python3`` spec, which jupyter_client starts with this
interpreter (``sys.executable``), so the notebooks see the same environment as the tests.
"""

import re
from pathlib import Path

import pytest

import ipykernel  # noqa: F401  (the kernel the notebooks run in)
import matplotlib  # noqa: F401
import nbclient
import nbclient.exceptions
import nbformat

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
EXPECTED_COUNT = 4


def test_all_notebooks_are_collected():
    # A deleted or renamed notebook must be noticed, not silently dropped from the suite.
    assert len(NOTEBOOKS) == EXPECTED_COUNT, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is None and not cell.outputs, (
                f"{path.name} is stored with outputs; clear them before committing"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, monkeypatch):
    # The kernel is a child process: it inherits this environment.
    monkeypatch.setenv("OPTJAX_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        # The message holds the failing cell's source and traceback (without terminal colours).
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
        pytest.fail(f"{path.name} failed:\n{message}", pytrace=False)
