r"""Equilibrium problems: what a model family supplies to the one engine, and the OptEq unit layer.

The engine (:func:`optjax.equilibrium`) solves, for every sample of a batch, a fixed point
:math:`z^\star = S(z^\star; \theta, d_i)` of a problem's map :math:`S`, differentiates it
implicitly and certifies it. A problem type (a subclass of :class:`EquilibriumProblem`, a pytree)
supplies:

* its map :math:`S` for one sample (:meth:`EquilibriumProblem.equilibrium_map`: a hashable
  :class:`~optjax.operator.EquilibriumMap`-like object), the shared parameters :math:`\theta`
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

The unit OptEq layer (docs/maths.md, sections 2, 3 and 5):

.. math::

    T(z) = W^\top \sigma(W z + U x + b), \qquad S = \operatorname{prox}_R \circ T, \qquad
    F(z; x) = \tfrac12\|z\|^2 - \textstyle\sum_i \Phi\big((W z + U x + b)_i\big) + R(z).

With :math:`s_\sigma = \sup \sigma'` (1 for most activations, 1/4 for the sigmoid),
:math:`F - R` is convex and 1-smooth when :math:`s_\sigma\|W\|^2 \le 1`, and
:math:`(1 - s_\sigma\|W\|^2 + \mu_R)`-strongly convex, where :math:`\mu_R` is the modulus the
prior adds.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from optjax import activations as _activations
from optjax import linear_map
from optjax.priors import Prior

__all__ = [
    "EquilibriumProblem",
    "Defect",
    "Conditions",
    "NonconvexError",
    "OptEqProblem",
    "convexity_margin",
    "injection",
    "rounding_slack",
    "strong_convexity",
]


class NonconvexError(ValueError):
    """The problem breaks the convexity condition its guarantees rest on (for a unit layer,
    s_sigma * ||W||^2 <= 1)."""


class Defect(enum.IntFlag):
    """Why a problem is not what its guarantees assume (a bit set, shared by the batch)."""

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


def rounding_slack(dtype) -> float:
    """Margin below which a convexity margin counts as zero: 64 machine epsilons of ``dtype``
    (a weight normalised to ``||W|| = 1`` computes as ``1 + O(eps)``)."""
    return 64 * float(jnp.finfo(dtype).eps)


def finite_tree(tree) -> jax.Array:
    """True when every floating leaf of ``tree`` is finite (a scalar bool array)."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _is_concrete(tree) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def injected_input_shape(input_weight, default: tuple[int, ...]) -> tuple[int, ...]:
    """Per-sample shape of x for an injection ``U x``: ``(p,)`` for a ``(d, p)`` matrix ``U``,
    ``default`` (x injected as is) when there is none."""
    return default if input_weight is None else (int(input_weight.shape[1]),)


class EquilibriumProblem:
    """Base class of the problem types the engine solves; see the module docstring.

    Subclasses are frozen dataclasses registered as pytrees. They must define
    ``state_shape``, ``input_shape``, :meth:`equilibrium_map`, :meth:`parameters` and
    :meth:`sample_data`; the other methods have defaults (no objective, no assumptions, no
    certificate).
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

    def equilibrium_map(self):  # pragma: no cover - abstract
        """The static (hashable) map object: ``map(z, params, data_i) -> S(z)`` for one
        sample, with optional ``objective``, ``value_and_map``, ``jacobian_transpose`` and
        ``solve_map`` / ``solve_state`` / ``equilibrium_point`` methods (see
        :mod:`optjax.implicit`)."""
        raise NotImplementedError

    def parameters(self):  # pragma: no cover - abstract
        """The pytree shared by the batch that the map takes (differentiable)."""
        raise NotImplementedError

    def sample_data(self, x: jax.Array, feature=None):  # pragma: no cover - abstract
        """The per-sample pytree (leading batch axis) the map takes, computed from ``x``."""
        raise NotImplementedError

    # -- defaults --------------------------------------------------------------------------------
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
        (``backward="splitting"``; see :class:`optjax.backward.Splitting`)."""
        return False

    @property
    def auto_backward(self) -> str:
        """The backward mode ``backward="auto"`` picks: the map's own splitting where it has
        one, conjugate gradients when I - J is symmetric, else GMRES."""
        if self.adjoint_splitting:
            return "splitting"
        return "cg" if self.symmetric_jacobian else "gmres"

    @property
    def dtype(self):
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(self)
                  if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)]
        return jnp.result_type(*leaves) if leaves else jnp.float32

    def check_input(self, x) -> jax.Array:
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

    def check_feature(self, feature) -> None:
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
        if not _is_concrete(defects) or int(defects) == 0:
            return
        lines = [self.defect_reasons.get(bit, bit.name) for bit in Defect if int(defects) & bit]
        error = NonconvexError if int(defects) & (Defect.NONCONVEX_WEIGHTS |
                                                  Defect.NONCONVEX_PRIOR) else ValueError
        raise error(f"this {self.kind} problem cannot be solved as posed: " + "; ".join(lines))

    def certificate(self, point, last, residual, params, data, conditions: Conditions):
        """The :class:`~optjax.certificate.Certificate` of the returned points ``point =
        S(last)``, ``residual = ||last - point||`` (no gradient). Default: the residual, and
        bounds ``r^2 / (2 mu)``, ``r / mu`` from the conditions' modulus (none when NaN)."""
        from optjax.certificate import Certificate, bounds

        nan = jnp.full(residual.shape, jnp.nan, residual.dtype)
        sub, dist = bounds(residual, conditions.modulus)
        return Certificate(residual=residual, objective=nan, modulus=conditions.modulus,
                           suboptimality_bound=sub, distance_bound=dist,
                           weight_norm=conditions.norm)


