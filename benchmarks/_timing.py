"""Timing shared by the benchmarks: medians of repeated runs after a warm-up (compilation)."""

import statistics
import time

import jax


def timeit(fn, *args, reps: int) -> float:
    """Median wall time of ``fn(*args)`` over ``reps`` runs, after one untimed warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
