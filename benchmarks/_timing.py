"""Timing shared by the benchmarks: medians of repeated runs after a warm-up (compilation)."""

import statistics
import time

import jax


def _once(fn, args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def timeit(fn, *args, reps: int) -> float:
    """Median wall time of ``fn(*args)`` over ``reps`` runs, after one untimed warm-up call."""
    jax.block_until_ready(fn(*args))
    return statistics.median(_once(fn, args) for _ in range(reps))


def paired_ratio(fn, args, reference, reference_args, *, reps: int) -> float:
    """Median over ``reps`` alternating runs of time(fn) / time(reference): on a shared machine
    whose load drifts, each ratio compares two runs made a moment apart."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(reference(*reference_args))
    return statistics.median(_once(fn, args) / _once(reference, reference_args)
                             for _ in range(reps))
