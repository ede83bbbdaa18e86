"""Forward solvers, one per file; each is a frozen configuration with ``run`` (one sample) and
``solve_batch`` (the batch, one loop; stopping per sample)."""

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


def get(solver, **options) -> Solver:
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
