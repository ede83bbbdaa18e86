"""Forward solvers, one per file; each is a frozen configuration with ``run`` (one sample) and
``solve_batch`` (the batch, one loop; stopping per sample).

Examples:
  >>> import jax, jax.numpy as jnp
  >>> import optjax
  >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
  >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
  >>> problem = optjax.OptEqProblem(W, "relu")
  >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
  >>> sorted(optjax.solvers.SOLVERS)
  ['anderson', 'fixed_point', 'halpern', 'jaxopt_anderson', 'jaxopt_fixed_point',
   'nesterov', 'safeguarded_anderson']
  >>> z, info = optjax.equilibrium(problem, x, solver="nesterov")
  >>> info.solver, bool(info.converged.all())
  ('nesterov', True)
  >>> optjax.solvers.get("anderson", history=3).history   # a configured instance
  3
"""

from typing import Any

from optjax.config import ConfigError
from optjax.solvers.base import Solver, SolverRun, Trace
from optjax.solvers.anderson import Anderson
from optjax.solvers.fixed_point import FixedPoint
from optjax.solvers.halpern import Halpern
from optjax.solvers.jaxopt_reference import JaxoptAnderson, JaxoptFixedPoint
from optjax.solvers.nesterov import Nesterov
from optjax.solvers.safeguarded_anderson import SafeguardedAnderson

SOLVERS = {
    cls.name: cls
    for cls in (FixedPoint, Anderson, SafeguardedAnderson, Halpern, Nesterov, JaxoptFixedPoint,
                JaxoptAnderson)
}


def get(solver: str | Solver, **options: Any) -> Solver:
    """A solver from its name (with options) or a :class:`Solver` given as it is."""
    if isinstance(solver, Solver):
        if options:
            return solver.replace(**options)
        return solver
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise ConfigError(
            f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)} "
            "or pass an optjax.solvers.Solver instance"
        )
    return SOLVERS[solver].from_dict(options)


__all__ = [
    "Solver", "SolverRun", "Trace", "FixedPoint", "Anderson", "SafeguardedAnderson", "Halpern", "Nesterov",
    "JaxoptFixedPoint", "JaxoptAnderson", "SOLVERS", "get",
]
