"""The classifier of a run, built from its :class:`TrainConfig`, and the per-sample solve
statistics every family reports in the same form."""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
from flax import nnx

from optjax.engine import backward as _backward
from optjax import solvers as _solvers
from optjax.engine.result import SolveInfo
from optjax.nn.classifiers import ImplicitClassifier
from optjax.train.config import TrainConfig

__all__ = ["build_model", "design_options", "layer_options", "solve_stats", "STAT_NAMES"]


def layer_options(config: TrainConfig) -> dict[str, Any]:
    """The equilibrium layer's keyword options for the configured family."""
    if config.family == "explicit":
        return {}
    mode = config.backward
    if mode == "auto":  # OptEq: I - J is symmetric positive definite (no prior); monDEQ:
        # Peaceman--Rachford on the adjoint problem, at the forward's cost per step
        mode = {"opteq": "cg", "mondeq": "splitting"}.get(config.family, "gmres")
    if mode == "phantom":
        backward = _backward.get("phantom", steps=config.backward_steps)
    else:
        options: dict[str, Any] = {"max_steps": config.backward_steps}
        if config.backward_tol is not None:
            options["tol"] = config.backward_tol
        backward = _backward.get(mode, **options)
    options = dict(tol=config.tol, max_steps=config.max_steps, backward=backward)
    if config.solver is not None:
        options["solver"] = config.solver
    anderson = config.solver == "anderson" or (config.solver is None and config.family == "deq")
    if config.anderson_ridge is not None and anderson:
        options["solver"] = _solvers.get("anderson", ridge=config.anderson_ridge)
    if config.family in ("opteq", "deep_opteq", "deq"):
        options["activation"] = config.activations
    if config.family == "deep_opteq":
        options["sweep"] = config.sweep
    if config.family in ("opteq", "deep_opteq"):
        options["rho"] = config.rho
    if config.family == "opteq":
        options["certify"] = config.certify
    if config.jacobian_penalty:
        options["jacobian_penalty"] = True
    return options


def build_model(config: TrainConfig, input_shape: Sequence[int],
                num_classes: int) -> ImplicitClassifier:
    """A fresh classifier; its initialisation depends only on ``config.seed``."""
    return ImplicitClassifier(config.family, config.kind, input_shape, num_classes, config.width,
                              rngs=nnx.Rngs(config.seed), head_units=config.head_units,
                              **design_options(config), **layer_options(config))


def design_options(config: TrainConfig) -> dict[str, Any]:
    """The classifier's stem, head pooling and (deep OptEq) chain options, where they differ
    from the defaults (so that a default run builds exactly what it always built)."""
    if config.kind == "dense":
        return {} if config.family != "deep_opteq" else dict(
            tier_channels=config.tier_channel_multipliers)
    options: dict[str, Any] = dict(stem_channels=config.stem_channels,
                                   stem_stride=config.stem_stride, head_grid=config.head_grid)
    if config.family == "deep_opteq":
        options.update(tier_channels=config.tier_channel_multipliers,
                       tier_strides=config.tier_stride_values)
    return options


STAT_NAMES = ("steps", "residual", "converged", "suboptimality_bound")


def solve_stats(info: SolveInfo | None, batch: int) -> dict[str, jnp.ndarray]:
    """Per-sample ``steps``, ``residual``, ``converged`` (0/1) and ``suboptimality_bound``
    (``F(z) - F* <= r^2 / 2 mu``: infinite where nothing is certified, e.g. DEQ) from the
    :class:`optjax.SolveInfo` of a call, for every family (``logits, info = model(x,
    return_info=True)``); NaN for an explicit model (``info`` None), which solves nothing."""
    if info is None:
        nan = jnp.full((batch,), jnp.nan, jnp.float32)
        return dict(steps=nan, residual=nan, converged=nan, suboptimality_bound=nan)
    return dict(
        steps=jnp.asarray(info.steps, jnp.float32),
        residual=jnp.asarray(info.residual, jnp.float32),
        converged=jnp.asarray(info.converged, jnp.float32),
        suboptimality_bound=jnp.asarray(info.certificate.suboptimality_bound, jnp.float32),
    )
