"""Sphinx configuration of the optjax documentation (``make docs``; warnings are errors).

The notebooks are rendered from executed copies in ``docs/notebooks/``, which the full-size
notebook tests write (``tests/test_notebooks.py``, with ``OPTJAX_NOTEBOOK_OUTPUT`` set by
``make docs`` and ``.ci/run``): the docs show the outputs of the run that checked their claims,
and nothing is executed twice.
"""

from pathlib import Path

import nbformat
from sphinx.errors import ConfigError

import optjax

DOCS = Path(__file__).resolve().parent
NOTEBOOK_SOURCES = DOCS.parent / "notebooks"
EXECUTED = DOCS / "notebooks"


def _code_sources(path):
    nb = nbformat.read(path, as_version=4)
    return [cell.source for cell in nb.cells]


def _check_executed_notebooks():
    """Every notebook has an executed copy of its current version, and no other copy exists."""
    sources = {p.name: p for p in sorted(NOTEBOOK_SOURCES.glob("*.ipynb"))}
    copies = {p.name: p for p in sorted(EXECUTED.glob("*.ipynb"))} if EXECUTED.is_dir() else {}
    how = (
        "run `make docs`, which executes every notebook at full size (checking its assertions) "
        "and writes the executed copies to docs/notebooks/ before building"
    )
    problems = [f"{name}: no executed copy" for name in sources if name not in copies]
    problems += [f"{name}: executed copy of a notebook that no longer exists"
                 for name in copies if name not in sources]
    problems += [f"{name}: the notebook changed since its copy was executed"
                 for name in sources if name in copies
                 and _code_sources(copies[name]) != _code_sources(sources[name])]
    if problems:
        raise ConfigError(
            "docs/notebooks/ does not match notebooks/ (" + "; ".join(problems) + "): " + how
        )


_check_executed_notebooks()

project = "optjax"
author = "optjax developers"
copyright = "optjax developers"
release = version = optjax.__version__

extensions = [
    "myst_nb",  # Markdown pages (MyST) and the executed notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # Google/numpy docstring sections
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# Markdown: $...$ and $$...$$ maths, and section labels such as (maths-3)=.
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # rendered from the executed copies (see the module docstring)
nb_merge_streams = True

# API reference: one page per public module, generated from the code (so it follows the API).
autosummary_generate = True
autosummary_imported_members = True
autosummary_ignore_module_all = False  # a module's public names are its __all__
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # Attributes: sections as fields, not as second descriptions



def _api_pages():
    """The modules listed in api.md's autosummary, one generated page each."""
    block = (DOCS / "api.md").read_text().split(":toctree: generated", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def _reexports_documented_elsewhere(pages):
    """Per package page, the names it re-exports from a module with a page of its own: shown
    there without a second index entry (two aliases of one object are a duplicate to Sphinx).
    The top-level ``optjax`` page keeps its entries, so ``optjax.X`` links resolve."""
    import importlib

    out = {}
    for page in pages:
        if page == "optjax":
            continue
        module = importlib.import_module(page)
        out[page] = [name for name in getattr(module, "__all__", ())
                     if getattr(getattr(module, name), "__module__", page) in set(pages) - {page}]
    return out


autosummary_context = {"no_index": _reexports_documented_elsewhere(_api_pages())}

html_theme = "furo"
html_title = f"optjax {release}"
