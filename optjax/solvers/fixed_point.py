r"""Plain and relaxed fixed-point iteration (Krasnosel'skii-Mann).

.. math:: z_{k+1} = (1 - \alpha) z_k + \alpha S(z_k), \qquad 0 < \alpha \le 1.

With no prior and :math:`\alpha = 1` this is gradient descent with step 1 on :math:`G`:
:math:`G` decreases monotonically, linearly at rate :math:`s_\sigma\|W\|^2` when strongly
convex. Any :math:`\alpha \in (0, 1]` converges for a nonexpansive :math:`S`. One evaluation of
:math:`S` per step; it stops on :math:`\|z_k - S(z_k)\| \le` tol and returns :math:`z_k` with its
image.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from optjax.config import in_interval
from optjax.solvers._base import Solver, SolverRun, batch_loop, batch_norms, batched, freeze


@dataclasses.dataclass(frozen=True)
class FixedPoint(Solver):
    """Fixed-point iteration with relaxation ``alpha`` (1 = plain)."""

    relaxation: float = 1.0

    name: ClassVar[str] = "fixed_point"

    def _validate(self):
        in_interval("FixedPoint", "relaxation", self.relaxation, 0.0, 1.0)

    def solve_batch(self, fn, z0, data, *, tol, max_steps, anchor=None, value_and_map=None):
        apply = batched(fn, data)
        alpha = self.relaxation

        def step(carry, _, active, k):
            z, image = carry
            z_new = freeze(active, z + alpha * (image - z) if alpha != 1.0 else image, z)
            image_new = freeze(active, apply(z_new), image)
            return (z_new, image_new), batch_norms(z_new - image_new)

        image0 = apply(z0)
        (z, image), residual, steps = batch_loop(
            step, (z0, image0), batch_norms(z0 - image0), tol=tol, max_steps=max_steps
        )
        return SolverRun(point=z, image=image, steps=steps, evaluations=steps + 1,
                         residual=residual)
