r"""The public entry point: ``z_star, info = equilibrium(problem, x, ...)``.

Solves, for every sample of the batch ``x``,

.. math:: z^\star = \operatorname{prox}_R\big(W^\top \sigma(W z^\star + U x + b)\big)
          = \arg\min_z\ G(z; x) + R(z),

returns :math:`z^\star` (differentiable, with implicit gradients) and a :class:`SolveInfo` with
per-sample steps, evaluations of the map, residual, objective, convergence and non-finite flags,
status codes and the suboptimality certificate.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from optjax import backward as _backward
from optjax import solvers as _solvers
from optjax.certificate import make_certificate
from optjax.config import ConfigError, positive_int, require
from optjax.implicit import fixed_point
from optjax.info import BackwardStats, SolveInfo, Status
from optjax.operator import EquilibriumMap
from optjax.problem import NonconvexError, OptEqProblem, convexity_margin, injection

__all__ = ["equilibrium", "backward_probe"]


def backward_probe(batch_size: int, dtype=jnp.float32) -> BackwardStats:
    """A zero :class:`BackwardStats` to pass as ``equilibrium(..., backward_probe=probe)``.

    The gradient of the loss with respect to it *is* the backward solve's statistics::

        def loss(params, probe):
            z, info = optjax.equilibrium(make_problem(params), x, backward_probe=probe)
            return jnp.sum(z ** 2)

        grads, stats = jax.grad(loss, argnums=(0, 1))(params, optjax.backward_probe(len(x)))
        stats.steps, stats.residual, stats.converged   # per sample
    """
    return BackwardStats.zeros(batch_size, dtype)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _batched(name, value, batch, shape, dtype):
    """Broadcast a per-sample vector (``shape``) or a batch (``(batch,) + shape``)."""
    value = jnp.asarray(value, dtype)
    if value.shape == shape:
        return jnp.broadcast_to(value, (batch,) + shape)
    if value.shape != (batch,) + shape:
        raise ValueError(
            f"{name} must have shape {shape} or {(batch,) + shape} (batch, state); got {value.shape}"
        )
    return value


def _check_input(problem: OptEqProblem, x) -> jax.Array:
    if not hasattr(x, "shape"):
        x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must have a floating dtype, got {x.dtype}; convert it with x.astype(float)")
    want = problem.input_shape
    if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
        hint = " (add a batch axis: x[None])" if tuple(x.shape) == want else ""
        raise ValueError(
            f"x must have shape (batch,) + {want} for this problem; got {tuple(x.shape)}{hint}"
        )
    return x


def _resolve_backward(problem: OptEqProblem, backward, options) -> _backward.Backward:
    symmetric = problem.prior is None or type(problem.prior).scalar_jacobian
    if backward == "auto":
        backward = "cg" if symmetric else "gmres"
    mode = _backward.get(backward, **(options or {}))
    if mode.requires_symmetric and not symmetric:
        raise ConfigError(
            f"backward={mode.name!r} needs a symmetric system, but the prior "
            f"{type(problem.prior).__name__} makes I - J non-symmetric; use backward='gmres' "
            "or 'fixed_point'"
        )
    return mode


def equilibrium(
    problem: OptEqProblem,
    x: jax.Array,
    *,
    solver="nesterov",
    tol: float = 1e-5,
    max_steps: int = 200,
    backward="auto",
    solver_options: dict | None = None,
    backward_options: dict | None = None,
    feature: jax.Array | None = None,
    anchor: jax.Array | None = None,
    init: jax.Array | None = None,
    backward_probe: BackwardStats | None = None,
    certify: bool = True,
) -> tuple[jax.Array, SolveInfo]:
    """Solve the OptEq problem for a batch and return ``(z_star, info)``.

    Args:
      problem: an :class:`OptEqProblem`.
      x: inputs, shape ``(batch,) + problem.input_shape``.
      solver: ``"nesterov"`` (default: FISTA with adaptive restart on G + R), ``"fixed_point"``,
        ``"anderson"``, ``"halpern"``, or a :mod:`optjax.solvers` instance.
      tol: per-sample tolerance on the residual ||z - S(z)|| (absolute, l2).
      max_steps: iteration cap per sample.
      backward: ``"auto"`` (conjugate gradients when I - J is symmetric, else GMRES), ``"cg"``,
        ``"gmres"``, ``"fixed_point"``, ``"phantom"``, or a :mod:`optjax.backward` instance.
      solver_options, backward_options: options for a solver or mode given by name; unknown
        names are rejected.
      feature: per-sample ``u`` of the :class:`~optjax.priors.Quadratic` prior.
      anchor: Halpern anchor(s) ``u`` (default 0); the iteration starts there.
      init: initial point(s) (default 0, or the anchor for Halpern); no gradient flows into it.
      backward_probe: see :func:`backward_probe`.
      certify: compute ``||W||`` (exactly for a dense W, unless ``problem.weight_norm`` is
        given), check convexity and bound the suboptimality. ``False`` skips all three (the
        exact norm of a 512 x 256 matrix costs about 17 evaluations of T on a CPU): the
        modulus is then NaN and the bounds infinite, and convexity is the caller's promise.

    Raises:
      NonconvexError: when, outside of tracing, s_sigma * ||W||^2 > 1 (under ``jit`` the samples
        get ``Status.NONCONVEX`` and ``converged = False`` instead).
      ConfigError, ValueError, TypeError: bad options, shapes or dtypes, with what to change.
    """
    if not isinstance(problem, OptEqProblem):
        raise TypeError(f"problem must be an optjax.OptEqProblem, got {type(problem).__name__}")
    positive_int("equilibrium", "max_steps", max_steps)
    require(
        isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol > 0,
        f"tol must be a positive number, got {tol!r}",
    )
    solver_cfg = _solvers.get(solver, **(solver_options or {}))
    backward_cfg = _resolve_backward(problem, backward, backward_options)
    x = _check_input(problem, x)

    c = injection(problem, x)
    dtype = c.dtype
    batch = x.shape[0]
    shape = problem.state_shape

    prior = problem.prior
    if prior is not None and type(prior).needs_feature:
        if feature is None:
            raise ValueError(
                f"the {type(prior).__name__} prior needs feature=u, the per-sample vector "
                f"the equilibrium should stay near (shape {shape} or {(batch,) + shape})"
            )
        feature = _batched("feature", feature, batch, shape, dtype)
    elif feature is not None:
        raise ValueError("feature= is only used by the Quadratic prior; this problem has none")

    if anchor is not None:
        if not solver_cfg.uses_anchor:
            raise ConfigError(
                f"anchor= is used by the Halpern solver only, not {solver_cfg.name!r}; pass "
                "solver='halpern', or use init= to warm-start"
            )
        anchor = _batched("anchor", anchor, batch, shape, dtype)
    if init is not None:
        z0 = _batched("init", init, batch, shape, dtype)
    elif anchor is not None:
        z0 = anchor
    else:
        z0 = jnp.zeros((batch,) + shape, dtype)
    if solver_cfg.uses_anchor and anchor is None:
        anchor = jnp.zeros((batch,) + shape, dtype)

    if certify:
        # Computed once, then carried by the problem into the certificate.
        problem = dataclasses.replace(problem, weight_norm=problem.spectral_norm())
        margin = convexity_margin(problem)
    else:
        margin = jnp.asarray(1.0, dtype)
    if _is_concrete(margin):
        slack = 64 * float(jnp.finfo(dtype).eps)
        if float(margin) < -slack:
            raise NonconvexError(
                f"s_sigma * ||W||^2 = {1 - float(margin):.6g} > 1 (||W|| = "
                f"{float(problem.spectral_norm()):.6g}, activation {problem.activation.name!r} "
                f"with s_sigma = {problem.activation.slope_bound}): the unit layer is no longer the "
                "gradient of a convex function, so no equilibrium or certificate is guaranteed. "
                "Rescale W (e.g. W / ||W||) or use a norm-controlled parametrisation."
            )
        convex = jnp.asarray(True)
    else:
        convex = margin >= -64 * jnp.finfo(dtype).eps

    probe = backward_probe if backward_probe is not None else BackwardStats.zeros(batch, dtype)
    map_fn = EquilibriumMap(problem.activation, problem.compute_dtype)
    params = (problem.weight, problem.prior)
    z_star, stats = fixed_point(
        map_fn,
        solver_cfg,
        backward_cfg,
        float(tol),
        int(max_steps),
        params,
        (c, feature),
        z0,
        anchor,
        probe,
    )

    cert = make_certificate(problem, z_star, stats.residual, x, feature, certified=certify)
    finite_in = jnp.all(jnp.isfinite(x.reshape(batch, -1)), axis=1)
    finite_out = jnp.all(jnp.isfinite(z_star.reshape(batch, -1)), axis=1)
    nonfinite = ~(finite_in & finite_out & jnp.isfinite(stats.residual))
    reached = stats.residual <= tol
    status = jnp.where(
        ~convex,
        Status.NONCONVEX,
        jnp.where(nonfinite, Status.NONFINITE, jnp.where(reached, Status.CONVERGED, Status.MAX_STEPS)),
    ).astype(jnp.int32)
    info = SolveInfo(
        steps=stats.steps,
        evaluations=stats.evaluations,
        converged=status == Status.CONVERGED,
        nonfinite=nonfinite,
        status=status,
        certificate=cert,
        tol=float(tol),
        max_steps=int(max_steps),
        solver=solver_cfg.name,
    )
    return z_star, info
