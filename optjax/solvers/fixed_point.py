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
from typing import Any, Callable, ClassVar

import jax

from optjax.config import in_interval
from optjax.engine.properties import MapProperty
from optjax.solvers.base import Solver, SolverRun, image_iteration


@dataclasses.dataclass(frozen=True)
class FixedPoint(Solver):
    """Fixed-point iteration with relaxation ``alpha`` (1 = plain)."""

    relaxation: float = 1.0

    name: ClassVar[str] = "fixed_point"

    @classmethod
    def guarantee(cls, props: MapProperty) -> str | None:
        if MapProperty.CONTRACTION in props:
            return "linear: the error shrinks by the contraction factor q every step"
        if MapProperty.FORWARD_BACKWARD in props:
            return "residual o(1/sqrt(k)) (an averaged map); linear when strongly convex"
        return None

    def _validate(self) -> None:
        in_interval("FixedPoint", "relaxation", self.relaxation, 0.0, 1.0)

    def solve_batch(self, fn: Callable, z0: jax.Array, data: Any, *, tol: float, max_steps: int,
                    anchor: jax.Array | None = None,
                    value_and_map: Callable | None = None) -> SolverRun:
        alpha = self.relaxation

        def update(z: jax.Array, image: jax.Array, k: jax.Array) -> jax.Array:
            return z + alpha * (image - z) if alpha != 1.0 else image

        return image_iteration(fn, z0, data, update, tol=tol, max_steps=max_steps,
                               trace=self.trace)
