# Two entry points, each setting itself up in .venv: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run demo test test-slow bench bench-fashion clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,train,notebooks]'
	touch $(STAMP)

# The main job: train the default OptEq model on digits (see `optjax train --help`).
run: $(STAMP)
	$(PY) -m optjax train --out-dir runs/digits --overwrite

demo: $(STAMP)
	$(PY) -m optjax.demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=10

test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 --run-slow

bench: $(STAMP)
	$(PY) benchmarks/unit_layer.py

bench-fashion: $(STAMP)
	$(PY) benchmarks/fashion_mnist.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis runs
