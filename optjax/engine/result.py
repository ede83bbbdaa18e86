"""The one result type of every solve: per-sample status codes, statistics and certificate."""

from __future__ import annotations

import dataclasses
from typing import Any
import enum

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from optjax.engine.certificate import Certificate
from optjax.engine.problem import Defect

__all__ = ["Status", "SolveInfo", "BackwardStats", "EquilibriumError", "EquilibriumWarning",
           "check"]


class Status(enum.IntEnum):
    """Per-sample outcome of a forward solve (see :func:`status_codes` for the precedence).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
      >>> problem = optjax.OptEqProblem(W, "relu")
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
      >>> z, info = optjax.equilibrium(problem, x)
      >>> [optjax.Status(int(s)).name for s in info.status]
      ['CONVERGED', 'CONVERGED']
      >>> _, info = optjax.equilibrium(problem, x.at[1].set(jnp.nan))   # a NaN in sample 1
      >>> [optjax.Status(int(s)) for s in info.status]
      [<Status.CONVERGED: 0>, <Status.NONFINITE: 2>]
    """

    CONVERGED = 0  # residual <= tol, everything finite, and no defect in the problem
    MAX_STEPS = 1  # stopped at max_steps with residual > tol
    NONFINITE = 2  # NaN or Inf in the parameters, the input, the iterate or the residual
    NONCONVEX = 3  # the problem breaks the convexity its guarantees need (weights or prior)
    INFEASIBLE = 4  # a constraint set of the problem is empty


class EquilibriumError(RuntimeError):
    """Raised by :func:`check` when some samples did not converge.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
      >>> problem = optjax.OptEqProblem(W, "relu")
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
      >>> z, info = optjax.equilibrium(problem, x.at[1].set(jnp.nan))   # a NaN in sample 1
      >>> optjax.check(info)
      Traceback (most recent call last):
      ...
      optjax.engine.result.EquilibriumError: 1 of 2 samples did not reach an equilibrium:
      sample 1: NONFINITE: NaN or Inf in this sample's input or iterates; check the input ...
    """


class EquilibriumWarning(UserWarning):
    """A backward (gradient) solve stopped above its tolerance: the gradient is approximate.

    Examples:
      >>> import warnings
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
      >>> one_step = optjax.backward.FixedPointBackward(max_steps=1)   # far too few steps
      >>> loss = lambda W: jnp.sum(optjax.equilibrium(
      ...     optjax.OptEqProblem(W, "relu"), x, backward=one_step)[0] ** 2)
      >>> with warnings.catch_warnings(record=True) as caught:
      ...     warnings.simplefilter("always")
      ...     grad = jax.block_until_ready(jax.grad(loss)(W))
      >>> [w.category.__name__ for w in caught]
      ['EquilibriumWarning']
    """


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BackwardStats:
    """Per-sample statistics of the backward linear solve (I - J^T) v = g (floats, so that they
    can travel as the cotangent of a probe; see :func:`optjax.backward_probe`).

    ``converged`` is 1 only where the residual of the exact system is at most the backward
    tolerance: an approximate backward (phantom gradient) reports 0 unless it happens to be
    that accurate.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
      >>> def loss(W, probe):
      ...     z, _ = optjax.equilibrium(optjax.OptEqProblem(W, "relu"), x, backward_probe=probe)
      ...     return jnp.sum(z ** 2)
      >>> grad, stats = jax.grad(loss, argnums=(0, 1))(W, optjax.backward_probe(len(x)))
      >>> type(stats).__name__, stats.steps.shape     # per sample
      ('BackwardStats', (2,))
      >>> stats.converged                            # 1.0: the backward solve reached its tolerance
      Array([1., 1.], dtype=float32)
    """

    steps: jax.Array
    residual: jax.Array
    converged: jax.Array

    @classmethod
    def zeros(cls, batch: int, dtype: DTypeLike = jnp.float32) -> "BackwardStats":
        z = jnp.zeros((batch,), dtype)
        return cls(steps=z, residual=z, converged=z)


