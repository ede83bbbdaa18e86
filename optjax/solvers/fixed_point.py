r"""Plain and relaxed fixed-point iteration (through jaxopt).

.. math:: z_{k+1} = (1 - \alpha) z_k + \alpha S(z_k), \qquad 0 < \alpha \le 1.

With no prior and :math:`\alpha = 1` this is gradient descent with step 1 on :math:`G`:
:math:`G` decreases monotonically, linearly at rate :math:`s_\sigma\|W\|^2` when strongly
convex. Any :math:`\alpha \in (0, 1]` converges for a nonexpansive :math:`S` (Krasnosel'skii-Mann).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from optjax import _jaxopt
from optjax.config import in_interval
from optjax.solvers._base import Solver, SolverRun


@dataclasses.dataclass(frozen=True)
class FixedPoint(Solver):
    """Fixed-point iteration with relaxation ``alpha`` (1 = plain)."""

    relaxation: float = 1.0

    name: ClassVar[str] = "fixed_point"

    def _validate(self):
        in_interval("FixedPoint", "relaxation", self.relaxation, 0.0, 1.0)

    def run(self, fn, z0, *, tol, max_steps, anchor=None) -> SolverRun:
        a = self.relaxation
        relaxed = fn if a == 1.0 else (lambda z: (1 - a) * z + a * fn(z))
        # The relaxed map's residual is alpha times that of fn.
        out = _jaxopt.fixed_point_iteration(relaxed, z0, tol=a * tol, max_steps=max_steps)
        return SolverRun(point=out.iterate, image=None, steps=out.steps, evaluations=out.evaluations)
