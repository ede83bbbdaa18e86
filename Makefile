# Two entry points, each setting itself up in .venv: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DOCS_STAMP := $(VENV)/.installed-docs-stamp
# Where the full-size notebook tests write the executed copies that the docs render.
EXECUTED_NOTEBOOKS := $(CURDIR)/docs/notebooks
PYTEST_ARGS ?=

.PHONY: run demo test test-slow test-claims typecheck notebooks docs docs-html ci bench bench-fashion clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,train,notebooks]'
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

# The main job: train the default OptEq model on digits (see `optjax train --help`).
run: $(STAMP)
	$(PY) -m optjax train --out-dir runs/digits --overwrite

demo: $(STAMP)
	$(PY) -m optjax.demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=10

# The type check of the package: mypy with the settings of pyproject.toml ([tool.mypy]).
typecheck: $(STAMP)
	$(PY) -m mypy

# The whole suite with the slow checks.
test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 --run-slow

# Only the slow checks (what `make test` leaves out): the main job's accuracy, the real
# Fashion-MNIST files, every notebook at full size (writing the executed copies for the docs).
test-claims: $(STAMP)
	OPTJAX_NOTEBOOK_OUTPUT=$(EXECUTED_NOTEBOOKS) \
	$(PY) -m pytest -q -n 2 --run-slow -m slow --durations=0 $(PYTEST_ARGS)

# Every notebook at full size; each one that passes is written, executed, to docs/notebooks/.
notebooks: $(STAMP)
	OPTJAX_NOTEBOOK_OUTPUT=$(EXECUTED_NOTEBOOKS) \
	$(PY) -m pytest -q -n 2 --run-slow tests/test_notebooks.py -k full_size

# The documentation in docs/_build/html: the notebooks are run first (at full size, their
# assertions checked), then Sphinx renders them with the maths and the API, warnings as errors.
docs: $(DOCS_STAMP)
	$(MAKE) notebooks
	$(MAKE) docs-html

# Sphinx alone, from the executed copies already in docs/notebooks/ (`make docs` writes them).
docs-html: $(DOCS_STAMP)
	rm -rf docs/generated  # stubs of modules no longer listed would fail the build
	$(PY) -m sphinx -E -W --keep-going -q -b html docs docs/_build/html
	@echo "documentation: docs/_build/html/index.html"

# What CI runs (.ci/run): `make test`, the type check, then the slow checks and the docs,
# each timed.
ci:
	bash .ci/run

bench: $(STAMP)
	$(PY) benchmarks/unit_layer.py

bench-fashion: $(STAMP)
	$(PY) benchmarks/fashion_mnist.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache runs docs/_build docs/generated docs/notebooks
