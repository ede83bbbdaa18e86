"""Batched states of a deep OptEq chain (flat or per layer), its objective on a batch, and
:func:`equilibrium`, the engine's solve returning the states per layer."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence, cast

import jax
import jax.numpy as jnp

from optjax.config import ConfigError
from optjax.engine.equilibrium import equilibrium as solve
from optjax.engine.result import SolveInfo
from optjax.families.deep.problem import SWEEPS, DeepProblem
from optjax.families.deep.sweeps import DeepMap, split

__all__ = ["batched_states", "states_of", "objective", "equilibrium"]


def batched_states(problem: DeepProblem, s: Any, batch: int | None) -> jax.Array:
    """Flat ``(B, state_size)`` states from a flat array or a list of per-layer arrays."""
    if isinstance(s, (list, tuple)):
        states = [jnp.asarray(v) for v in s]
        want = [(batch,) + shape for shape in problem.shapes]
        got = [tuple(v.shape) for v in states]
        if len(states) != problem.num_layers or (batch is not None and got != want):
            raise ValueError(
                f"states must be {problem.num_layers} arrays of shapes {want}; got {got}")
        return jnp.concatenate([v.reshape(v.shape[0], -1) for v in states], axis=1)
    s = jnp.asarray(s)
    wrong_batch = batch is not None and s.ndim == 2 and s.shape[0] != batch
    if s.ndim != 2 or s.shape[1] != problem.state_size or wrong_batch:
        raise ValueError(
            f"s must have shape (batch, {problem.state_size}) (flat states, layer shapes "
            f"{problem.shapes}), or be a list of per-layer (batch,) + shape arrays; got "
            f"{s.shape}")
    return s


def states_of(problem: DeepProblem, flat: jax.Array) -> list[jax.Array]:
    """Flat ``(B, state_size)`` states split into per-layer arrays of their shapes."""
    return [p.reshape((flat.shape[0],) + shape)
            for p, shape in zip(split(problem.sizes, flat), problem.shapes)]


def objective(problem: DeepProblem, s: jax.Array | Sequence[jax.Array],
              x: jax.Array) -> jax.Array:
    """Per-sample H(s; x), shape ``(B,)``; ``s`` flat ``(B, state_size)`` or a list of
    per-layer arrays. ``+inf`` where some ``s_l`` leaves the domain of its penalty (e.g.
    ``s < 0`` for relu)."""
    x = problem.check_input(x)
    flat = batched_states(problem, s, x.shape[0])
    missing = [a.name for a in problem.activations if a.penalty is None]
    if missing:
        raise ValueError(
            f"the objective needs the penalty f of every activation; {missing} have none "
            "(pass penalty= to optjax.activations.from_function)")
    map_fn = DeepMap(problem.activations, problem.shapes, False)
    h = cast(Callable, map_fn.objective)  # not None: every activation has its penalty
    return jax.vmap(h, in_axes=(0, None, 0))(
        flat, problem.parameters(), problem.sample_data(x))


def equilibrium(problem: DeepProblem, x: jax.Array, *, sweep: str | None = None,
                init: jax.Array | Sequence[jax.Array] | None = None,
                **options: Any) -> tuple[list[jax.Array], SolveInfo]:
    """Solve the chain with :func:`optjax.equilibrium` and return ``([s_1, ..., s_L], info)``,
    ``s_l`` of shape ``(B,) + shape_l``, differentiable (implicitly) in the problem's arrays and
    ``x``.

    Args:
      problem: a :class:`DeepProblem`.
      x: inputs ``(B,) + problem.input_shape``.
      sweep: ``"jacobi"`` or ``"gauss_seidel"`` to override ``problem.sweep``.
      init: initial states (flat ``(B, state_size)`` or per layer); default 0. No gradient.
      **options: as :func:`optjax.equilibrium` (``solver``: default plain iteration, which
        converges for both sweeps when the margin is positive; ``"safeguarded_anderson"`` uses
        H; Nesterov assumes a 1-smooth objective while ``||I - K|| <= 2 - m``, so it can stall
        with the Jacobi sweep. ``backward``: GMRES by default; ``"cg"`` is refused).
    """
    if not isinstance(problem, DeepProblem):
        raise TypeError(f"problem must be an optjax.families.deep.DeepProblem, got {type(problem).__name__}")
    if sweep is not None:
        if sweep not in SWEEPS:
            raise ConfigError(f"sweep must be one of {SWEEPS}, got {sweep!r}")
        problem = dataclasses.replace(problem, sweep=sweep)
    x = problem.check_input(x)
    if init is not None:
        init = batched_states(problem, init, x.shape[0])
    flat, info = solve(problem, x, init=init, **options)
    return states_of(problem, flat), info
