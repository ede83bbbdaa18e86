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
from typing import ClassVar

import jax.numpy as jnp

from optjax.solvers._base import Solver, SolverRun, batch_loop, batch_norms, batched, freeze


@dataclasses.dataclass(frozen=True)
class Halpern(Solver):
    """Anchored iteration; the anchor ``u`` is given per sample (default 0)."""

    name: ClassVar[str] = "halpern"
    uses_anchor: ClassVar[bool] = True

    def solve_batch(self, fn, z0, data, *, tol, max_steps, anchor=None, value_and_map=None):
        apply = batched(fn, data)
        u = jnp.zeros_like(z0) if anchor is None else anchor.astype(z0.dtype)

        def step(carry, _, active, k):
            z, image = carry
            beta = 1 / (k.astype(z.dtype) + 2)
            z_new = freeze(active, image + beta * (u - image), z)
            image_new = freeze(active, apply(z_new), image)
            return (z_new, image_new), batch_norms(z_new - image_new)

        image0 = apply(z0)
        (z, image), residual, steps = batch_loop(
            step, (z0, image0), batch_norms(z0 - image0), tol=tol, max_steps=max_steps
        )
        return SolverRun(point=z, image=image, steps=steps, evaluations=steps + 1,
                         residual=residual)
