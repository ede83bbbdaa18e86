r"""jaxopt's solvers, kept as references for optjax's own (through :mod:`optjax.solvers.jaxopt_adapter`,
which imports jaxopt only when one of them is asked for).

* ``"jaxopt_fixed_point"``: ``jaxopt.FixedPointIteration`` (plain iteration).
* ``"jaxopt_anderson"``: ``jaxopt.AndersonAcceleration``; its ``ridge`` is ABSOLUTE (added to
  the residual Gram matrix as it is), unlike :class:`optjax.solvers.Anderson`'s.

Both solve one sample inside ``jax.vmap`` (a vmapped while loop) and are slower per step than
optjax's batched loops; they are here to compare against, not for use.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

from optjax.solvers import jaxopt_adapter
from optjax.config import in_interval, positive_int, require
from optjax.engine.properties import MapProperty
from optjax.solvers.base import Solver, SolverRun
from optjax.solvers.fixed_point import FixedPoint


def _int32(count: Any) -> jax.Array:
    return jnp.asarray(count).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class JaxoptFixedPoint(Solver):
    """Plain iteration by ``jaxopt.FixedPointIteration``."""

    name: ClassVar[str] = "jaxopt_fixed_point"

    @classmethod
    def guarantee(cls, props: MapProperty) -> str | None:
        return FixedPoint.guarantee(props)  # the same iteration

    def _validate(self) -> None:
        jaxopt_adapter.load()  # asked for: jaxopt must import, or say what to install
        require(not self.trace, "jaxopt's solvers keep no history: trace=True needs one of "
                "optjax's own solvers")

    def run(self, fn: Callable[[jax.Array], jax.Array], z0: jax.Array, *, tol: float,
            max_steps: int, anchor: jax.Array | None = None,
            value_and_map: Callable | None = None) -> SolverRun:
        out = jaxopt_adapter.fixed_point_iteration(fn, z0, tol=tol, max_steps=max_steps)
        # jaxopt does not keep S(point): the caller evaluates it (one more evaluation).
        return SolverRun(point=out.point, image=None, steps=_int32(out.steps),
                         evaluations=_int32(out.evaluations))


@dataclasses.dataclass(frozen=True)
class JaxoptAnderson(Solver):
    """``jaxopt.AndersonAcceleration`` with ``history``, an absolute ``ridge`` and ``mixing``."""

    history: int = 5
    ridge: float = 1e-10
    mixing: float = 1.0

    name: ClassVar[str] = "jaxopt_anderson"

    def _validate(self) -> None:
        jaxopt_adapter.load()
        require(not self.trace, "jaxopt's solvers keep no history: trace=True needs one of "
                "optjax's own solvers")
        positive_int("JaxoptAnderson", "history", self.history, minimum=2)
        require(
            isinstance(self.ridge, (int, float)) and not isinstance(self.ridge, bool)
            and self.ridge >= 0,
            f"JaxoptAnderson.ridge must be a number >= 0, got {self.ridge!r}",
        )
        in_interval("JaxoptAnderson", "mixing", self.mixing, 0.0, 1.0)

    def run(self, fn: Callable[[jax.Array], jax.Array], z0: jax.Array, *, tol: float,
            max_steps: int, anchor: jax.Array | None = None,
            value_and_map: Callable | None = None) -> SolverRun:
        out = jaxopt_adapter.anderson(fn, z0, tol=tol, max_steps=max_steps, history=self.history,
                               ridge=self.ridge, mixing=self.mixing)
        return SolverRun(point=out.point, image=out.image, steps=_int32(out.steps),
                         evaluations=_int32(out.evaluations))
