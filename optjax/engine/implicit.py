r"""Fixed points with implicit gradients (``jax.custom_vjp`` around the solve).

Forward: the solver runs on every sample independently (per-sample stopping), then the map is
applied once more at the solver's last point: :math:`z^\star = S(z_{\text{last}})`, the point
the certificate describes. A map may offer another iteration with the same fixed points to
solve with (``solve_map`` on a state :math:`u`, with ``solve_state(z) = u`` and
``equilibrium_point(u) = z``; e.g. a splitting method in scaled coordinates); the residual is
still measured with :math:`S` itself.

Backward (see :mod:`optjax.engine.backward`): per sample, solve :math:`(I - J^\top) v = g` with
:math:`J^\top v` from the map's structured ``jacobian_transpose`` (or a VJP of :math:`S`) at
:math:`z^\star`; then one batched VJP of :math:`S` with respect to the shared parameters and the
per-sample data gives their cotangents. Nothing of the forward iterations is stored: memory is
that of one evaluation of :math:`S`. The gradient depends only on the fixed point, not on the
solver. Each sample's system is solved for :math:`g / s` with :math:`s` a power of two near
:math:`\max_i |g_i|`, and :math:`v` scaled back (exact: the system is linear and the division
rounds nothing above the subnormal range), so the relative tolerance means the same for a learnt sample whose
:math:`\|g\|` is :math:`10^{-20}` as for any other; unscaled, :math:`\|g\|^2` underflows in
float32 and the solve either stalls or returns :math:`v = 0` as converged.

Non-finite samples: a sample whose equilibrium or data holds NaN/Inf contributes nothing to the
gradients of the shared parameters (it cannot poison the batch); its own data cotangent is 0 when
the loss does not depend on it, NaN otherwise.

The statistics of the backward solve leave the backward pass as the cotangent of ``probe``, a
zero-valued :class:`~optjax.BackwardStats` input (see :func:`optjax.backward_probe`); a
backward solve that stops above its tolerance also raises an
:class:`~optjax.EquilibriumWarning` (once per call site) unless its mode says
``on_failure="ignore"``.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from optjax.engine.backward import Backward
from optjax.engine.result import BackwardStats, EquilibriumWarning
from optjax.solvers import Solver

__all__ = ["ForwardStats", "fixed_point"]


class ForwardStats(NamedTuple):
    residual: jax.Array  # ||z_last - S(z_last)||
    steps: jax.Array
    evaluations: jax.Array
    last: jax.Array  # z_last, the point whose image S(z_last) is returned (no gradient)
    trace: object = None  # the solver's Trace with trace=True


def _norms(v: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(v**2, axis=tuple(range(1, v.ndim))))


def _run_solver(solver, fn, value_and_map, z0, data, anchor, tol, max_steps):
    batch_solve = getattr(solver, "solve_batch", None)
    if batch_solve is not None:
        return batch_solve(fn, z0, data, tol=tol, max_steps=max_steps, anchor=anchor,
                           value_and_map=value_and_map)

    def one(z0_i, data_i, anchor_i):  # solvers without a batched form
        extra = {} if value_and_map is None else dict(
            value_and_map=lambda z: value_and_map(z, data_i))
        return solver.run(lambda z: fn(z, data_i), z0_i, tol=tol, max_steps=max_steps,
                          anchor=anchor_i, **extra)

    return jax.vmap(one)(z0, data, anchor)


def _solve(map_fn, solver, tol, max_steps, params, data, z0, anchor):
    apply = jax.vmap(map_fn, in_axes=(0, None, 0))
    solve_map = getattr(map_fn, "solve_map", None)
    if solve_map is None:
        fn = lambda z, d: map_fn(z, params, d)  # noqa: E731
        vam = getattr(map_fn, "value_and_map", None)
        if vam is None or not getattr(solver, "needs_objective", False):
            value_and_map = None
        else:
            value_and_map = lambda z, d: vam(z, params, d)  # noqa: E731
        run = _run_solver(solver, fn, value_and_map, z0, data, anchor, tol, max_steps)
        point, image = run.point, run.image
        evaluations = run.evaluations
        # The exact value the solver's stopping test used (a recomputation could differ by an
        # ulp at the boundary and call a stopped sample MAX_STEPS).
        residual = getattr(run, "residual", None) if image is not None else None
    else:
        lift = jax.vmap(map_fn.solve_state, in_axes=(0, None, 0))
        u_anchor = None if anchor is None else lift(anchor, params, data)
        fn = lambda u, d: solve_map(u, params, d)  # noqa: E731
        run = _run_solver(solver, fn, None, lift(z0, params, data), data, u_anchor, tol,
                          max_steps)
        point = jax.vmap(map_fn.equilibrium_point, in_axes=(0, None, 0))(run.point, params, data)
        image = None
        evaluations = run.evaluations
        residual = None
    if image is None:
        image = apply(point, params, data)
        evaluations = evaluations + 1
    stats = ForwardStats(
        residual=_norms(point - image) if residual is None else residual,
        steps=jnp.asarray(run.steps).astype(jnp.int32),
        evaluations=jnp.asarray(evaluations).astype(jnp.int32),
        last=point,
        trace=getattr(run, "trace", None),
    )
    return image, stats


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def fixed_point(
    map_fn: Callable,
    solver: Solver,
    backward: Backward,
    tol: float,
    max_steps: int,
    params: Any,
    data: Any,
    z0: jax.Array,
    anchor: jax.Array | None,
    probe: BackwardStats,
) -> tuple[jax.Array, ForwardStats]:
    r"""Batched fixed point :math:`z^\star_i = S(z^\star_i; \text{params}, \text{data}_i)`.

    Args:
      map_fn: ``map_fn(z, params, data_i)``, the equilibrium map for one sample (hashable).
        Optional methods: ``jacobian_transpose(z, params, data_i) -> (v -> J^T v)`` (used
        instead of ``jax.vjp`` in the backward pass), ``value_and_map(z, params, data_i) ->
        (F(z), S(z))`` (for solvers that use the objective), and ``solve_map`` /
        ``solve_state`` / ``equilibrium_point`` (another iteration to solve with; see the
        module docstring).
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


