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

**The test without F** (``decrease_test="gradient"``). Where :math:`S(y) = y - \nabla F(y)`
with :math:`F` convex and 1-smooth (``MapProperty.GRADIENT_STEP``: an OptEq problem without a
prior), write :math:`g(z) = S(z) - z = -\nabla F(z)`. Co-coercivity of the gradient gives, for
any :math:`x, y` (Nesterov, *Introductory Lectures on Convex Optimization*, theorem 2.1.5)

.. math::

    F(y) \le F(x) - \langle g(y), y - x\rangle - \tfrac12 \|g(y) - g(x)\|^2 ,

so the decrease test holds whenever
:math:`-\langle g(y), y - x_k\rangle - \tfrac12\|g(y) - g(x_k)\|^2 \le
-\tfrac{\delta}{2}\|g(x_k)\|^2 + \varepsilon_k`: the same sufficient decrease, hence the same
guarantee, decided from the evaluated pairs alone. Each step then evaluates S alone (one
:math:`T`, no potential :math:`\Phi`), and the compared terms are of the size of the residuals,
not of :math:`|F|`: near tol their rounding is :math:`\epsilon\,\|z\|\,\|g\|` where the
values of F differ in their last bits. The bound is conservative by the Bregman gap of F, so it
may reject a candidate the objective test accepts. Here
:math:`\varepsilon_k = 256\,\epsilon\,(\|y\| + \|y - x_k\| + \|g(x_k)\|)
(3\|y - x_k\| + \|g(y)\|)`: a few :math:`\epsilon` of each computed residual component times
the vectors it multiplies, with :math:`\|x_k\| + \|S(x_k)\| + \|y\| + \|S(y)\|` and
:math:`\|g(y) - g(x_k)\|` bounded through :math:`S`'s nonexpansiveness (a gradient step on a
convex 1-smooth F is nonexpansive). :math:`\|g(y)\|^2` and :math:`\langle g(y), g(x_k)\rangle`
are entries of the Anderson Gram matrix, updated with :math:`g(y)` anyway, so the test adds one
pass over :math:`y`, :math:`S(y)` and :math:`x_k` to Anderson's step.
``decrease_test="auto"`` (default) is resolved by the engine from the problem's map properties
(:meth:`SafeguardedAnderson.specialise`): the gradient test where the map is a gradient step,
the objective test otherwise (and when the solver is called directly).

Cost: one evaluation per step, a rejected candidate included (``evaluations = steps + 1``). It
stops on :math:`\|x_k - S(x_k)\| \le` tol at an accepted iterate and returns :math:`x_k` with its
image. The objective test needs the problem's objective (``value_and_map``) and refuses problems
without one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, cast

import jax
import jax.numpy as jnp

from optjax.config import ConfigError, in_interval, require
from optjax.engine.properties import MapProperty
from optjax.solvers.base import (Solver, SolverRun, batch_loop, batch_norms, batched, flat,
                                  freeze)
from optjax.solvers.anderson import (coefficients, extrapolate, push, start_history,
                                     validate_anderson)


TESTS = ("auto", "objective", "gradient")


