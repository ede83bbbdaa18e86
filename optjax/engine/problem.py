r"""Equilibrium problems: what a model family supplies to the one engine.

The engine (:func:`optjax.equilibrium`) solves, for every sample of a batch, a fixed point
:math:`z^\star = S(z^\star; \theta, d_i)` of a problem's map :math:`S`, differentiates it
implicitly and certifies it. A problem type (a subclass of :class:`EquilibriumProblem`, a pytree)
supplies:

* its map :math:`S` for one sample (:meth:`EquilibriumProblem.equilibrium_map`: a hashable
  :class:`~optjax.families.opteq.map.EquilibriumMap`-like object), the shared parameters :math:`\theta`
  (:meth:`~EquilibriumProblem.parameters`) and the per-sample data :math:`d_i` computed from the
  input (:meth:`~EquilibriumProblem.sample_data`);
* where it has them: its explicit objective :math:`F` with :math:`\operatorname{Fix} S =
  \arg\min F` (the map's ``objective`` / ``value_and_map``), a structured :math:`J^\top`
  (the map's ``jacobian_transpose``), whether :math:`J` is symmetric (conjugate gradients then
  solve the backward system), and another iteration with the same fixed points to solve with
  (the map's ``solve_map``);
* its assumptions, checked under ``jit`` (:meth:`~EquilibriumProblem.conditions`: a bit set of
  :class:`Defect` and the modulus its bounds use) and refused eagerly when the arrays are
  concrete (:meth:`~EquilibriumProblem.validate`);
* its certificate at the returned point (:meth:`~EquilibriumProblem.certificate`).
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from optjax.engine.certificate import Certificate, bounds
from optjax.engine.numerics import finite_tree, is_concrete
from optjax.engine.properties import MapProperty

__all__ = ["EquilibriumProblem", "Defect", "Conditions", "NonconvexError",
           "injected_input_shape"]


class NonconvexError(ValueError):
    """The problem breaks the convexity condition its guarantees rest on (for a unit layer,
    s_sigma * ||W||^2 <= 1).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
      >>> optjax.equilibrium(optjax.OptEqProblem(2 * W, "relu"), x)    # ||W|| = 1.8 > 1
      Traceback (most recent call last):
      ...
      optjax.engine.problem.NonconvexError: s_sigma * ||W||^2 = ... > 1 (||W|| = ..., activation ...
    """


class Defect(enum.IntFlag):
    """Why a problem is not what its guarantees assume (a bit set, shared by the batch).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
      >>> nonconvex = optjax.OptEqProblem(2 * W, "relu")          # ||W|| = 1.8 > 1
      >>> _, info = jax.jit(optjax.equilibrium)(nonconvex, x)    # under jit: flagged, not raised
      >>> optjax.Defect(int(info.defects)).name
      'NONCONVEX_WEIGHTS'
      >>> [optjax.Status(int(s)).name for s in info.status]
      ['NONCONVEX', 'NONCONVEX']
    """

    NONCONVEX_WEIGHTS = 1  # the weights break the convexity condition
    NONCONVEX_PRIOR = 2  # a prior parameter makes R nonconvex (L1 lam < 0, Quadratic mu < 0)
    INFEASIBLE = 4  # a constraint set is empty (Box lower > upper, Ball radius < 0)
    NONFINITE_PARAMETERS = 8  # NaN or Inf in the parameters


class Conditions(NamedTuple):
    """What the engine learns about a problem before solving it (all arrays, traceable).

    Attributes:
      defects: int32 scalar, a bit set of :class:`Defect`.
      modulus: the strong-convexity (or contraction) modulus the certificate's bounds use;
        ``<= 0`` or NaN: no bound is certified.
      norm: the operator norm the modulus was computed from (problem-specific; NaN if none).
    """

    defects: jax.Array
    modulus: jax.Array
    norm: jax.Array


def injected_input_shape(input_weight: Any, default: tuple[int, ...]) -> tuple[int, ...]:
    """Per-sample shape of x for an injection ``U x``: ``(p,)`` for a ``(d, p)`` matrix ``U``,
    ``default`` (x injected as is) when there is none."""
    return default if input_weight is None else (int(input_weight.shape[1]),)


class EquilibriumProblem:
    """Base class of the problem types the engine solves; see the module docstring.

    Subclasses are frozen dataclasses registered as pytrees. They must define
    ``state_shape``, ``input_shape``, :meth:`equilibrium_map`, :meth:`parameters` and
    :meth:`sample_data`; the other methods have defaults (no objective, no assumptions, no
    certificate).

    Examples:
      >>> import dataclasses
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> def scaled(z, a, x):                             # S(z) = a z + x, for one sample
      ...     return a * z + x
      >>> @jax.tree_util.register_dataclass
      ... @dataclasses.dataclass(frozen=True)
      ... class Scaled(optjax.EquilibriumProblem):         # a contraction when |a| < 1
      ...     a: jax.Array
      ...     state_shape = input_shape = (3,)
      ...     def equilibrium_map(self): return scaled     # static (hashable)
      ...     def parameters(self): return self.a          # shared by the batch, differentiable
      ...     def sample_data(self, x, feature=None): return x   # per sample
      >>> z, info = optjax.equilibrium(Scaled(jnp.array(0.5)), jnp.ones((2, 3)))
      >>> bool(jnp.allclose(z, 2.0, atol=1e-4)), info.problem   # z* = x / (1 - a)
      (True, 'equilibrium')
    """

    #: short name used in results and messages
    kind: ClassVar[str] = "equilibrium"
    #: the forward solver used when the caller names none
    default_solver: ClassVar[str] = "fixed_point"
    #: one line per :class:`Defect` bit this problem type can report, saying what to change
    defect_reasons: ClassVar[dict] = {
        Defect.NONFINITE_PARAMETERS: "NaN or Inf in the problem's parameters; check the weights",
    }

    # -- what a subclass supplies --------------------------------------------------------------
    @property
    def state_shape(self) -> tuple[int, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def equilibrium_map(self) -> Any:  # pragma: no cover - abstract
        """The static (hashable) map object: ``map(z, params, data_i) -> S(z)`` for one
        sample, with optional ``objective``, ``value_and_map``, ``jacobian_transpose`` and
        ``solve_map`` / ``solve_state`` / ``equilibrium_point`` methods (see
        :mod:`optjax.engine.implicit`)."""
        raise NotImplementedError

    def parameters(self) -> Any:  # pragma: no cover - abstract
        """The pytree shared by the batch that the map takes (differentiable)."""
        raise NotImplementedError

    def sample_data(self, x: jax.Array,
                    feature: jax.Array | None = None) -> Any:  # pragma: no cover - abstract
        """The per-sample pytree (leading batch axis) the map takes, computed from ``x``."""
        raise NotImplementedError

    # -- defaults --------------------------------------------------------------------------------
    @property
    def map_properties(self) -> MapProperty:
        """What the map guarantees when the problem's assumptions hold (see
        :mod:`optjax.engine.properties`); the solvers' needs are checked against it. Default:
        nothing (a plain DEQ)."""
        return MapProperty.NONE

    def input_lipschitz(self) -> jax.Array | None:
        r"""A certified upper bound on the Lipschitz constant (Euclidean norms, per sample) of
        :math:`x \mapsto z^\star(x)`, from the weights alone, or None when the family has
        none (a DEQ: nothing bounds its equilibrium's dependence on the input). Default: None."""
        return None

    @property
    def has_objective(self) -> bool:
        """Whether the map comes with an explicit objective F (Fix S = argmin F)."""
        return getattr(self.equilibrium_map(), "objective", None) is not None

    @property
    def symmetric_jacobian(self) -> bool:
        """Whether dS/dz is symmetric at every point (the backward system is then SPD)."""
        return False

    @property
    def adjoint_splitting(self) -> bool:
        """Whether the map solves the backward system with its own splitting
        (``backward="splitting"``; see :class:`optjax.engine.backward.Splitting`)."""
        return False

    @property
    def auto_backward(self) -> str:
        """The backward mode ``backward="auto"`` picks: the map's own splitting where it has
        one, conjugate gradients when I - J is symmetric, else GMRES."""
        if self.adjoint_splitting:
            return "splitting"
        return "cg" if self.symmetric_jacobian else "gmres"

    @property
    def dtype(self) -> Any:
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(self)
                  if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)]
        return jnp.result_type(*leaves) if leaves else jnp.float32

    def check_input(self, x: Any) -> jax.Array:
        """``x`` as an array of shape ``(batch,) + input_shape`` with a floating dtype, or a
        ValueError/TypeError that says what to change."""
        if not hasattr(x, "shape"):
            x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"x must have a floating dtype, got {x.dtype}; convert it with x.astype(float)")
        want = tuple(self.input_shape)
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
            hint = " (add a batch axis: x[None])" if tuple(x.shape) == want else ""
            raise ValueError(
                f"x must have shape (batch,) + {want} for this {self.kind} problem; got "
                f"{tuple(x.shape)}{hint}")
        return x

    def check_feature(self, feature: jax.Array | None) -> None:
        if feature is not None:
            raise ValueError(f"feature= is only used by the Quadratic prior of an OptEq problem; "
                             f"this {self.kind} problem has none")

    def prepare(self, *, certify: bool) -> "EquilibriumProblem":
        """The problem as the engine will solve it, called outside any trace of the engine's
        own: a problem may fill in derived data here (e.g. a norm cached for concrete weights)."""
        return self

    def conditions(self, *, certify: bool) -> Conditions:
        """Defects and modulus (traceable). Default: only non-finite parameters are a defect,
        and nothing is certified."""
        bad = ~finite_tree(self.parameters())
        nan = jnp.asarray(jnp.nan, self.dtype)
        defects = jnp.where(bad, int(Defect.NONFINITE_PARAMETERS), 0).astype(jnp.int32)
        return Conditions(defects, nan, nan)

    def validate(self, conditions: Conditions) -> None:
        """Raise when the (concrete) conditions show a defect; a no-op under tracing."""
        defects = conditions.defects
        if not is_concrete(defects) or int(defects) == 0:
            return
        lines = [self.defect_reasons.get(bit, bit.name) for bit in Defect if int(defects) & bit]
        error = NonconvexError if int(defects) & (Defect.NONCONVEX_WEIGHTS |
                                                  Defect.NONCONVEX_PRIOR) else ValueError
        # typeshed types a flag's name as str | None; a member's (bit.name) is never None
        raise error(f"this {self.kind} problem cannot be solved as posed: "
                    + "; ".join(lines))  # type: ignore[arg-type]

    def certificate(self, point: jax.Array, last: jax.Array, residual: jax.Array, params: Any,
                    data: Any, conditions: Conditions) -> Certificate:
        """The :class:`~optjax.Certificate` of the returned points ``point =
        S(last)``, ``residual = ||last - point||`` (no gradient). Default: the residual, and
        bounds ``r^2 / (2 mu)``, ``r / mu`` from the conditions' modulus (none when NaN)."""
        nan = jnp.full(residual.shape, jnp.nan, residual.dtype)
        sub, dist = bounds(residual, conditions.modulus)
        return Certificate(residual=residual, objective=nan, modulus=conditions.modulus,
                           suboptimality_bound=sub, distance_bound=dist,
                           weight_norm=conditions.norm)
