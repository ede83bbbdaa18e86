"""The jit-compiled training and evaluation steps, as pure functions of a :class:`TrainState`.

The model is split once into a static graph and three states: parameters (trained), the
layers' solve summaries (:class:`optjax.nn.SolveStat`: outputs only, passed in unchanged and
kept out of the state, since the steps read per-sample statistics from
``model(x, return_info=True)``) and the rest (the power-iteration vectors, updated by training
calls). Each step merges them, runs the model, and splits again, so nothing is mutated across
jit boundaries and a :class:`TrainState` is a plain pytree that can be sharded, checkpointed
and restored exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from optjax.engine.equilibrium import backward_probe
from optjax.engine.result import BackwardStats
from optjax.nn.base import SolveStat
from optjax.nn.robustness import margin_offsets
from optjax.train import sharding
from optjax.train.augment import Augmentation
from optjax.train.config import TrainConfig
from optjax.train.model import solve_stats

__all__ = ["TrainState", "ModelParts", "split_model", "make_optimizer", "init_state",
           "make_train_step", "make_eval_step"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything that changes during training: ``step`` (int32 scalar, steps taken),
    ``params``, ``opt_state`` and ``rest`` (non-parameter variables)."""

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    rest: nnx.State


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """The static halves of a split model: graphs for training and evaluation mode, and the
    solve-summary state (fixed-size scalars, the same for every batch)."""

    graph: nnx.GraphDef
    eval_graph: nnx.GraphDef
    stats: nnx.State

    def merge(self, params: nnx.State, rest: nnx.State, *, training: bool) -> Any:
        graph = self.graph if training else self.eval_graph
        return nnx.merge(graph, params, self.stats, rest, copy=True)


def _split(model: nnx.Module) -> tuple[Any, ...]:  # (graph, params, stats, rest)
    return nnx.split(model, nnx.Param, SolveStat, ...)


def split_model(model: nnx.Module) -> tuple[ModelParts, nnx.State, nnx.State]:
    """``(parts, params, rest)`` of a model (called or not: its state has a fixed structure)."""
    model.train()
    graph, params, stats, rest = _split(model)
    model.eval()
    eval_graph = _split(model)[0]
    model.train()
    return ModelParts(graph, eval_graph, stats), params, rest


def make_optimizer(config: TrainConfig,
                   steps_per_epoch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(tx, schedule)``: AdamW with linear warm-up then cosine decay (or constant) of the
    learning rate, after an optional global-norm clip of the gradient.

    The optimiser state has the same structure for every value of the options (no clip is an
    identity in the clip's place), so a run may resume with other optimisation settings."""
    total = config.epochs * steps_per_epoch
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    peak = config.learning_rate
    if config.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1))
    else:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
            [warmup]) if warmup else optax.constant_schedule(peak)
    adamw = optax.adamw(schedule, weight_decay=config.weight_decay)
    clip = optax.clip_by_global_norm(config.grad_clip) if config.grad_clip is not None \
        else optax.identity()
    return optax.chain(clip, adamw), schedule


def init_state(params: nnx.State, rest: nnx.State, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rest=rest)


def _forward(parts: ModelParts, params: nnx.State, rest: nnx.State, x: jax.Array, y: jax.Array,
             training: bool, probe: BackwardStats | None = None, lipschitz_margin: float = 0.0,
             jacobian_penalty: float = 0.0
             ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array], nnx.State]:
    model = parts.merge(params, rest, training=training)
    if jacobian_penalty > 0 and training:  # the DEQ layer sows its Jacobian estimate
        (logits, info), sown = nnx.capture(model, nnx.Intermediate)(
            x, return_info=True, backward_probe=probe)
        (jacobian,) = jax.tree.leaves(sown)  # (batch,): the layer's one call
    else:
        logits, info = model(x, return_info=True, backward_probe=probe)
        jacobian = None
    scored = logits.astype(jnp.float32)
    if lipschitz_margin > 0:  # the loss asks for margins that certify this radius
        scored = scored + margin_offsets(model, y, lipschitz_margin).astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(scored, y)
    if jacobian is not None:
        losses = losses + jacobian_penalty * jacobian.astype(jnp.float32)
    stats = solve_stats(info, x.shape[0])
    new_rest = _split(model)[3]
    return losses, logits, stats, new_rest


