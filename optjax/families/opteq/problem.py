r"""The OptEq unit layer as an equilibrium problem (docs/maths.md, sections 2, 3 and 5):

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
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp

from optjax.convex import activations as _activations
from optjax.convex.priors import Prior
from optjax.engine.certificate import Certificate, make_certificate
from optjax.engine.numerics import finite_tree, is_array_like, is_concrete, rounding_slack
from optjax.engine.properties import MapProperty
from optjax.engine.problem import (Conditions, Defect, EquilibriumProblem, NonconvexError,
                                   injected_input_shape)
from optjax.families.opteq.map import EquilibriumMap
from optjax.linalg import linear_map
from optjax.linalg.lapack import single_threaded

__all__ = ["OptEqProblem", "injection", "operator", "convexity_margin", "strong_convexity",
           "matmul_precision"]


def _check_weight(w: Any) -> None:
    if linear_map.is_dense(w):
        if getattr(w, "ndim", None) != 2:
            raise ValueError(
                f"weight W must be a 2-D (n, d) array, got shape {getattr(w, 'shape', None)}")
        if not jnp.issubdtype(w.dtype, jnp.floating):
            raise TypeError(f"weight W must have a floating dtype, got {w.dtype}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class OptEqProblem(EquilibriumProblem):
    """A unit OptEq layer.

    Attributes:
      weight: ``W``, a dense ``(n, d)`` array or a linear map (see :mod:`optjax.linalg.linear_map`).
      activation: an :class:`optjax.Activation` or its registry name (static).
      input_weight: ``U``, ``(n, p)``; ``None`` means the input already is the injection
        ``U x`` (shape ``(n,)`` per sample).
      bias: ``b``, ``(n,)`` (or the per-sample output shape of ``W``); ``None`` means 0.
      prior: a :class:`optjax.convex.priors.Prior` or ``None`` (``R = 0``).
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

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> kw, ku, kx = jax.random.split(jax.random.PRNGKey(0), 3)
      >>> W = jax.random.normal(kw, (8, 4))
      >>> W = 0.9 * W / jnp.linalg.norm(W, 2)            # s_sigma ||W||^2 <= 1: convex
      >>> U = jax.random.normal(ku, (8, 3))
      >>> problem = optjax.OptEqProblem(W, "relu", input_weight=U, bias=jnp.zeros(8))
      >>> problem.state_shape, problem.input_shape       # z: (d,), x: (p,)
      ((4,), (3,))
      >>> z, info = optjax.equilibrium(problem, jax.random.normal(kx, (2, 3)))
      >>> z.shape, bool(info.converged.all())
      ((2, 4), True)
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

    if TYPE_CHECKING:  # the dataclass's __init__, with activation also given by name
        def __init__(self, weight: Any, activation: _activations.Activation | str,
                     input_weight: jax.Array | None = None, bias: jax.Array | None = None,
                     prior: Prior | None = None, weight_norm: jax.Array | None = None,
                     compute_dtype: Any = None, precision: Any = None) -> None: ...

    def __post_init__(self) -> None:
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
                f"prior must be an optjax.convex.priors.Prior or None, got {type(self.prior).__name__}")
        if self.precision not in (None, "default", "highest", "high") and not isinstance(
                self.precision, jax.lax.Precision):
            raise ValueError(f"precision must be None, 'default', 'high', 'highest' or a "
                             f"jax.lax.Precision; got {self.precision!r}")
        # Pytree unflattening rebuilds the problem with placeholder leaves: check shapes only
        # when the leaves are arrays (or tracers).
        if not all(is_array_like(leaf) for leaf in jax.tree_util.tree_leaves(self.weight)):
            return
        w = self.weight
        _check_weight(w)
        n_shape = linear_map.out_shape(w)
        if self.input_weight is not None and is_array_like(self.input_weight):
            u = self.input_weight
            if getattr(u, "ndim", None) != 2 or (u.shape[0],) != n_shape:
                n = n_shape[0] if len(n_shape) == 1 else n_shape
                raise ValueError(
                    f"input_weight U must be an (n, p) array with n = {n} (the rows of W); got "
                    f"shape {getattr(u, 'shape', None)}")
        if self.bias is not None and is_array_like(self.bias) and \
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
    def dtype(self) -> jnp.dtype:
        return linear_map.dtype(self.weight)

    @property
    def map_properties(self) -> MapProperty:
        """With ``s_sigma ||W||^2 <= 1``: S = prox_R(z - grad G(z)) is a forward-backward step of
        size 1 on the 1-smooth convex G, hence nonexpansive (firmly, for T), and the descent
        lemma makes the plain step decrease F. Without a prior S = T = z - grad G(z), a gradient
        step."""
        props = MapProperty.NONEXPANSIVE | MapProperty.OBJECTIVE | MapProperty.FORWARD_BACKWARD
        return props | MapProperty.GRADIENT_STEP if self.prior is None else props

    @property
    def symmetric_jacobian(self) -> bool:
        return self.prior is None or type(self.prior).scalar_jacobian

    # -- the engine's interface -----------------------------------------------------------------
    def equilibrium_map(self) -> EquilibriumMap:
        return EquilibriumMap(self.activation, self.compute_dtype, matmul_precision(self.precision))

    def parameters(self) -> tuple[Any, Prior | None]:
        return (self.weight, self.prior)

    def sample_data(self, x: jax.Array,
                    feature: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        return (injection(self, x), feature)

    def check_feature(self, feature: jax.Array | None) -> None:
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

    def input_lipschitz(self) -> jax.Array:
        r"""A certified bound on the Lipschitz constant of :math:`x \mapsto z^\star(x)`:
        :math:`s_\sigma \|W\| \|U\| / \mu` (:math:`\|U\| = 1` without ``input_weight``),
        :math:`\mu = 1 - s_\sigma\|W\|^2 + \mu_R`; ``inf`` when :math:`\mu \le 0`.

        Why (docs/maths.md, section 9): :math:`z^\star(x)` minimises the :math:`\mu`-strongly
        convex :math:`F(\cdot; c)`, :math:`c = Ux + b`, and the gradient of its smooth part
        moves by at most :math:`\|W^\top(\sigma(Wz + c_1) - \sigma(Wz + c_2))\| \le
        s_\sigma\|W\|\|c_1 - c_2\|` when :math:`c` does; strong monotonicity of
        :math:`\partial F` turns that into :math:`\|z_1 - z_2\| \le s_\sigma\|W\|
        \|c_1 - c_2\| / \mu`, with or without a prior. No gradient flows through it."""
        norm = self.spectral_norm()
        mu = strong_convexity(self, norm)
        u = 1.0 if self.input_weight is None else \
            jax.lax.stop_gradient(linear_map.spectral_norm(self.input_weight))
        bound = self.activation.slope_bound * norm * u / jnp.where(mu > 0, mu, 1.0)
        return jnp.where(mu > 0, bound, jnp.inf)

    def with_norm(self) -> "OptEqProblem":
        """A copy carrying ``weight_norm`` = the exact ``||W||`` (dense) or the map's certified
        bound, computed now: compute it once per value of W and reuse the problem across
        calls. Recompute it whenever W changes (a stale bound makes certificates false)."""
        with single_threaded():
            norm = jax.block_until_ready(linear_map.spectral_norm(self.weight))
        return dataclasses.replace(self, weight_norm=norm)

    def prepare(self, *, certify: bool) -> "OptEqProblem":
        if certify and self.weight_norm is None and is_concrete(self.weight):
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
        if not is_concrete(defects) or not int(defects) & Defect.NONCONVEX_WEIGHTS:
            return super().validate(conditions)
        s = self.activation.slope_bound
        if is_concrete(conditions.norm) and bool(jnp.isfinite(conditions.norm)):
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

    def certificate(self, point: jax.Array, last: jax.Array, residual: jax.Array, params: Any,
                    data: Any, conditions: Conditions) -> Certificate:
        return make_certificate(self, point, residual, params, data, conditions)


def matmul_precision(precision: Any) -> jax.lax.Precision | None:
    """The ``jax.lax.Precision`` of the products with a dense W for an ``OptEqProblem.precision``
    setting (None: HIGHEST; "default": the backend's default)."""
    if precision is None:
        return jax.lax.Precision.HIGHEST
    if precision == "default":
        return None
    if isinstance(precision, str):
        return jax.lax.Precision[precision.upper()]
    return precision


def injection(problem: OptEqProblem, x: jax.Array) -> jax.Array:
    """The input injection c = U x + b for a batch ``x`` of shape ``(B,) + input_shape``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> U = jnp.array([[1.0, 2.0], [3.0, 4.0]])
      >>> problem = optjax.OptEqProblem(0.5 * jnp.eye(2), "relu", input_weight=U, bias=jnp.ones(2))
      >>> optjax.injection(problem, jnp.array([[1.0, 1.0]]))      # U x + b, per sample
      Array([[4., 8.]], dtype=float32)
    """
    if problem.input_weight is None:
        c = x
    else:
        c = jnp.matmul(x, problem.input_weight.T, precision=matmul_precision(problem.precision))
    if problem.bias is not None:
        c = c + problem.bias
    return c


def operator(problem: OptEqProblem, z: jax.Array, x: jax.Array,
             feature: jax.Array | None = None) -> jax.Array:
    """The batched equilibrium map ``S(z)`` (``T(z)`` when the problem has no prior).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
      >>> problem = optjax.OptEqProblem(W, "relu")
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
      >>> z, info = optjax.equilibrium(problem, x)
      >>> Sz = optjax.operator(problem, z, x)                   # S(z) = prox_R(T(z)), batched
      >>> Sz.shape, bool(jnp.allclose(Sz, z, atol=1e-4))        # z is its fixed point
      ((2, 4), True)
    """
    map_fn = problem.equilibrium_map()
    params = problem.parameters()
    data = problem.sample_data(x, feature)
    return jax.vmap(map_fn, in_axes=(0, None, 0))(z, params, data)


def convexity_margin(problem: OptEqProblem) -> jax.Array:
    r""":math:`1 - s_\sigma \|W\|^2`: nonnegative iff the unit operator is the gradient of a
    convex 1-smooth function (and so firmly nonexpansive, and G convex).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> problem = optjax.OptEqProblem(0.9 * W / jnp.linalg.norm(W, 2), "relu")  # ||W|| = 0.9
      >>> round(float(optjax.convexity_margin(problem)), 3)        # 1 - s_sigma ||W||^2
      0.19
      >>> sigmoid = optjax.OptEqProblem(2 * problem.weight, "sigmoid")   # s_sigma = 1/4
      >>> round(float(optjax.convexity_margin(sigmoid)), 3)
      0.19
    """
    return 1.0 - problem.activation.slope_bound * problem.spectral_norm() ** 2


def strong_convexity(problem: OptEqProblem, norm: jax.Array | None = None) -> jax.Array:
    r"""The modulus :math:`\mu = 1 - s_\sigma\|W\|^2 + \mu_R` of :math:`G + R`; a value
    :math:`\le 0` means no strong convexity is certified. A margin within rounding of zero
    (``0 < 1 - s ||W||^2 <= 64 eps``, e.g. a W normalised to ``||W|| = 1``) counts as zero: it
    certifies nothing, rather than a modulus of 1e-16 and bounds of 1e30. ``norm``: the
    ``||W||`` to use (default :meth:`OptEqProblem.spectral_norm`).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optjax
      >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
      >>> problem = optjax.OptEqProblem(0.9 * W / jnp.linalg.norm(W, 2), "relu")  # ||W|| = 0.9
      >>> round(float(optjax.strong_convexity(problem)), 3)            # 1 - ||W||^2
      0.19
      >>> quadratic = optjax.priors.Quadratic(0.5)                     # adds mu = 0.5
      >>> with_prior = optjax.OptEqProblem(problem.weight, "relu", prior=quadratic)
      >>> round(float(optjax.strong_convexity(with_prior)), 3)
      0.69
    """
    extra = 0.0 if problem.prior is None else problem.prior.strong_convexity
    norm = problem.spectral_norm() if norm is None else norm
    margin = 1.0 - problem.activation.slope_bound * norm**2
    slack = rounding_slack(jnp.result_type(margin, float))
    margin = jnp.where(margin <= slack, jnp.minimum(margin, 0.0), margin)
    return margin + jax.lax.stop_gradient(jnp.asarray(extra, margin.dtype))