@dataclasses.dataclass(frozen=True)
class SafeguardedAnderson(Solver):
    """Anderson acceleration (``history``, relative ``ridge``, ``mixing``) whose steps are
    accepted only if the objective decreases by ``decrease`` times the plain step's guaranteed
    decrease; otherwise a plain step.

    ``decrease_test``: ``"objective"`` compares values of F (``value_and_map``);
    ``"gradient"`` bounds the decrease from the residuals alone and evaluates S only (valid
    where S is a gradient step on a convex 1-smooth F, ``MapProperty.GRADIENT_STEP``);
    ``"auto"`` (default): the engine picks ``"gradient"`` where the map supplies that property,
    else ``"objective"`` (``"objective"`` too when the solver is called directly).

    ``monitor`` (debugging, slows the solve): a host function called after every step as
    ``monitor(step, active, accepted, point, value)`` with the batch's current (accepted)
    points and their objective values; ``None`` (default) costs nothing. Under the gradient
    test F is evaluated only to be recorded (``trace`` or ``monitor``), where the problem has it.
    """

    history: int = 5
    ridge: float = 1e-5
    mixing: float = 1.0
    decrease: float = 0.5
    decrease_test: str = "auto"
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
        require(self.decrease_test in TESTS,
                f"SafeguardedAnderson.decrease_test must be one of {', '.join(TESTS)}; got "
                f"{self.decrease_test!r}")
        require(self.monitor is None or callable(self.monitor),
                f"SafeguardedAnderson.monitor must be callable or None, got {self.monitor!r}")

    def specialise(self, props: MapProperty) -> "SafeguardedAnderson":
        """Resolve ``decrease_test="auto"`` for a map with properties ``props``; refuse the
        gradient test on a map that is not a gradient step."""
        gradient = MapProperty.GRADIENT_STEP in props
        if self.decrease_test == "auto":
            return self.replace(decrease_test="gradient" if gradient else "objective")
        if self.decrease_test == "gradient" and not gradient:
            raise ConfigError(
                "SafeguardedAnderson(decrease_test='gradient') bounds F's decrease from the "
                "residuals, which holds only where S(z) = z - grad F(z) with F convex and "
                "1-smooth; this map is not such a step (a prior, or another family). Use "
                "decrease_test='objective' or 'auto'")
        return self

    def solve_batch(self, fn: Callable, z0: jax.Array, data: Any, *, tol: float, max_steps: int,
                    anchor: jax.Array | None = None,
                    value_and_map: Callable | None = None) -> SolverRun:
        gradient = self.decrease_test == "gradient"
        if not gradient:
            self._require_objective(value_and_map)
        # F is evaluated for the objective test, and under the gradient test only to be
        # recorded (trace, monitor) where the problem has it.
        valued = value_and_map is not None and (
            not gradient or self.trace or self.monitor is not None)
        batch, shape, m = z0.shape[0], z0.shape[1:], self.history
        dtype = z0.dtype
        evaluate_batch = batched(cast(Callable, value_and_map) if valued else fn, data)

        def evaluate(z: jax.Array) -> tuple[jax.Array | None, jax.Array]:
            out = evaluate_batch(z.reshape((batch,) + shape))
            if not valued:
                return None, flat(out)
            return out[0].astype(dtype), flat(out[1])

        eps = jnp.finfo(dtype).eps

        def gradient_test(row: jax.Array, gg: jax.Array, slot: jax.Array, point: jax.Array,
                          y: jax.Array, g: jax.Array, residual: jax.Array) -> jax.Array:
            # -<g(y), y - x> - |g(y) - g(x)|^2 / 2 <= -(delta/2)|g(x)|^2 + slack: F(y) is below
            # the sufficient-decrease bound (module docstring). |g(y)|^2 = gg and <g(y), g(x)>
            # are entries of the Gram row just computed (x's residual is in the history); one
            # pass over y, S(y) and x gives the rest.
            gx = jnp.take_along_axis(row, slot[:, None], axis=1)[:, 0]
            d = y - point
            change = -jnp.sum(g * d, axis=1) - 0.5 * (gg - 2 * gx + residual * residual)
            dist = jnp.sqrt(jnp.sum(d * d, axis=1))
            size = jnp.sqrt(jnp.sum(y * y, axis=1))
            slack = 256 * eps * (size + dist + residual) * (3 * dist + jnp.sqrt(gg))
            return change + (0.5 * self.decrease) * residual * residual <= slack

        def step(carry: tuple[Any, ...], residual: jax.Array, active: jax.Array,
                 k: jax.Array) -> tuple[tuple[Any, ...], jax.Array]:
            history, point, image, value, plain_next, slot = carry
            alpha = coefficients(history, jnp.minimum(k + 1, m), k % m, self.ridge)
            extrapolated = extrapolate(history, alpha, self.mixing)
            candidate = jnp.where(plain_next[:, None], image, extrapolated)
            y = freeze(active, candidate, point)
            value_y, image_y = evaluate(y)
            g = image_y - y
            new_slot = (k + 1) % m
            history = push(history, image_y, g, new_slot)
            # |g(y)|^2 is the Gram matrix's new diagonal entry: no extra pass over g.
            row = history.gram[:, new_slot]
            gg = row[:, new_slot]
            g_norm = jnp.sqrt(gg)
            if gradient:
                # x's residual is still in the history: x is at most two steps old (a rejected
                # candidate is followed by the plain step, accepted unconditionally), m >= 2.
                decreases = gradient_test(row, gg, slot, point, y, g, residual)
            else:
                assert value_y is not None  # the objective test evaluates F
                slack = 64 * eps * (jnp.abs(value) + jnp.sum(point * point, axis=1))
                bound = value - (0.5 * self.decrease) * residual * residual + slack
                decreases = value_y <= bound
            # NaN values compare False: a non-finite candidate is rejected.
            accept = active & (plain_next | decreases)
            point = freeze(accept, y, point)
            image = freeze(accept, image_y, image)
            if value_y is not None:
                value = jnp.where(accept, value_y, value)
            new_residual = jnp.where(accept, g_norm, residual)
            slot = jnp.where(accept, new_slot, slot)
            if self.monitor is not None:
                jax.debug.callback(self.monitor, k, active, accept, point.reshape(z0.shape), value)
            return (history, point, image, value, ~accept, slot), new_residual

        x0 = flat(z0)
        value0, f0 = evaluate(x0)
        g0 = f0 - x0
        no = jnp.zeros((batch,), bool)
        slot0 = jnp.zeros((batch,), jnp.int32)  # the history slot of x_k's residual
        carry = (start_history(f0, g0, m), x0, f0, value0, no, slot0)
        (_, point, image, *_), residual, steps, recorded = batch_loop(
            step, carry, batch_norms(g0), tol=tol, max_steps=max_steps, trace=self.trace,
            value=(lambda carry: carry[3]) if valued else None)  # F at the accepted points
        return SolverRun(
            point=point.reshape(z0.shape), image=image.reshape(z0.shape), steps=steps,
            evaluations=steps + 1, residual=residual, trace=recorded,
        )
