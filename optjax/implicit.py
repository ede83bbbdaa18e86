r"""Fixed points with implicit gradients (``jax.custom_vjp`` around the solve).

Forward: every sample is solved independently (``vmap`` of a per-sample solver, so stopping is
per sample), then the map is applied once more at the solver's last point:
:math:`z^\star = S(z_{\text{last}})`, the point the certificate describes.

Backward (see :mod:`optjax.backward`): per sample, solve :math:`(I - J^\top) v = g` with
:math:`J^\top v` a VJP of :math:`S` at :math:`z^\star`; then one batched VJP of :math:`S` with
respect to the shared parameters and the per-sample data gives their cotangents. Nothing of the
forward iterations is stored: memory is that of one evaluation of :math:`S`.

The statistics of the backward solve leave the backward pass as the cotangent of ``probe``, a
zero-valued :class:`~optjax.info.BackwardStats` input: differentiate with respect to it to read
them (see :func:`optjax.backward_probe`).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from optjax.backward import Backward
from optjax.info import BackwardStats
from optjax.solvers import Solver
from optjax.solvers._base import norm

__all__ = ["ForwardStats", "fixed_point"]


class ForwardStats(NamedTuple):
    residual: jax.Array  # ||z_last - S(z_last)||
    steps: jax.Array
    evaluations: jax.Array


def _solve(map_fn, solver, tol, max_steps, params, data, z0, anchor):
    def one(z0_i, data_i, anchor_i):
        fn = lambda z: map_fn(z, params, data_i)  # noqa: E731
        run = solver.run(fn, z0_i, tol=tol, max_steps=max_steps, anchor=anchor_i)
        evaluations = run.evaluations
        image = run.image
        if image is None:
            image = fn(run.point)
            evaluations = evaluations + 1
        stats = ForwardStats(
            residual=norm(run.point - image),
            steps=run.steps.astype(jnp.int32),
            evaluations=jnp.asarray(evaluations).astype(jnp.int32),
        )
        return image, stats

    return jax.vmap(one)(z0, data, anchor)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def fixed_point(
    map_fn: Callable,
    solver: Solver,
    backward: Backward,
    tol: float,
    max_steps: int,
    params,
    data,
    z0: jax.Array,
    anchor,
    probe: BackwardStats,
):
    r"""Batched fixed point :math:`z^\star_i = S(z^\star_i; \text{params}, \text{data}_i)`.

    Args:
      map_fn: ``map_fn(z, params, data_i)``, the equilibrium map for one sample. If it has a
        ``jacobian_transpose(z, params, data_i)`` method returning ``v -> J^T v``, the backward
        pass uses it instead of ``jax.vjp`` (see :class:`optjax.operator.EquilibriumMap`).
      solver, backward, tol, max_steps: static settings.
      params: pytree shared by the batch (differentiable).
      data: pytree with a leading batch axis (differentiable).
      z0: initial points, ``(B,) + state shape`` (no gradient).
      anchor: Halpern anchors with a leading batch axis, or None (no gradient).
      probe: zero :class:`BackwardStats`; its cotangent carries the backward statistics.

    Returns:
      ``(z_star, ForwardStats)``.
    """
    return _solve(map_fn, solver, tol, max_steps, params, data, z0, anchor)


def _fwd(map_fn, solver, backward, tol, max_steps, params, data, z0, anchor, probe):
    z_star, stats = _solve(map_fn, solver, tol, max_steps, params, data, z0, anchor)
    return (z_star, stats), (params, data, z_star, z0, anchor, probe)


def _bwd(map_fn, solver, backward, tol, max_steps, residuals, cotangents):
    params, data, z_star, z0, anchor, probe = residuals
    g, _ = cotangents

    structured = getattr(map_fn, "jacobian_transpose", None)

    def one(z_i, data_i, g_i):
        if structured is not None:
            apply_a = structured(z_i, params, data_i)
        else:
            _, vjp_z = jax.vjp(lambda z: map_fn(z, params, data_i), z_i)
            apply_a = lambda v: vjp_z(v)[0]  # noqa: E731
        result = backward.solve(apply_a, g_i)
        return result.solution, result

    v, result = jax.vmap(one)(z_star, data, g)
    batched_map = lambda p, d: jax.vmap(map_fn, in_axes=(0, None, 0))(z_star, p, d)  # noqa: E731
    _, vjp_params = jax.vjp(batched_map, params, data)
    params_bar, data_bar = vjp_params(backward.output_scale * v)

    dtype = probe.steps.dtype
    probe_bar = BackwardStats(
        steps=result.steps.astype(dtype),
        residual=result.residual.astype(dtype),
        converged=result.converged.astype(dtype),
    )
    zeros = lambda tree: jax.tree_util.tree_map(jnp.zeros_like, tree)  # noqa: E731
    return params_bar, data_bar, zeros(z0), zeros(anchor), probe_bar


fixed_point.defvjp(_fwd, _bwd)
