"""What every forward solver shares: its configuration base class and its result for one sample.

A solver runs on ONE sample (the caller vmaps it over the batch, so a batched while-loop
freezes each sample once it has converged: stopping is per sample). It iterates a nonexpansive
map ``fn`` and stops when ``||z - fn(z)|| <= tol`` or after ``max_steps`` steps, returning the
last point whose residual it measured together with that point's image, so the caller can
return ``fn(point)`` and certify it without another evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from optjax.config import Config


class SolverRun(NamedTuple):
    """One sample's solve: ``image = fn(point)`` and ``residual = ||point - image||``."""

    point: jax.Array
    image: jax.Array | None  # None: the caller evaluates fn(point)
    steps: jax.Array  # iterations taken
    evaluations: jax.Array  # evaluations of fn so far


@dataclasses.dataclass(frozen=True)
class Solver(Config):
    """Base class of forward solvers."""

    name: ClassVar[str] = "solver"
    uses_anchor: ClassVar[bool] = False

    def run(
        self,
        fn: Callable[[jax.Array], jax.Array],
        z0: jax.Array,
        *,
        tol: float,
        max_steps: int,
        anchor: jax.Array | None = None,
    ) -> SolverRun:  # pragma: no cover - abstract
        raise NotImplementedError


def norm(v: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(v * v))


def keep_going(step, residual, tol, max_steps):
    # A NaN residual compares False: a non-finite sample stops at once instead of running on.
    return (step < max_steps) & (residual > tol)