def _finite_rows(tree: Any, batch: int) -> jax.Array:
    ok = jnp.ones((batch,), bool)
    for leaf in jax.tree_util.tree_leaves(tree):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(leaf), axis=tuple(range(1, leaf.ndim)))
    return ok


def _rows_where(keep, tree, fill):
    def pick(leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            return leaf
        mask = keep.reshape((-1,) + (1,) * (leaf.ndim - 1))
        return jnp.where(mask, leaf, jnp.asarray(fill, leaf.dtype))
    return jax.tree_util.tree_map(pick, tree)


def _power_of_two_near_max(g: jax.Array) -> jax.Array:
    """``2^(e-1)`` with ``max|g|`` in ``[2^(e-1), 2^e)``; 1 where g is 0 or not finite (or the
    power would underflow). Dividing by it never overflows and rounds nothing except entries
    that fall below the smallest normal number (under 2^-126 of max|g| in float32)."""
    top = jnp.max(jnp.abs(g))
    _, exponent = jnp.frexp(top)
    scale = jnp.ldexp(jnp.ones((), g.dtype), exponent - 1)
    usable = jnp.isfinite(top) & (top > 0) & (scale >= jnp.finfo(g.dtype).tiny)
    return jnp.where(usable, scale, jnp.ones((), g.dtype))


def _warn_backward(failed):
    # One fixed text, so that Python's default filter shows it once per process, not per step;
    # the per-sample figures are in the backward statistics (optjax.backward_probe).
    if int(failed):
        warnings.warn(
            "the backward (gradient) solve stopped above its tolerance for some samples: their "
            "gradients are approximate. Raise the backward mode's max_steps, use "
            "backward='gmres' or 'cg', read the per-sample statistics with "
            "optjax.backward_probe, or pass on_failure='ignore' to the backward mode.",
            EquilibriumWarning, stacklevel=1)


def _bwd(map_fn, solver, backward, tol, max_steps, residuals, cotangents):
    params, data, z_star, z0, anchor, probe = residuals
    g, _ = cotangents
    batch = z_star.shape[0]

    # Non-finite samples are solved and differentiated at a harmless point, then masked.
    ok = _finite_rows((z_star, data), batch)
    z_safe = _rows_where(ok, z_star, 0.0)
    data_safe = _rows_where(ok, data, 0.0)
    g_safe = _rows_where(ok, g, 0.0)

    structured = getattr(map_fn, "jacobian_transpose", None)

    def solve_one(z_i, data_i, g_i):
        if structured is not None:
            apply_a = structured(z_i, params, data_i)
        else:
            _, vjp_z = jax.vjp(lambda z: map_fn(z, params, data_i), z_i)
            apply_a = lambda v: vjp_z(v)[0]  # noqa: E731
        if backward.requires_splitting:
            result = backward.solve_split(map_fn.adjoint_splitting(z_i, params, data_i),
                                          apply_a, g_i)
        else:
            result = backward.solve(apply_a, g_i)
        return result

    def one(z_i, data_i, g_i):
        # The system is linear in g: solve it for g / s and scale back, s a power of two
        # (exact in floating point) near max|g|, so that a tiny g (a confidently classified
        # sample) is solved as accurately as any other instead of underflowing in ||g||^2.
        scale = _power_of_two_near_max(g_i)
        result = solve_one(z_i, data_i, g_i / scale)
        return result.solution * scale, result._replace(
            solution=None, residual=result.residual * scale)

    v, result = jax.vmap(one)(z_safe, data_safe, g_safe)
    v = _rows_where(ok, v, 0.0)
    batched_map = lambda p, d: jax.vmap(map_fn, in_axes=(0, None, 0))(z_safe, p, d)  # noqa: E731
    _, vjp_params = jax.vjp(batched_map, params, data_safe)
    params_bar, data_bar = vjp_params(backward.output_scale * v)
    # A bad sample's own cotangent: 0 if the loss ignores it, NaN otherwise.
    ignored = ~jnp.any(g != 0, axis=tuple(range(1, g.ndim)))
    fill = jnp.where(ignored, 0.0, jnp.nan)

    def own(leaf):
        shape = (-1,) + (1,) * (leaf.ndim - 1)
        return jnp.where(ok.reshape(shape), leaf, fill.reshape(shape).astype(leaf.dtype))

    data_bar = jax.tree_util.tree_map(own, data_bar)

    if getattr(backward, "on_failure", "ignore") == "warn":
        # The host callback runs only when a sample failed: a healthy training loop never
        # leaves the device for it.
        failed = jnp.sum(ok & ~result.converged)
        jax.lax.cond(failed > 0, lambda n: jax.debug.callback(_warn_backward, n),
                     lambda n: None, failed)

    dtype = probe.steps.dtype
    probe_bar = BackwardStats(
        steps=result.steps.astype(dtype),
        residual=result.residual.astype(dtype),
        converged=(result.converged & ok).astype(dtype),
    )
    zeros = lambda tree: jax.tree_util.tree_map(jnp.zeros_like, tree)  # noqa: E731
    return params_bar, data_bar, zeros(z0), zeros(anchor), probe_bar


fixed_point.defvjp(_fwd, _bwd)
