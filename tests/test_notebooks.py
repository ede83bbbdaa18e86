"""The notebooks run top to bottom and every assertion in them holds: each notebook checks the
mathematical claims it makes, so a broken claim fails here with the failing cell and its
traceback.

* Default suite: every notebook is stored without outputs.
* Slow (``--run-slow``; ``.ci/run`` runs both, ``make docs`` the full size): every notebook in
  its fast mode (``OPTJAX_FAST=1``: smaller problems, fewer steps), and at full size. When
  ``OPTJAX_NOTEBOOK_OUTPUT`` names a directory, each notebook that passed is written there with
  its outputs; the documentation renders those copies (docs/conf.py), so the docs show the run
  that checked the claims and nothing is executed twice.

Needs the ``notebooks`` extra (nbclient, nbformat, ipykernel, matplotlib), which ``make test``
installs; without it the import fails loudly rather than skipping.
The kernel is ipykernel's built-in ``python3`` spec, which jupyter_client starts with this
interpreter (``sys.executable``), so the notebooks see the same environment as the tests.
"""

import os
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
OUTPUT_ENV = "OPTJAX_NOTEBOOK_OUTPUT"


def execute(path, monkeypatch, *, fast, cell_timeout):
    """Run the notebook at ``path`` in a fresh kernel; return it with its outputs, or fail the
    test with the failing cell's source and traceback."""
    # The kernel is a child process: it inherits this environment.
    if fast:
        monkeypatch.setenv("OPTJAX_FAST", "1")
    else:
        monkeypatch.delenv("OPTJAX_FAST", raising=False)
    # Fast runs draw nothing; full-size runs keep their figures (ipykernel's inline backend) for
    # the executed copies that the docs render.
    backend = "Agg" if fast else "module://matplotlib_inline.backend_inline"
    monkeypatch.setenv("MPLBACKEND", backend)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=cell_timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        # The message holds the failing cell's source and traceback (without terminal colours).
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
        mode = "fast mode (OPTJAX_FAST=1)" if fast else "full size"
        pytest.fail(f"{path.name} failed at {mode}:\n{message}", pytrace=False)
    return nb


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


@pytest.mark.slow  # ~60 s of the default suite's budget; the full-size runs check the same cells
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, monkeypatch):
    execute(path, monkeypatch, fast=True, cell_timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_full_size(path, monkeypatch):
    output_dir = os.environ.get(OUTPUT_ENV)
    if output_dir:
        # A notebook that fails must not leave the copy of an earlier run behind.
        (Path(output_dir) / path.name).unlink(missing_ok=True)
    nb = execute(path, monkeypatch, fast=False, cell_timeout=1800)
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, Path(output_dir) / path.name)
