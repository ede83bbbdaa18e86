"""Test-wide settings: the maths is checked in float64 unless a test says otherwise."""

import os

# The suite compiles thousands of small programs and runs each a few times, so XLA's compile
# time dominates it: LLVM's optimisation level 0 for the CPU backend cut the time of
# tests/engine/test_equilibrium*.py + test_implicit.py (then one file each) from 199 s to 144 s (same machine, one
# after the other). XLA's own (HLO) optimisations, which decide the fusions, still run, and
# LLVM does not reorder floating-point operations without fast-math; the whole suite passes
# with the same tolerances either way. Set before jax starts its backend; child processes
# (CLI, benchmarks) inherit it.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

jax.config.update("jax_enable_x64", True)
# One BLAS thread: the suite runs on 2 cores with 2 workers, where OpenBLAS's own threads made a
# 256 x 256 eigvalsh take 800 ms instead of 4 (see optjax/_lapack.py).
_BLAS_LIMIT = threadpool_limits(limits=1, user_api="blas")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    # Deselected rather than skipped: they are not run by default, by design.
    slow = [item for item in items if "slow" in item.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]
