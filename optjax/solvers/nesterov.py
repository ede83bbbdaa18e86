r"""Accelerated forward-backward splitting (FISTA) with adaptive restart, on :math:`G + R`.

Every step is one evaluation of :math:`S = \operatorname{prox}_R \circ T`, a forward-backward
step with step size :math:`1 = 1/L` (:math:`G` is 1-smooth):

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
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

from optjax.config import require
from optjax.engine.properties import MapProperty
from optjax.solvers.base import Solver, SolverRun, batch_loop, batched, flat, freeze


@dataclasses.dataclass(frozen=True)
class Nesterov(Solver):
    """FISTA on the explicit objective; ``restart`` enables the adaptive restart."""

    restart: bool = True

    name: ClassVar[str] = "nesterov"
    requires: ClassVar[tuple[MapProperty, ...]] = (MapProperty.FORWARD_BACKWARD,)

    @classmethod
    def guarantee(cls, props: MapProperty) -> str | None:
        return "F(x_k) - F* = O(1/k^2); linear with the restart when strongly convex"

    def _validate(self) -> None:
        require(isinstance(self.restart, bool),
                f"Nesterov.restart must be a bool, got {self.restart!r}")

    def solve_batch(self, fn: Callable, z0: jax.Array, data: Any, *, tol: float, max_steps: int,
                    anchor: jax.Array | None = None,
                    value_and_map: Callable | None = None) -> SolverRun:
        apply = batched(fn, data)
        batch = z0.shape[0]
        per_sample = lambda v: v.reshape((batch,) + (1,) * (z0.ndim - 1))  # noqa: E731

        def measure(y: jax.Array, image: jax.Array,
                    previous: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
            # Residual and restart test of the point just evaluated, in one pass over y - S(y):
            # the restart fires on <y_k - S(y_k), x_{k+1} - x_k> > 0 (x_{k+1} = S(y_k)).
            gap, direction = flat(y - image), flat(image - previous)
            fire = jnp.sum(gap * direction, axis=1) > 0
            return jnp.sqrt(jnp.sum(gap * gap, axis=1)), fire, image - previous

        # Carry: y_k, S(y_k), x_{k+1} - x_k, t_k and the restart test. A stopped sample keeps
        # its y and image; the rest of its carry runs on unused.
        def step(carry: tuple[jax.Array, ...], _: jax.Array, active: jax.Array,
                 k: jax.Array) -> tuple[tuple[jax.Array, ...], jax.Array]:
            y, image, direction, t, fire = carry
            t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
            momentum = (t - 1.0) / t_new
            if self.restart:
                momentum = jnp.where(fire, 0.0, momentum)
                t_new = jnp.where(fire, 1.0, t_new)
            y_new = freeze(active, image + per_sample(momentum) * direction, y)
            image_new = freeze(active, apply(y_new), image)
            residual, fire, direction = measure(y_new, image_new, image)
            return (y_new, image_new, direction, t_new, fire), residual

        image0 = apply(z0)
        residual0, fire0, direction0 = measure(z0, image0, z0)
        t0 = jnp.ones((batch,), z0.dtype)
        (y, image, _, _, _), residual, steps, recorded = batch_loop(
            step, (z0, image0, direction0, t0, fire0), residual0, tol=tol, max_steps=max_steps,
            trace=self.trace)
        return SolverRun(point=y, image=image, steps=steps, evaluations=steps + 1,
                         residual=residual, trace=recorded)