def status_codes(defects: ArrayLike, nonfinite: jax.Array, residual: jax.Array,
                 tol: ArrayLike) -> jax.Array:
    """Per-sample :class:`Status` from the problem's defect bits (shared), the samples'
    non-finite flags and residuals. The cause comes first: non-finite parameters (NONFINITE),
    an infeasible or nonconvex problem (INFEASIBLE, NONCONVEX; a sample's NaN is then a
    consequence), a non-finite sample (NONFINITE), then CONVERGED or MAX_STEPS."""
    d = jnp.asarray(defects, jnp.int32)
    bad_params = (d & int(Defect.NONFINITE_PARAMETERS)) != 0
    infeasible = (d & int(Defect.INFEASIBLE)) != 0
    nonconvex = (d & int(Defect.NONCONVEX_WEIGHTS | Defect.NONCONVEX_PRIOR)) != 0
    reached = residual <= jnp.asarray(tol, residual.dtype)
    return jnp.select(
        [bad_params, infeasible, nonconvex, nonfinite, reached],
        [Status.NONFINITE, Status.INFEASIBLE, Status.NONCONVEX, Status.NONFINITE,
         Status.CONVERGED],
        Status.MAX_STEPS,
    ).astype(jnp.int32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SolveInfo:
    """Per-sample statistics of a forward solve, for every problem type.

    Attributes:
      steps: solver iterations.
      evaluations: evaluations of the problem's map (each costs one T for OptEq).
      converged: ``status == CONVERGED``.
      nonfinite: NaN or Inf met (parameters, input, iterate or residual).
      status: :class:`Status` codes.
      certificate: residual, objective and bounds at the returned point
        (:class:`~optjax.Certificate`).
      defects: the problem's :class:`~optjax.Defect` bits (int32, shared).
      tol, max_steps, solver: the settings used (static).
      problem: the problem's kind (``"opteq"``, ``"deep_opteq"``, ``"deq"``, ``"mondeq"``).
      certified: whether the problem's assumptions were certified (``certify=True``).
      reasons: what each defect bit means for this problem, and what to change (static).
      trace: with ``equilibrium(..., trace=True)``, the per-sample history
        (:class:`optjax.solvers.Trace`: residual and objective after every step,
        ``(batch, max_steps + 1)``); None otherwise. The residual is the one the solver's
        stopping test uses (for a splitting, in its own variable).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
      >>> problem = optjax.OptEqProblem(W, "relu")
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
      >>> z, info = optjax.equilibrium(problem, x)
      >>> info.steps.shape, info.solver, info.problem         # per sample; the settings used
      ((2,), 'safeguarded_anderson', 'opteq')
      >>> bool(info.converged.all()), bool((info.residual <= info.tol).all())
      (True, True)
      >>> info.failures()                                     # one line per failing sample
      []
    """

    steps: jax.Array
    evaluations: jax.Array
    converged: jax.Array
    nonfinite: jax.Array
    status: jax.Array
    certificate: Certificate
    defects: jax.Array
    tol: float = dataclasses.field(metadata=dict(static=True))
    max_steps: int = dataclasses.field(metadata=dict(static=True))
    solver: str = dataclasses.field(metadata=dict(static=True))
    problem: str = dataclasses.field(default="opteq", metadata=dict(static=True))
    certified: bool = dataclasses.field(default=True, metadata=dict(static=True))
    reasons: tuple = dataclasses.field(default=(), metadata=dict(static=True))
    trace: Any = None

    @property
    def residual(self) -> jax.Array:
        """||z - S(z)|| at the point before the returned one."""
        return self.certificate.residual

    @property
    def objective(self) -> jax.Array:
        """The problem's objective at the returned point (NaN if it has none)."""
        return self.certificate.objective

    def failures(self) -> list[str]:
        """One line per sample that did not converge, with what to change (needs concrete
        values: call it outside jit, on the returned info)."""
        status, residual, steps = (np.asarray(self.status), np.asarray(self.residual),
                                   np.asarray(self.steps))
        defects = int(np.asarray(self.defects))
        reasons = dict(self.reasons)

        def why_defect(bits: int) -> str:
            found = [reasons.get(int(b), Defect(b).name) for b in Defect if defects & b & bits]
            return "; ".join(found)  # type: ignore[arg-type]  # a member's name is never None

        lines = []
        for i in np.flatnonzero(status != Status.CONVERGED):
            code = Status(int(status[i]))
            if code == Status.MAX_STEPS:
                why = (f"not converged after {int(steps[i])} steps: residual {residual[i]:.3e} > "
                       f"tol {self.tol:.1e}; raise max_steps, loosen tol, or use a faster solver")
            elif code == Status.NONFINITE:
                why = why_defect(Defect.NONFINITE_PARAMETERS) or (
                    "NaN or Inf in this sample's input or iterates; check the input (or the "
                    "weights, if the iteration diverged)")
            elif code == Status.INFEASIBLE:
                why = why_defect(Defect.INFEASIBLE)
            else:
                why = why_defect(Defect.NONCONVEX_WEIGHTS | Defect.NONCONVEX_PRIOR)
            lines.append(f"sample {int(i)}: {code.name}: {why}")
        return lines


def check(info: SolveInfo) -> SolveInfo:
    """Return ``info`` if every sample converged, else raise :class:`EquilibriumError` listing the
    failing samples and why. Eager only (call it on the result of a jitted function).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
      >>> problem = optjax.OptEqProblem(W, "relu")
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
      >>> z, info = optjax.equilibrium(problem, x)
      >>> optjax.check(info) is info           # every sample converged: info comes back
      True
      >>> _, info = optjax.equilibrium(problem, x.at[0].set(jnp.inf))
      >>> optjax.check(info)
      Traceback (most recent call last):
      ...
      optjax.engine.result.EquilibriumError: 1 of 2 samples did not reach an equilibrium:
      sample 0: NONFINITE: ...
    """
    lines = info.failures()
    if lines:
        head = f"{len(lines)} of {np.size(info.status)} samples did not reach an equilibrium"
        shown = lines[:20] + ([f"... and {len(lines) - 20} more"] if len(lines) > 20 else [])
        raise EquilibriumError(head + ":\n" + "\n".join(shown))
    return info
