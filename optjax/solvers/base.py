r"""What every forward solver shares: its configuration base class, its result, and the batched
loop.

A solver iterates a nonexpansive map :math:`S` and stops, per sample, at the first point
:math:`z` with :math:`\|z - S(z)\| \le` tol (or after ``max_steps`` steps). It returns that point
with its image :math:`S(z)`, so the caller can return :math:`S(z)` and certify it without
another evaluation.

Two entry points:

* :meth:`Solver.run` solves ONE sample: ``fn(z) = S(z)``.
* :meth:`Solver.solve_batch` solves the whole batch: ``fn(z_i, data_i) = S(z_i)`` per sample.
  The default vmaps :meth:`Solver.run`; optjax's own solvers instead run one loop over the
  batch (:func:`batch_loop`): every step evaluates :math:`S` once on the whole batch, and a
  sample that has stopped is frozen by one select on its point and image, so that it costs
  nothing but its share of that evaluation.

Arithmetic stays in the state's dtype: the stopping test compares the residual computed in
that dtype with ``tol`` rounded to it, so a float32 sample stops exactly when its float32
residual is at most ``tol``, even with x64 enabled. A NaN residual compares False: such a
sample stops at once and the others are unaffected.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, NamedTuple, overload

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from optjax.config import Config, ConfigError
from optjax.engine.properties import MapProperty


class Trace(NamedTuple):
    """Per-sample history of a solve (``trace=True``), ``(B, max_steps + 1)`` each: the residual
    ``||z_k - S(z_k)||`` of the point after ``k`` steps (column 0: the start) and the objective
    there where the solver computes it (the safeguarded Anderson solver; NaN otherwise). NaN
    after the sample stopped."""

    residual: jax.Array
    objective: jax.Array


class SolverRun(NamedTuple):
    """A solve's result (per sample, or with a leading batch axis from ``solve_batch``).

    ``image = S(point)`` (None: the caller evaluates it); ``residual = ||point - image||`` in the
    state's dtype, the value the solver's stopping test used (None when the solver does not
    have it, e.g. the jaxopt references)."""

    point: jax.Array
    image: jax.Array | None
    steps: jax.Array  # iterations taken
    evaluations: jax.Array  # evaluations of S (a rejected candidate counts)
    residual: jax.Array | None = None
    trace: Trace | None = None


@dataclasses.dataclass(frozen=True)
class Solver(Config):
    """Base class of forward solvers (frozen, hashable configurations).

    Field: ``trace`` (default False): record every sample's residual (and objective, where the
    solver computes it) at every step in a fixed-size :class:`Trace`; off, it costs nothing.

    Class attributes: ``name`` (registry name), ``uses_anchor`` (Halpern), ``needs_objective``
    (the solver evaluates ``value_and_map`` and refuses to run without it), and the contract
    with the problem families (:mod:`optjax.engine.properties`): ``requires``, the map
    properties it needs (alternatives, any one suffices; ``()``: none), and
    :meth:`guarantee`, what it then promises.
    """

    trace: bool = False

    name: ClassVar[str] = "solver"
    uses_anchor: ClassVar[bool] = False
    needs_objective: ClassVar[bool] = False
    requires: ClassVar[tuple[MapProperty, ...]] = ()

    @classmethod
    def guarantee(cls, props: MapProperty) -> str | None:
        """What the solver promises on a map with properties ``props`` (whose ``requires`` are
        met): a rate in words, or None when nothing is guaranteed (it may stall; the status
        reports it per sample). Default: nothing."""
        return None

    def specialise(self, props: MapProperty) -> "Solver":
        """This configuration for a map with properties ``props`` (the engine calls it once the
        solver's needs are met): a solver with a choice that depends on the map resolves it
        here, or refuses a setting the map cannot support. Default: unchanged."""
        return self

    def run(
        self,
        fn: Callable[[jax.Array], jax.Array],
        z0: jax.Array,
        *,
        tol: float,
        max_steps: int,
        anchor: jax.Array | None = None,
        value_and_map: Callable | None = None,
    ) -> SolverRun:
        """Solve ONE sample. ``fn(z) = S(z)``; ``value_and_map(z) = (F(z), S(z))`` at the cost of
        one evaluation, or None when the problem has no explicit objective. The default runs
        :meth:`solve_batch` on a batch of one."""
        data_free = lambda f: None if f is None else (lambda z, _: f(z))  # noqa: E731
        out = self.solve_batch(
            lambda z, _: fn(z), z0[None], None, tol=tol, max_steps=max_steps,
            anchor=None if anchor is None else anchor[None],
            value_and_map=data_free(value_and_map),
        )
        return jax.tree_util.tree_map(lambda a: a[0], out)

    def solve_batch(
        self,
        fn: Callable,
        z0: jax.Array,
        data: Any,
        *,
        tol: float,
        max_steps: int,
        anchor: jax.Array | None = None,
        value_and_map: Callable | None = None,
    ) -> SolverRun:
        """Solve the batch: ``fn(z_i, data_i) = S(z_i)`` and ``value_and_map(z_i, data_i) =
        (F(z_i), S(z_i))`` per sample; ``z0`` and ``anchor`` of shape ``(B,) + state``, ``data`` a
        pytree with a leading batch axis (leaves may be None). Returns batched fields; stopping
        is per sample. The default vmaps :meth:`run` (a subclass defines one or the other)."""
        if type(self).run is Solver.run:
            raise NotImplementedError(f"{type(self).__name__} defines neither run nor solve_batch")

        def one(z0_i: jax.Array, data_i: Any, anchor_i: jax.Array | None) -> SolverRun:
            vm = None if value_and_map is None else (lambda z: value_and_map(z, data_i))
            return self.run(lambda z: fn(z, data_i), z0_i, tol=tol, max_steps=max_steps,
                            anchor=anchor_i, value_and_map=vm)

        return jax.vmap(one)(z0, data, anchor)

    def _require_objective(self, value_and_map: Callable | None) -> None:
        if self.needs_objective and value_and_map is None:
            raise ConfigError(
                f"the {self.name!r} solver needs the problem's explicit objective F "
                "(value_and_map), and this problem has none; use solver='anderson' or "
                "'nesterov' instead"
            )


def flat(v: jax.Array) -> jax.Array:
    """A batch ``(B, ...)`` as ``(B, D)`` (also for B = 0)."""
    return v.reshape(v.shape[0], math.prod(v.shape[1:]))


def batch_norms(v: jax.Array) -> jax.Array:
    """Per-sample Euclidean norms of a batch ``(B, ...)`` -> ``(B,)``, in its dtype."""
    return jnp.sqrt(jnp.sum(jnp.square(flat(v)), axis=1))


@overload
def batched(fn: Callable, data: Any) -> Callable: ...


@overload
def batched(fn: None, data: Any) -> None: ...


def batched(fn: Callable | None, data: Any) -> Callable | None:
    """``z -> vmap(fn)(z, data)``: a per-sample map applied to the whole batch."""
    if fn is None:
        return None
    vmapped = jax.vmap(fn)
    return lambda z: vmapped(z, data)


def freeze(active: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    """``new`` for the active samples, ``old`` for the stopped ones (``active`` of shape (B,))."""
    return jnp.where(active.reshape(active.shape + (1,) * (new.ndim - 1)), new, old)


def batch_loop(step: Callable, carry: Any, residual: jax.Array, *, tol: ArrayLike,
               max_steps: int, trace: bool = False, value: Callable | None = None
               ) -> tuple[Any, jax.Array, jax.Array, Trace | None]:
    """Run ``step`` on the whole batch until every sample has stopped.

    Sample ``i`` is active while ``residual[i] > tol`` (False for NaN) and fewer than
    ``max_steps`` steps were taken. ``step(carry, residual, active, k) -> (carry, residual)``
    advances every sample; it must leave the outputs (point, image) of the inactive samples
    unchanged (see :func:`freeze`); their residuals are kept here. Returns
    ``(carry, residual, steps, trace)`` with ``steps`` (B,) int32, the step at which each sample
    stopped, and ``trace`` a :class:`Trace` when ``trace`` is True (``value(carry)``: the
    per-sample objective at the current points, if the solver has it), else None.
    """
    tol = jnp.asarray(tol, residual.dtype)  # the test in the state's dtype, never promoted
    history = None
    if trace:
        nan = jnp.full((max_steps + 1,) + residual.shape, jnp.nan, residual.dtype)
        first = nan[0] if value is None else value(carry).astype(residual.dtype)
        history = (nan.at[0].set(residual), nan.at[0].set(first))

    def cond(state: tuple[Any, ...]) -> jax.Array:
        _, residual, _, k, _ = state
        return (k < max_steps) & jnp.any(residual > tol)

    def body(state: tuple[Any, ...]) -> tuple[Any, ...]:
        carry, residual, steps, k, history = state
        active = residual > tol
        carry, new_residual = step(carry, residual, active, k)
        residual = jnp.where(active, new_residual, residual)
        if history is not None:
            res_h, val_h = history
            res_h = res_h.at[k + 1].set(jnp.where(active, residual, jnp.nan))
            if value is not None:
                val_h = val_h.at[k + 1].set(jnp.where(active, value(carry), jnp.nan))
            history = (res_h, val_h)
        return carry, residual, steps + active.astype(jnp.int32), k + 1, history

    steps = jnp.zeros(residual.shape, jnp.int32)
    carry, residual, steps, _, history = jax.lax.while_loop(
        cond, body, (carry, residual, steps, jnp.asarray(0, jnp.int32), history)
    )
    recorded = None if history is None else Trace(history[0].T, history[1].T)
    return carry, residual, steps, recorded


def image_iteration(fn: Callable, z0: jax.Array, data: Any, update: Callable, *, tol: ArrayLike,
                    max_steps: int, trace: bool = False) -> "SolverRun":
    """The loop of every one-evaluation-per-step iteration: ``z_{k+1} = update(z_k, S(z_k), k)``
    (fixed point, relaxed, anchored), stopping per sample on ``||z_k - S(z_k)|| <= tol``.

    Returns the last point with its image (so no evaluation is repeated for the residual):
    ``evaluations = steps + 1``.
    """
    apply = batched(fn, data)

    def step(carry: tuple[jax.Array, jax.Array], _: jax.Array, active: jax.Array,
             k: jax.Array) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        z, image = carry
        z_new = freeze(active, update(z, image, k), z)
        image_new = freeze(active, apply(z_new), image)
        return (z_new, image_new), batch_norms(z_new - image_new)

    image0 = apply(z0)
    (z, image), residual, steps, recorded = batch_loop(
        step, (z0, image0), batch_norms(z0 - image0), tol=tol, max_steps=max_steps, trace=trace
    )
    return SolverRun(point=z, image=image, steps=steps, evaluations=steps + 1,
                     residual=residual, trace=recorded)
