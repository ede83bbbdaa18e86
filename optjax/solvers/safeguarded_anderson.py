r"""Anderson acceleration safeguarded by the explicit objective: Anderson's steps, plain
iteration's monotone objective.

For an OptEq problem :math:`S(z) = \operatorname{prox}_R(z - \nabla G(z))` is a forward-backward
step with step 1 on :math:`F = G + R`, :math:`G` convex and 1-smooth, so it satisfies the descent
lemma (Beck & Teboulle 2009, lemma 2.3)

.. math:: F(S(y)) \le F(y) - \tfrac12 \|y - S(y)\|^2 .

Each step evaluates :math:`(F, S)` once (``value_and_map``, one :math:`T`) at a candidate
:math:`y`: the Anderson extrapolation (:mod:`optjax.solvers.anderson`) from the current
iterate :math:`x_k`, accepted as :math:`x_{k+1} = y` only under the sufficient-decrease test

.. math::

    F(y) \le F(x_k) - \tfrac{\delta}{2} \|x_k - S(x_k)\|^2 + \varepsilon_k,
    \qquad \varepsilon_k = 64\,\epsilon\,\big(|F(x_k)| + \|x_k\|^2\big),

that is, at least the fraction :math:`\delta` (``decrease``) of what the plain step is
guaranteed to achieve. :math:`\epsilon` is the machine epsilon of the state's dtype and
:math:`\varepsilon_k` bounds the rounding of the two computed values of :math:`F` that the test
compares. Why that size: :math:`F = \tfrac12\|z\|^2 - \sum_i \Phi_i` with every built-in
potential :math:`\Phi \ge 0`, so the terms summed have total size
:math:`\tfrac12\|z\|^2 + \sum_i \Phi_i \le |F| + \|z\|^2`; each potential is computed to at most
12 :math:`\epsilon` of its own value (tested against 50-digit arithmetic), and the sums and the
products with :math:`W` add a few :math:`\epsilon` more. Near convergence the decrease the test
asks for falls below that rounding level; a test without the slack (or with a slack smaller than
the rounding) then decides on the last bits, and a last-bit difference (another kernel for
another batch size or CPU) flips accept/reject and changes the step count. (A prior whose value
:math:`R(z)` is large against :math:`|F| + \|z\|^2` adds rounding this slack does not count:
decisions there may still depend on the last bits; convergence does not.) If the
candidate is rejected, the next evaluation is the plain step :math:`S(x_k)`, accepted
unconditionally by the descent lemma. Hence along the accepted iterates

.. math::

    F(x_{k+1}) \le F(x_k) - \tfrac{\delta}{2}\|x_k - S(x_k)\|^2
    \quad (\text{up to } \varepsilon_k),

:math:`\sum_k \|x_k - S(x_k)\|^2 < \infty` and the residual tends to 0 whatever Anderson does,
while the accepted steps are Anderson's. Every evaluated pair :math:`(y, S(y))`, rejected or not,
enters the Anderson history (it is a true evaluation of :math:`S`).

Cost: one evaluation per step, a rejected candidate included (``evaluations = steps + 1``). It
stops on :math:`\|x_k - S(x_k)\| \le` tol at an accepted iterate and returns :math:`x_k` with its
image. It needs the problem's objective (``value_and_map``) and refuses problems without one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, cast

import jax
import jax.numpy as jnp

from optjax.config import in_interval, require
from optjax.engine.properties import MapProperty
from optjax.solvers.base import (Solver, SolverRun, batch_loop, batch_norms, batched, flat,
                                  freeze)
from optjax.solvers.anderson import (coefficients, extrapolate, push, start_history,
                                     validate_anderson)


@dataclasses.dataclass(frozen=True)
class SafeguardedAnderson(Solver):
    """Anderson acceleration (``history``, relative ``ridge``, ``mixing``) whose steps are
    accepted only if the objective decreases by ``decrease`` times the plain step's guaranteed
    decrease; otherwise a plain step.

    ``monitor`` (debugging, slows the solve): a host function called after every step as
    ``monitor(step, active, accepted, point, value)`` with the batch's current (accepted)
    points and their objective values; ``None`` (default) costs nothing.
    """

    history: int = 5
    ridge: float = 1e-5
    mixing: float = 1.0
    decrease: float = 0.5
    monitor: Callable | None = None

    name: ClassVar[str] = "safeguarded_anderson"
    needs_objective: ClassVar[bool] = True
    requires: ClassVar[tuple[MapProperty, ...]] = (MapProperty.OBJECTIVE,)

    @classmethod
    def guarantee(cls, props: MapProperty) -> str | None:
        return "F never increases; the residual tends to 0 (squared residuals summable)"

    def _validate(self) -> None:
        validate_anderson("SafeguardedAnderson", self.history, self.ridge, self.mixing)
        in_interval("SafeguardedAnderson", "decrease", self.decrease, 0.0, 1.0)
        require(self.monitor is None or callable(self.monitor),
                f"SafeguardedAnderson.monitor must be callable or None, got {self.monitor!r}")

    def solve_batch(self, fn: Callable, z0: jax.Array, data: Any, *, tol: float, max_steps: int,
                    anchor: jax.Array | None = None,
                    value_and_map: Callable | None = None) -> SolverRun:
        self._require_objective(value_and_map)
        batch, shape, m = z0.shape[0], z0.shape[1:], self.history
        dtype = z0.dtype
        evaluate_batch = batched(cast(Callable, value_and_map), data)  # not None: checked above

        def evaluate(z: jax.Array) -> tuple[jax.Array, jax.Array]:
            value, image = evaluate_batch(z.reshape((batch,) + shape))
            return value.astype(dtype), flat(image)

        eps = jnp.finfo(dtype).eps

        def step(carry: tuple[Any, ...], residual: jax.Array, active: jax.Array,
                 k: jax.Array) -> tuple[tuple[Any, ...], jax.Array]:
            history, point, image, value, plain_next = carry
            alpha = coefficients(history, jnp.minimum(k + 1, m), k % m, self.ridge)
            extrapolated = extrapolate(history, alpha, self.mixing)
            candidate = jnp.where(plain_next[:, None], image, extrapolated)
            y = freeze(active, candidate, point)
            value_y, image_y = evaluate(y)
            g = image_y - y
            slack = 64 * eps * (jnp.abs(value) + jnp.sum(point * point, axis=1))
            bound = value - (0.5 * self.decrease) * residual * residual + slack
            # NaN values compare False: a non-finite candidate is rejected.
            accept = active & (plain_next | (value_y <= bound))
            history = push(history, image_y, g, (k + 1) % m)
            point = freeze(accept, y, point)
            image = freeze(accept, image_y, image)
            value = jnp.where(accept, value_y, value)
            new_residual = jnp.where(accept, batch_norms(g), residual)
            if self.monitor is not None:
                jax.debug.callback(self.monitor, k, active, accept, point.reshape(z0.shape), value)
            return (history, point, image, value, ~accept), new_residual

        x0 = flat(z0)
        value0, f0 = evaluate(x0)
        g0 = f0 - x0
        no = jnp.zeros((batch,), bool)
        carry = (start_history(f0, g0, m), x0, f0, value0, no)
        (_, point, image, _, _), residual, steps, recorded = batch_loop(
            step, carry, batch_norms(g0), tol=tol, max_steps=max_steps, trace=self.trace,
            value=lambda carry: carry[3])  # F at the accepted points
        return SolverRun(
            point=point.reshape(z0.shape), image=image.reshape(z0.shape), steps=steps,
            evaluations=steps + 1, residual=residual, trace=recorded,
        )
