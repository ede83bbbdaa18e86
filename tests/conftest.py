"""Test-wide settings: the maths is checked in float64 unless a test says otherwise."""

import os

# The suite compiles thousands of small programs and runs each a few times, so XLA's compile
# time dominates it (cProfile of tests/engine/test_contract.py: 68 of 113 s in XLA's
# backend_compile). Three flags of the CPU backend cut that time; none changes the maths:
# - LLVM's optimisation level 0 (tests/engine/test_equilibrium*.py + test_implicit.py, one
#   file each: 199 -> 144 s, Xeon);
# - LLVM without its expensive passes (test_contract.py alone, one process: 112 -> 91 s, AMD
#   EPYC, with the first flag);
# - XLA's classic loop emitters instead of the newer MLIR fusion emitters (the same: 91 -> 53 s
#   with both flags above). The default suite on 2 cores: 1001 s with the first flag only,
#   475 s with all three (EPYC, 1144 tests, one run after the other).
# XLA's own (HLO) optimisations, which decide the fusions, still run, and no flag enables
# fast-math: the whole suite passes with the same tolerances either way. The production code
# path (default emitters, full LLVM) is tested by .ci/run's AVX part, which sets
# OPTJAX_TEST_XLA_DEFAULTS=1. Set before jax starts its backend; child processes (CLI,
# benchmarks) inherit it.
_FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                 "--xla_cpu_use_fusion_emitters=false")
if os.environ.get("OPTJAX_TEST_XLA_DEFAULTS") != "1":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()

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
