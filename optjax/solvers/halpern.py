r"""Halpern's anchored iteration.

.. math:: z_{k+1} = \beta_k u + (1 - \beta_k) S(z_k), \qquad \beta_k = \frac{1}{k + 2}.

For a nonexpansive :math:`S` it converges to :math:`P_{\operatorname{Fix} S}(u)`, the
equilibrium nearest the anchor :math:`u`, even when the fixed points are not unique (for example
:math:`\|W\| = 1`), with :math:`\|z_k - S z_k\| \le 2\|z_0 - z^\star\| / (k + 1)`: slow, so use
it to choose an equilibrium, not for speed. The iteration starts at the anchor (or at the
caller's ``z0``); one evaluation of :math:`S` per step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

from optjax.engine.properties import MapProperty
from optjax.solvers.base import Solver, SolverRun, image_iteration


@dataclasses.dataclass(frozen=True)
class Halpern(Solver):
    """Anchored iteration; the anchor ``u`` is given per sample (default 0)."""

    name: ClassVar[str] = "halpern"
    uses_anchor: ClassVar[bool] = True
    requires: ClassVar[tuple[MapProperty, ...]] = (MapProperty.NONEXPANSIVE,
                                                   MapProperty.CONTRACTION)

    @classmethod
    def guarantee(cls, props: MapProperty) -> str | None:
        if MapProperty.NONEXPANSIVE in props:
            return "residual <= 2 ||x_0 - x*|| / (k + 1); the fixed point nearest the anchor"
        return "converges (a contraction, beta_k -> 0); O(1/k) at best"

    def solve_batch(self, fn: Callable, z0: jax.Array, data: Any, *, tol: float, max_steps: int,
                    anchor: jax.Array | None = None,
                    value_and_map: Callable | None = None) -> SolverRun:
        u = jnp.zeros_like(z0) if anchor is None else anchor.astype(z0.dtype)

        def update(z: jax.Array, image: jax.Array, k: jax.Array) -> jax.Array:
            beta = 1 / (k.astype(z.dtype) + 2)
            return image + beta * (u - image)

        return image_iteration(fn, z0, data, update, tol=tol, max_steps=max_steps,
                               trace=self.trace)