def _check_weight(w):
    if linear_map.is_dense(w):
        if getattr(w, "ndim", None) != 2:
            raise ValueError(
                f"weight W must be a 2-D (n, d) array, got shape {getattr(w, 'shape', None)}")
        if not jnp.issubdtype(w.dtype, jnp.floating):
            raise TypeError(f"weight W must have a floating dtype, got {w.dtype}")


def _array_like(leaf) -> bool:
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class OptEqProblem(EquilibriumProblem):
    """A unit OptEq layer.

    Attributes:
      weight: ``W``, a dense ``(n, d)`` array or a linear map (see :mod:`optjax.linear_map`).
      activation: an :class:`optjax.Activation` or its registry name (static).
      input_weight: ``U``, ``(n, p)``; ``None`` means the input already is the injection
        ``U x`` (shape ``(n,)`` per sample).
      bias: ``b``, ``(n,)`` (or the per-sample output shape of ``W``); ``None`` means 0.
      prior: a :class:`optjax.priors.Prior` or ``None`` (``R = 0``).
      weight_norm: a known upper bound on ``||W||`` (e.g. maintained by a normalisation);
        ``None``: computed when a certificate needs it (see :func:`optjax.equilibrium`).
      compute_dtype: ``None``, or a lower precision (``jnp.bfloat16``) for the products with W
        inside T (static); the state, the residuals and the objective stay in the input dtype.
        The residual then cannot fall below that precision: use a tolerance to match.
      precision: the ``jax.lax.Precision`` of the products with a dense W (static). ``None``
        (default) asks for full float32 accuracy (``HIGHEST``): on GPUs and TPUs the default
        matmul precision rounds to TF32 or bfloat16 (about 1e-3 relative), and a tolerance
        below that would never be reached. ``"default"`` uses the backend's default (faster
        on accelerators; reachable tolerances about 1e-3 relative).
    """

    weight: Any
    activation: _activations.Activation = dataclasses.field(metadata=dict(static=True))
    input_weight: jax.Array | None = None
    bias: jax.Array | None = None
    prior: Prior | None = None
    weight_norm: jax.Array | None = None
    compute_dtype: object = dataclasses.field(default=None, metadata=dict(static=True))
    precision: object = dataclasses.field(default=None, metadata=dict(static=True))

    kind: ClassVar[str] = "opteq"
    default_solver: ClassVar[str] = "safeguarded_anderson"
    defect_reasons: ClassVar[dict] = {
        Defect.NONCONVEX_WEIGHTS: "the weights break convexity (s_sigma * ||W||^2 > 1); "
        "normalise W so that ||W|| <= 1 (e.g. W / ||W||, or a norm-controlled layer)",
        Defect.NONCONVEX_PRIOR: "a prior parameter makes R nonconvex (L1 lam < 0 or "
        "Quadratic mu < 0); use a nonnegative value",
        Defect.INFEASIBLE: "the prior's constraint set is empty (Box lower > upper, or Ball "
        "radius < 0); fix the bounds",
        Defect.NONFINITE_PARAMETERS: "NaN or Inf in W, U, b or the prior's parameters; check "
        "the weights",
    }

    def __post_init__(self):
        act = self.activation
        if isinstance(act, str):
            object.__setattr__(self, "activation", _activations.get(act))
        elif not isinstance(act, _activations.Activation):
            raise TypeError(
                "activation must be an optjax Activation or a registry name such as 'relu'; "
                f"got {type(act).__name__}. Wrap your own map with "
                "optjax.activations.from_function(fn), which checks that it is a proximal operator."
            )
        if self.prior is not None and not isinstance(self.prior, Prior):
            raise TypeError(
                f"prior must be an optjax.priors.Prior or None, got {type(self.prior).__name__}")
        if self.precision not in (None, "default", "highest", "high") and not isinstance(
                self.precision, jax.lax.Precision):
            raise ValueError(f"precision must be None, 'default', 'high', 'highest' or a "
                             f"jax.lax.Precision; got {self.precision!r}")
        # Pytree unflattening rebuilds the problem with placeholder leaves: check shapes only
        # when the leaves are arrays (or tracers).
        if not all(_array_like(leaf) for leaf in jax.tree_util.tree_leaves(self.weight)):
            return
        w = self.weight
        _check_weight(w)
        n_shape = linear_map.out_shape(w)
        if self.input_weight is not None and _array_like(self.input_weight):
            u = self.input_weight
            if getattr(u, "ndim", None) != 2 or (u.shape[0],) != n_shape:
                n = n_shape[0] if len(n_shape) == 1 else n_shape
                raise ValueError(
                    f"input_weight U must be an (n, p) array with n = {n} (the rows of W); got "
                    f"shape {getattr(u, 'shape', None)}")
        if self.bias is not None and _array_like(self.bias) and \
                tuple(jnp.shape(self.bias)) != n_shape:
            raise ValueError(
                f"bias b must have shape {n_shape} (the output shape of W), got "
                f"{jnp.shape(self.bias)}")

    # -- shapes -------------------------------------------------------------------------------
    @property
    def state_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the equilibrium z (the input shape of W)."""
        return linear_map.in_shape(self.weight)

    @property
    def injection_shape(self) -> tuple[int, ...]:
        """Per-sample shape of W z + c (the output shape of W)."""
        return linear_map.out_shape(self.weight)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample shape of x."""
        return injected_input_shape(self.input_weight, self.injection_shape)

    @property
    def dtype(self):
        return linear_map.dtype(self.weight)

    @property
    def symmetric_jacobian(self) -> bool:
        return self.prior is None or type(self.prior).scalar_jacobian

    # -- the engine's interface -----------------------------------------------------------------
    def equilibrium_map(self):
        from optjax.operator import EquilibriumMap

        return EquilibriumMap(self.activation, self.compute_dtype, _precision(self.precision))

    def parameters(self):
        return (self.weight, self.prior)

    def sample_data(self, x, feature=None):
        return (injection(self, x), feature)

    def check_feature(self, feature) -> None:
        if self.prior is not None and type(self.prior).needs_feature:
            if feature is None:
                raise ValueError(
                    f"the {type(self.prior).__name__} prior needs feature=u, the per-sample "
                    f"vector the equilibrium should stay near (shape {self.state_shape} or "
                    f"(batch,) + {self.state_shape})")
        elif feature is not None:
            raise ValueError("feature= is only used by the Quadratic prior; this problem has none")

    def spectral_norm(self) -> jax.Array:
        """``weight_norm`` when given, else the exact ``||W||`` (dense) or the map's certified
        bound (no gradient flows through it)."""
        if self.weight_norm is not None:
            return jnp.asarray(self.weight_norm)
        return jax.lax.stop_gradient(linear_map.spectral_norm(self.weight))

    def with_norm(self) -> "OptEqProblem":
        """A copy carrying ``weight_norm`` = the exact ``||W||`` (dense) or the map's certified
        bound, computed now: compute it once per value of W and reuse the problem across
        calls. Recompute it whenever W changes (a stale bound makes certificates false)."""
        from optjax._lapack import single_threaded

        with single_threaded():
            norm = jax.block_until_ready(linear_map.spectral_norm(self.weight))
        return dataclasses.replace(self, weight_norm=norm)

    def prepare(self, *, certify: bool) -> "OptEqProblem":
        if certify and self.weight_norm is None and _is_concrete(self.weight):
            # Eager call: the norm of these weights is computed once and reused by later calls.
            return dataclasses.replace(self, weight_norm=linear_map.cached_norm(self.weight))
        return self

    def conditions(self, *, certify: bool) -> Conditions:
        r"""Defects, the modulus :math:`\mu = 1 - s_\sigma\|W\|^2 + \mu_R` and :math:`\|W\|`.

        ``certify=True``: :math:`\|W\|` is ``weight_norm`` or computed exactly (certified for a
        convolution), so NONCONVEX_WEIGHTS is decided exactly. ``certify=False``: no norm is
        computed; only a few power-iteration steps give a certified *lower* bound on
        :math:`\|W\|`, which flags weights that are clearly nonconvex (the bound exceeds
        :math:`1/\sqrt{s_\sigma}`); the modulus is NaN and no bound is certified."""
        dtype = self.dtype
        slack = rounding_slack(dtype)
        bits = jnp.zeros((), jnp.int32)
        if self.prior is not None:
            bits = bits | self.prior.defects()
        finite = finite_tree((self.weight, self.input_weight, self.bias, self.prior))
        bits = bits | jnp.where(finite, 0, int(Defect.NONFINITE_PARAMETERS)).astype(jnp.int32)
        s = self.activation.slope_bound
        if certify:
            norm = self.spectral_norm().astype(dtype)
            margin = 1.0 - s * norm**2
            mu = strong_convexity(self, norm)
        else:
            low = jax.lax.stop_gradient(linear_map.norm_lower_bound(self.weight)).astype(dtype)
            margin = 1.0 - s * low**2
            norm = mu = jnp.asarray(jnp.nan, dtype)
        nonconvex = margin < -slack
        bits = bits | jnp.where(nonconvex, int(Defect.NONCONVEX_WEIGHTS), 0).astype(jnp.int32)
        return Conditions(bits, mu, norm)

    def validate(self, conditions: Conditions) -> None:
        defects = conditions.defects
        if not _is_concrete(defects) or not int(defects) & Defect.NONCONVEX_WEIGHTS:
            return super().validate(conditions)
        s = self.activation.slope_bound
        if _is_concrete(conditions.norm) and bool(jnp.isfinite(conditions.norm)):
            norm = float(conditions.norm)
            what = f"s_sigma * ||W||^2 = {s * norm**2:.6g} > 1 (||W|| = {norm:.6g}"
        else:  # certify=False: only the lower bound is known
            low = float(linear_map.norm_lower_bound(self.weight))
            what = f"s_sigma * ||W||^2 >= {s * low**2:.6g} > 1 (||W|| >= {low:.6g}"
        raise NonconvexError(
            f"{what}, activation {self.activation.name!r} with s_sigma = {s}): the unit layer is "
            "no longer the gradient of a convex function, so no equilibrium or certificate is "
            "guaranteed. Rescale W (e.g. W / ||W||) or use a norm-controlled layer "
            "(optjax.nn.OptEqDense, OptEqConv).")

    def certificate(self, point, last, residual, params, data, conditions: Conditions):
        from optjax.certificate import make_certificate

        return make_certificate(self, point, residual, params, data, conditions)


