"""Test-wide settings: the maths is checked in float64 unless a test says otherwise."""

import jax
from threadpoolctl import threadpool_limits

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
