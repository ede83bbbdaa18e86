r"""The engine: ``z_star, info = equilibrium(problem, x, ...)`` for every problem type.

For every sample of the batch ``x`` it solves the problem's fixed point

.. math:: z^\star = S(z^\star; \theta, d(x)),

for an OptEq problem :math:`S = \operatorname{prox}_R \circ T`, whose fixed point is
:math:`\arg\min_z G(z; x) + R(z)`; returns :math:`z^\star` (differentiable, with implicit
gradients) and a :class:`~optjax.SolveInfo` with per-sample steps, evaluations of the map,
residual, objective, convergence and non-finite flags, status codes and the certificate. The
same function solves deep OptEq chains (:mod:`optjax.families.deep`), DEQ (:mod:`optjax.families.deq`) and
monotone DEQ (:mod:`optjax.families.mondeq`) problems: a problem type supplies its map and what it knows
about it (:class:`~optjax.EquilibriumProblem`), the engine does the rest.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from optjax import solvers as _solvers
from optjax.config import ConfigError, positive_int
from optjax.engine import backward as _backward
from optjax.engine.implicit import fixed_point
from optjax.engine.problem import Conditions, Defect, EquilibriumProblem
from optjax.engine.properties import refusal
from optjax.engine.result import BackwardStats, SolveInfo, status_codes

__all__ = ["equilibrium", "backward_probe"]


def backward_probe(batch_size: int, dtype: DTypeLike = jnp.float32) -> BackwardStats:
    """A zero :class:`BackwardStats` to pass as ``equilibrium(..., backward_probe=probe)``.

    The gradient of the loss with respect to it *is* the backward solve's statistics::

        def loss(params, probe):
            z, info = optjax.equilibrium(make_problem(params), x, backward_probe=probe)
            return jnp.sum(z ** 2)

        grads, stats = jax.grad(loss, argnums=(0, 1))(params, optjax.backward_probe(len(x)))
        stats.steps, stats.residual, stats.converged   # per sample

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
      >>> def loss(W, probe):
      ...     z, _ = optjax.equilibrium(optjax.OptEqProblem(W, "relu"), x, backward_probe=probe)
      ...     return jnp.sum(z ** 2)
      >>> grad, stats = jax.grad(loss, argnums=(0, 1))(W, optjax.backward_probe(len(x)))
      >>> grad.shape, stats.steps.shape
      ((8, 4), (2,))
      >>> bool((stats.converged == 1).all())      # every sample's backward solve reached its tol
      True
    """
    return BackwardStats.zeros(batch_size, dtype)


def _static_tol(tol: Any) -> float:
    if isinstance(tol, jax.core.Tracer):
        raise ConfigError(
            "tol is a static setting (it fixes the solver's stopping test when the solve is "
            "compiled), but a traced value was passed: under jax.jit, close over it or mark it "
            "static (static_argnames=('tol',)); pass a Python float")
    try:
        value = float(tol)
    except (TypeError, ValueError):
        value = None
    if isinstance(tol, bool) or value is None or not value > 0 or value == float("inf"):
        raise ConfigError(f"tol must be a positive finite number, got {tol!r}")
    return value


def _batched(name: str, value: ArrayLike, batch: int, shape: tuple[int, ...],
             dtype: DTypeLike) -> jax.Array:
    """Broadcast a per-sample array (``shape``) or a batch (``(batch,) + shape``)."""
    value = jnp.asarray(value, dtype)
    if value.shape == shape:
        return jnp.broadcast_to(value, (batch,) + shape)
    if value.shape != (batch,) + shape:
        raise ValueError(
            f"{name} must have shape {shape} or {(batch,) + shape} (batch, state); got "
            f"{value.shape}")
    return value


def _resolve_backward(problem: EquilibriumProblem, backward: str | _backward.Backward,
                      options: dict | None) -> _backward.Backward:
    symmetric = problem.symmetric_jacobian
    if backward == "auto":
        backward = problem.auto_backward
    mode = _backward.get(backward, **(options or {}))
    if mode.requires_splitting and not problem.adjoint_splitting:
        raise ConfigError(
            f"backward={mode.name!r} runs the map's own splitting on the backward system, which "
            f"this {problem.kind} problem does not have (a monDEQ solved with "
            "splitting='peaceman_rachford' has it); use backward='gmres', 'cg' or 'fixed_point'")
    if mode.requires_symmetric and not symmetric:
        raise ConfigError(
            f"backward={mode.name!r} needs a symmetric system, but I - J is not symmetric for "
            f"this {problem.kind} problem{' (its prior)' if problem.kind == 'opteq' else ''}; use "
            "backward='gmres' or 'fixed_point'")
    return mode


def _registered_solvers() -> list[type[_solvers.Solver]]:
    """The solver types a refusal proposes instead (optjax's own; jaxopt's are references)."""
    return [cls for cls in _solvers.SOLVERS.values() if not cls.name.startswith("jaxopt_")]


def _data_dtype(data: Any) -> jnp.dtype:
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(data)
              if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.result_type(*leaves)


def equilibrium(
    problem: EquilibriumProblem,
    x: jax.Array,
    *,
    solver: str | _solvers.Solver | None = None,
    tol: float = 1e-5,
    max_steps: int = 200,
    backward: str | _backward.Backward = "auto",
    solver_options: dict | None = None,
    backward_options: dict | None = None,
    feature: jax.Array | None = None,
    anchor: jax.Array | None = None,
    init: jax.Array | None = None,
    backward_probe: BackwardStats | None = None,
    certify: bool = True,
    trace: bool = False,
) -> tuple[jax.Array, SolveInfo]:
    """Solve ``problem`` for a batch and return ``(z_star, info)``.

    Args:
      problem: an :class:`~optjax.EquilibriumProblem`: :class:`optjax.OptEqProblem`,
        :class:`optjax.families.deep.DeepProblem`, :class:`optjax.families.deq.DEQProblem`,
        :class:`optjax.families.mondeq.MonDEQProblem`, or your own.
      x: inputs, shape ``(batch,) + problem.input_shape``.
      solver: a name in ``optjax.solvers.SOLVERS`` (``"safeguarded_anderson"``,
        ``"anderson"``, ``"nesterov"``, ``"fixed_point"``, ``"halpern"``, and jaxopt's
        ``"jaxopt_anderson"``, ``"jaxopt_fixed_point"`` as references) or a
        :mod:`optjax.solvers` instance; ``None``: the problem's default (for OptEq the
        safeguarded Anderson acceleration, which keeps the objective monotone and needs the
        fewest evaluations of T in benchmarks/RESULTS.md; ``"anderson"`` for DEQ).
      tol: per-sample tolerance on the residual ||z - S(z)|| (absolute, l2), a Python number.
      max_steps: iteration cap per sample.
      backward: ``"auto"`` (the map's own splitting where it has one, i.e. a Peaceman--Rachford
        monDEQ; else conjugate gradients when I - J is symmetric, else GMRES), ``"cg"``,
        ``"gmres"``, ``"fixed_point"``, ``"splitting"``, ``"phantom"``, or a
        :mod:`optjax.engine.backward` instance.
      solver_options, backward_options: options for a solver or mode given by name; unknown
        names are rejected.
      feature: per-sample ``u`` of the :class:`~optjax.convex.priors.Quadratic` prior.
      anchor: Halpern anchor(s) ``u`` (default 0); the iteration starts there.
      init: initial point(s) (default 0, or the anchor for Halpern); no gradient flows into it.
      backward_probe: see :func:`backward_probe`.
      certify: check the problem's assumptions and bound the suboptimality (for OptEq:
        ``||W||`` from ``problem.weight_norm``, or computed exactly -- once per weight array
        when called eagerly, every call inside your own ``jit`` unless ``weight_norm`` is
        given; see :meth:`optjax.OptEqProblem.with_norm`). ``False`` computes no norm: the
        bounds are infinite, and only clearly nonconvex weights are detected (a cheap
        certified lower bound on ``||W||``).
      trace: record every sample's residual (and objective, where the solver computes it) at
        every step in ``info.trace`` (fixed size ``(batch, max_steps + 1)``, under ``jit``);
        False (default) records nothing and costs nothing.

    Raises:
      ~optjax.NonconvexError: when, outside of tracing, the problem breaks convexity (under ``jit`` the
        samples get ``Status.NONCONVEX`` with the reason in ``info.failures()``).
      ~optjax.ConfigError, ValueError, TypeError: bad options, shapes, dtypes or problem parameters,
        with what to change.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> problem = optjax.OptEqProblem(0.9 * W / jnp.linalg.norm(W, 2), "relu")
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))
      >>> z, info = optjax.equilibrium(problem, x, tol=1e-5)
      >>> z.shape, bool(info.converged.all()), bool((info.residual <= 1e-5).all())
      ((2, 4), True, True)
      >>> loss = lambda p: jnp.sum(optjax.equilibrium(p, x, certify=False)[0] ** 2)
      >>> jax.grad(loss)(problem).weight.shape              # implicit gradients
      (8, 4)
    """
    if not isinstance(problem, EquilibriumProblem):
        raise TypeError(
            "problem must be an optjax equilibrium problem (OptEqProblem, deep.DeepProblem, "
            f"deq.DEQProblem, mondeq.MonDEQProblem); got {type(problem).__name__}")
    positive_int("equilibrium", "max_steps", max_steps)
    tol = _static_tol(tol)
    if not isinstance(certify, bool):
        raise ConfigError(f"certify must be True or False, got {certify!r}")
    solver_cfg = _solvers.get(problem.default_solver if solver is None else solver,
                              **(solver_options or {}))
    if not isinstance(trace, bool):
        raise ConfigError(f"trace must be True or False, got {trace!r}")
    if trace:
        solver_cfg = solver_cfg.replace(trace=True)
    refused = refusal(solver_cfg, problem, _registered_solvers())
    if refused is not None:
        raise ConfigError(refused)
    solver_cfg = solver_cfg.specialise(problem.map_properties)
    backward_cfg = _resolve_backward(problem, backward, backward_options)
    x = problem.check_input(x)
    problem.check_feature(feature)
    if anchor is not None and not solver_cfg.uses_anchor:
        raise ConfigError(
            f"anchor= is used by the Halpern solver only, not {solver_cfg.name!r}; pass "
            "solver='halpern', or use init= to warm-start")

    problem = problem.prepare(certify=certify)
    conditions = _conditions(problem, certify)
    # A defective problem certifies nothing: its bounds are infinite whatever the norm says.
    conditions = conditions._replace(modulus=jnp.where(conditions.defects == 0,
                                                       conditions.modulus, jnp.nan))
    problem.validate(conditions)  # eager: a defective problem is refused with the reason

    batch = x.shape[0]
    data_dtype = _data_dtype(jax.eval_shape(problem.sample_data, x))
    shape = tuple(problem.state_shape)
    if feature is not None:
        feature = _batched("feature", feature, batch, shape, data_dtype)
    if anchor is not None:
        anchor = _batched("anchor", anchor, batch, shape, data_dtype)
    if init is not None:
        init = _batched("init", init, batch, shape, data_dtype)
    probe = backward_probe if backward_probe is not None else BackwardStats.zeros(batch, data_dtype)
    return _solve(problem, x, feature, anchor, init, probe, conditions, solver=solver_cfg,
                  backward=backward_cfg, tol=tol, max_steps=int(max_steps), certify=certify)


@functools.partial(jax.jit, static_argnames=("certify",))
def _conditions(problem: EquilibriumProblem, certify: bool) -> Conditions:
    return problem.conditions(certify=certify)


@functools.partial(jax.jit, static_argnames=("solver", "backward", "tol", "max_steps", "certify"))
def _solve(problem: EquilibriumProblem, x: jax.Array, feature: jax.Array | None,
           anchor: jax.Array | None, init: jax.Array | None, probe: BackwardStats,
           conditions: Conditions, *, solver: _solvers.Solver, backward: _backward.Backward,
           tol: float, max_steps: int, certify: bool) -> tuple[jax.Array, SolveInfo]:
    """The solve and its result, compiled once per configuration (also when called eagerly)."""
    batch = x.shape[0]
    params = problem.parameters()
    data = problem.sample_data(x, feature)
    dtype = _data_dtype(data)
    shape = tuple(problem.state_shape)
    if init is not None:
        z0 = init
    elif anchor is not None:
        z0 = anchor
    else:
        z0 = jnp.zeros((batch,) + shape, dtype)
    if solver.uses_anchor and anchor is None:
        anchor = jnp.zeros((batch,) + shape, dtype)

    z_star, stats = fixed_point(problem.equilibrium_map(), solver, backward, tol, max_steps,
                                params, data, jax.lax.stop_gradient(z0),
                                None if anchor is None else jax.lax.stop_gradient(anchor), probe)

    cert = problem.certificate(z_star, stats.last, stats.residual, params, data, conditions)
    finite_in = jnp.all(jnp.isfinite(x), axis=tuple(range(1, x.ndim)))
    finite_out = jnp.all(jnp.isfinite(z_star), axis=tuple(range(1, z_star.ndim)))
    nonfinite = ~(finite_in & finite_out & jnp.isfinite(stats.residual))
    status = status_codes(conditions.defects, nonfinite, stats.residual, tol)
    info = SolveInfo(
        steps=stats.steps,
        evaluations=stats.evaluations,
        converged=status == 0,
        nonfinite=nonfinite | ((conditions.defects & int(Defect.NONFINITE_PARAMETERS)) != 0),
        status=status,
        certificate=cert,
        defects=conditions.defects,
        tol=tol,
        max_steps=max_steps,
        solver=solver.name,
        problem=problem.kind,
        certified=certify,
        reasons=tuple((int(bit), text) for bit, text in problem.defect_reasons.items()),
        trace=stats.trace,
    )
    return z_star, info
