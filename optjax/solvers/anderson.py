r"""Anderson acceleration (through jaxopt).

Keeps the last ``history`` iterates :math:`x_i` and residuals :math:`g_i = S(x_i) - x_i`,
solves the ridge-regularised least squares
:math:`\min_\alpha \|\sum_i \alpha_i g_i\|^2 + \text{ridge}\|\alpha\|^2,\ \sum_i \alpha_i = 1`,
and extrapolates :math:`x = \sum_i \alpha_i (x_i + \beta g_i)`. It ignores the convex structure;
it is here as the DEQ-standard reference.

jaxopt's ridge is absolute, while the Gram matrix :math:`g_i^\top g_j` shrinks with the
residual (to ~1e-10 at tol 1e-5): its default 1e-5 then swamps the Gram matrix and turns the
extrapolation into an average of old iterates, slower than plain iteration (see
benchmarks/RESULTS.md). The default here, 1e-10, costs no steps on the benchmark down to tol 1e-5
in float32 and keeps the bordered Gram system invertible when the residual history is
rank-deficient (a relu layer with few active units); 1e-30 made that case NaN.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from optjax import _jaxopt
from optjax.config import in_interval, positive_int, require
from optjax.solvers._base import Solver, SolverRun


@dataclasses.dataclass(frozen=True)
class Anderson(Solver):
    """Anderson acceleration with ``history`` past iterates, ``ridge`` and mixing ``beta``."""

    history: int = 5
    ridge: float = 1e-10
    mixing: float = 1.0

    name: ClassVar[str] = "anderson"

    def _validate(self):
        positive_int("Anderson", "history", self.history, minimum=2)
        require(
            isinstance(self.ridge, (int, float)) and self.ridge >= 0,
            f"Anderson.ridge must be a number >= 0, got {self.ridge!r}",
        )
        in_interval("Anderson", "mixing", self.mixing, 0.0, 1.0)

    def run(self, fn, z0, *, tol, max_steps, anchor=None) -> SolverRun:
        out = _jaxopt.anderson(
            fn,
            z0,
            tol=tol,
            max_steps=max_steps,
            history=self.history,
            ridge=self.ridge,
            mixing=self.mixing,
        )
        return SolverRun(point=out.point, image=out.image, steps=out.steps, evaluations=out.evaluations)
