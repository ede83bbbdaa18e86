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


def _block(fn, args, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        out = fn(*args)
    jax.block_until_ready(out)
    return time.perf_counter() - t0


def paired_ratio(fn, args, reference, reference_args, *, reps: int,
                 block_seconds: float = 0.2) -> float:
    """Median over ``reps`` alternating runs of time(fn) / time(reference): on a shared machine
    whose load drifts, each ratio compares two runs made a moment apart. Each run is a block of
    back-to-back calls lasting about ``block_seconds`` (one call of a few milliseconds is
    dominated by timer and scheduling noise: single-call ratios of the same pair varied by
    0.3 between runs, blocks of calls by up to 0.06)."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(reference(*reference_args))
    calls = max(1, round(block_seconds / max(_once(reference, reference_args), 1e-6)))
    return statistics.median(_block(fn, args, calls) / _block(reference, reference_args, calls)
                             for _ in range(reps))
