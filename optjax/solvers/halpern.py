r"""Halpern's anchored iteration (OPTEQ.md section 6).

.. math:: z_{k+1} = \beta_k u + (1 - \beta_k) S(z_k), \qquad \beta_k = \frac{1}{k + 2}.

For a nonexpansive :math:`S` it converges to :math:`P_{\operatorname{Fix} S}(u)`, the
equilibrium nearest the anchor :math:`u`, even when the fixed points are not unique (for example
:math:`\|W\| = 1`), with :math:`\|z_k - S z_k\| \le 2\|z_0 - z^\star\| / (k + 1)`: slow, so use
it to choose an equilibrium, not for speed. The iteration starts at the anchor.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from optjax.solvers._base import Solver, SolverRun, keep_going, norm


@dataclasses.dataclass(frozen=True)
class Halpern(Solver):
    """Anchored iteration; the anchor ``u`` is given per sample (default 0)."""

    name: ClassVar[str] = "halpern"
    uses_anchor: ClassVar[bool] = True

    def run(self, fn, z0, *, tol, max_steps, anchor=None) -> SolverRun:
        u = jnp.zeros_like(z0) if anchor is None else anchor
        image0 = fn(z0)

        def cond(state):
            z, image, k = state
            return keep_going(k, norm(z - image), tol, max_steps)

        def body(state):
            z, image, k = state
            beta = 1.0 / (k + 2.0)
            z = beta * u + (1.0 - beta) * image
            return z, fn(z), k + 1

        z, image, k = jax.lax.while_loop(cond, body, (z0, image0, jnp.asarray(0)))
        return SolverRun(point=z, image=image, steps=k, evaluations=k + 1)