def make_train_step(parts: ModelParts, tx: optax.GradientTransformation, schedule: Callable,
                    mesh: Mesh, augment: Augmentation | None = None,
                    lipschitz_margin: float = 0.0, jacobian_penalty: float = 0.0) -> Callable:
    """``step(state, x, y) -> (state, metrics)``, jit-compiled with the batch sharded over
    ``mesh`` and the state replicated; ``augment`` (if given) transforms ``x`` first, drawn from
    ``state.step``. Metrics (scalars): loss, accuracy, learning_rate, grad_norm, forward steps
    mean and max, residual max, converged share, and the backward (gradient) solve's steps mean
    and max and converged share, read from an :func:`optjax.backward_probe` (all NaN for a
    model without an equilibrium layer). ``lipschitz_margin`` > 0: the loss is the
    cross-entropy of the logits plus :func:`optjax.nn.robustness.margin_offsets` (training for
    certified radius ``lipschitz_margin``). ``jacobian_penalty`` > 0 (a DEQ built with
    ``jacobian_penalty=True``): each sample's loss adds that multiple of its
    :func:`optjax.deq.jacobian_frobenius` estimate, captured from the layer."""

    def loss_fn(params: nnx.State, probe: BackwardStats, rest: nnx.State, x: jax.Array,
                y: jax.Array) -> tuple[jax.Array, tuple[Any, ...]]:
        losses, logits, stats, new_rest = _forward(parts, params, rest, x, y, training=True,
                                                   probe=probe,
                                                   lipschitz_margin=lipschitz_margin,
                                                   jacobian_penalty=jacobian_penalty)
        return losses.mean(), (logits, stats, new_rest)

    def step(state: TrainState, x: jax.Array,
             y: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        if augment is not None and augment.active:
            x = augment(x, state.step)
        probe = backward_probe(x.shape[0])
        (loss, (logits, stats, rest)), (grads, backward) = jax.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True)(state.params, probe, state.rest, x, y)
        # an explicit model never reads the probe: its zero cotangent is not a solve
        solved = jnp.all(jnp.isfinite(stats["steps"]))
        nan = jnp.asarray(jnp.nan, jnp.float32)
        backward_steps = jnp.where(solved, backward.steps.astype(jnp.float32), nan)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(
            loss=loss,
            accuracy=jnp.mean(jnp.argmax(logits, -1) == y),
            learning_rate=jnp.asarray(schedule(state.step), jnp.float32),
            grad_norm=optax.tree.norm(grads),
            steps=jnp.mean(stats["steps"]),
            steps_max=jnp.max(stats["steps"]),
            residual=jnp.max(stats["residual"]),
            converged=jnp.mean(stats["converged"]),
            backward_steps=jnp.mean(backward_steps),
            backward_steps_max=jnp.max(backward_steps),
            backward_converged=jnp.where(solved, jnp.mean(backward.converged), nan),
        )
        new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rest=rest)
        return new, metrics

    repl, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(repl, data, data), out_shardings=(repl, repl))


def make_eval_step(parts: ModelParts, mesh: Mesh) -> Callable:
    """``evaluate(state, x, y) -> per-sample dict`` (loss, correct, prediction and the
    :func:`solve_stats`), in evaluation mode (the power-iteration state is not updated)."""

    def evaluate(state: TrainState, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
        losses, logits, stats, _ = _forward(parts, state.params, state.rest, x, y, training=False)
        prediction = jnp.argmax(logits, -1)
        return dict(loss=losses, correct=(prediction == y).astype(jnp.float32),
                    prediction=prediction, **stats)

    repl, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    return jax.jit(evaluate, in_shardings=(repl, data, data), out_shardings=data)