def _precision(precision):
    if precision is None:
        return jax.lax.Precision.HIGHEST
    if precision == "default":
        return None
    if isinstance(precision, str):
        return jax.lax.Precision[precision.upper()]
    return precision


def injection(problem: OptEqProblem, x: jax.Array) -> jax.Array:
    """The input injection c = U x + b for a batch ``x`` of shape ``(B,) + input_shape``."""
    if problem.input_weight is None:
        c = x
    else:
        c = jnp.matmul(x, problem.input_weight.T, precision=_precision(problem.precision))
    if problem.bias is not None:
        c = c + problem.bias
    return c


def convexity_margin(problem: OptEqProblem) -> jax.Array:
    r""":math:`1 - s_\sigma \|W\|^2`: nonnegative iff the unit operator is the gradient of a
    convex 1-smooth function (and so firmly nonexpansive, and G convex)."""
    return 1.0 - problem.activation.slope_bound * problem.spectral_norm() ** 2


def strong_convexity(problem: OptEqProblem, norm=None) -> jax.Array:
    r"""The modulus :math:`\mu = 1 - s_\sigma\|W\|^2 + \mu_R` of :math:`G + R`; a value
    :math:`\le 0` means no strong convexity is certified. A margin within rounding of zero
    (``0 < 1 - s ||W||^2 <= 64 eps``, e.g. a W normalised to ``||W|| = 1``) counts as zero: it
    certifies nothing, rather than a modulus of 1e-16 and bounds of 1e30. ``norm``: the
    ``||W||`` to use (default :meth:`OptEqProblem.spectral_norm`)."""
    extra = 0.0 if problem.prior is None else problem.prior.strong_convexity
    norm = problem.spectral_norm() if norm is None else norm
    margin = 1.0 - problem.activation.slope_bound * norm**2
    slack = rounding_slack(jnp.result_type(margin, float))
    margin = jnp.where(margin <= slack, jnp.minimum(margin, 0.0), margin)
    return margin + jax.lax.stop_gradient(jnp.asarray(extra, margin.dtype))
