"""Immutable result objects: per-sample status codes, forward and backward statistics."""

from __future__ import annotations

import dataclasses
import enum

import jax
import jax.numpy as jnp
import numpy as np

from optjax.certificate import Certificate

__all__ = ["Status", "SolveInfo", "BackwardStats", "EquilibriumError", "check"]


class Status(enum.IntEnum):
    """Per-sample outcome of a forward solve."""

    CONVERGED = 0  # residual <= tol
    MAX_STEPS = 1  # stopped at max_steps with residual > tol
    NONFINITE = 2  # NaN or Inf in the input, the iterate or the residual
    NONCONVEX = 3  # s_sigma * ||W||^2 > 1: no convex objective, no guarantee


class EquilibriumError(RuntimeError):
    """Raised by :func:`check` when some samples did not converge."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BackwardStats:
    """Per-sample statistics of the backward linear solve (I - J^T) v = g (floats, so that they
    can travel as the cotangent of a probe; see :func:`optjax.backward_probe`)."""

    steps: jax.Array
    residual: jax.Array
    converged: jax.Array

    @classmethod
    def zeros(cls, batch: int, dtype=jnp.float32) -> "BackwardStats":
        z = jnp.zeros((batch,), dtype)
        return cls(steps=z, residual=z, converged=z)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SolveInfo:
    """Per-sample statistics of a forward solve.

    Attributes:
      steps: solver iterations.
      evaluations: evaluations of the equilibrium map S (each costs one T).
      converged: residual <= tol, finite, and the problem convex.
      nonfinite: NaN or Inf met (input, iterate or residual).
      status: :class:`Status` codes.
      certificate: residual, objective and bounds at the returned point.
      tol, max_steps, solver: the settings used (static).
    """

    steps: jax.Array
    evaluations: jax.Array
    converged: jax.Array
    nonfinite: jax.Array
    status: jax.Array
    certificate: Certificate
    tol: float = dataclasses.field(metadata=dict(static=True))
    max_steps: int = dataclasses.field(metadata=dict(static=True))
    solver: str = dataclasses.field(metadata=dict(static=True))

    @property
    def residual(self) -> jax.Array:
        """||z - S(z)|| at the point before the returned one (an upper bound for the returned one)."""
        return self.certificate.residual

    @property
    def objective(self) -> jax.Array:
        """F = G + R at the returned point."""
        return self.certificate.objective

    def failures(self) -> list[str]:
        """One line per sample that did not converge (needs concrete values: call outside jit)."""
        return failure_lines(
            self.status, self.residual, self.steps, self.tol,
            nonconvex="the weights break convexity (s_sigma * ||W||^2 > 1); normalise W so that "
            "||W|| <= 1",
        )


def failure_lines(status, residual, steps, tol: float, *, nonconvex: str) -> list[str]:
    """Per-sample explanations of the non-converged :class:`Status` codes (concrete arrays);
    ``nonconvex`` is the model-specific reason for ``Status.NONCONVEX``."""
    status, residual, steps = np.asarray(status), np.asarray(residual), np.asarray(steps)
    lines = []
    for i in np.flatnonzero(status != Status.CONVERGED):
        code = Status(int(status[i]))
        if code == Status.MAX_STEPS:
            why = (
                f"not converged after {int(steps[i])} steps: residual {residual[i]:.3e} > "
                f"tol {tol:.1e}; raise max_steps, loosen tol, or use a faster solver"
            )
        elif code == Status.NONFINITE:
            why = "NaN or Inf in the input or the iterates; check the input and the weights"
        else:
            why = nonconvex
        lines.append(f"sample {int(i)}: {code.name}: {why}")
    return lines


def check(info: SolveInfo) -> SolveInfo:
    """Return ``info`` if every sample converged, else raise :class:`EquilibriumError` listing the
    failing samples and why. Eager only (call it on the result of a jitted function)."""
    lines = info.failures()
    if lines:
        head = f"{len(lines)} of {np.size(info.status)} samples did not reach an equilibrium"
        shown = lines[:20] + ([f"... and {len(lines) - 20} more"] if len(lines) > 20 else [])
        raise EquilibriumError(head + ":\n" + "\n".join(shown))
    return info
