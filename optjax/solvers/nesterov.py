r"""Accelerated forward-backward splitting (FISTA) with adaptive restart, on :math:`G + R`.

Every step is one evaluation of :math:`S = \operatorname{prox}_R \circ T`, a forward-backward
step with step size :math:`1 = 1/L` (:math:`G - R` is 1-smooth):

.. math::

    x_{k+1} = S(y_k), \qquad t_{k+1} = \tfrac{1 + \sqrt{1 + 4 t_k^2}}{2}, \qquad
    y_{k+1} = x_{k+1} + \tfrac{t_k - 1}{t_{k+1}} (x_{k+1} - x_k),

restarting (:math:`t = 1`, :math:`y = x_{k+1}`) when the gradient-mapping test
:math:`\langle y_k - S(y_k),\, x_{k+1} - x_k \rangle > 0` fires (O'Donoghue & Candes 2015), which
recovers the linear rate of the strongly convex case without knowing the modulus. It stops on
:math:`\|y_k - S(y_k)\| \le` tol, and :math:`S(y_k)` is then the output.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from optjax.solvers._base import Solver, SolverRun, keep_going, norm


@dataclasses.dataclass(frozen=True)
class Nesterov(Solver):
    """FISTA on the explicit objective; ``restart`` enables the adaptive restart."""

    restart: bool = True

    name: ClassVar[str] = "nesterov"

    def _validate(self):
        from optjax.config import require

        require(isinstance(self.restart, bool), f"Nesterov.restart must be a bool, got {self.restart!r}")

    def run(self, fn, z0, *, tol, max_steps, anchor=None) -> SolverRun:
        one = jnp.ones((), dtype=z0.dtype)

        def cond(state):
            _, y, image, _, k = state
            return keep_going(k, norm(y - image), tol, max_steps)

        def body(state):
            x, y, image, t, k = state
            x_new = image
            t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
            y_new = x_new + ((t - 1.0) / t_new) * (x_new - x)
            if self.restart:
                fire = jnp.vdot(y - image, x_new - x) > 0
                y_new = jnp.where(fire, x_new, y_new)
                t_new = jnp.where(fire, one, t_new)
            return x_new, y_new, fn(y_new), t_new, k + 1

        state = (z0, z0, fn(z0), one, jnp.asarray(0))
        _, y, image, _, k = jax.lax.while_loop(cond, body, state)
        return SolverRun(point=y, image=image, steps=k, evaluations=k + 1)
