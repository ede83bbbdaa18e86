r"""The OptEq problem: parameters of a unit layer and the input injection.

.. math::

    T(z) = W^\top \sigma(W z + U x + b), \qquad
    G(z; x) = \tfrac12\|z\|^2 - \textstyle\sum_i \Phi\big((W z + U x + b)_i\big) + R(z).

With :math:`s_\sigma = \sup \sigma'` (1 for most activations, 1/4 for the sigmoid),
:math:`G - R` is convex and 1-smooth when :math:`s_\sigma\|W\|^2 \le 1`, and
:math:`(1 - s_\sigma\|W\|^2 + \mu_R)`-strongly convex, where :math:`\mu_R` is the modulus the
prior adds. ``OptEqProblem`` is a pytree: weights and prior parameters are leaves, the activation
is static, so problems pass through ``jax.jit``, ``jax.vmap`` and ``jax.grad``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from optjax import activations as _activations
from optjax import linear_map
from optjax.priors import Prior

__all__ = ["OptEqProblem", "NonconvexError", "convexity_margin", "injection"]


class NonconvexError(ValueError):
    """The weights break the convexity condition s_sigma * ||W||^2 <= 1."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class OptEqProblem:
    """A unit OptEq layer.

    Attributes:
      weight: ``W``, a dense ``(n, d)`` array or a linear map (see :mod:`optjax.linear_map`).
      activation: an :class:`optjax.Activation` or its registry name (static).
      input_weight: ``U``, ``(n, p)``; ``None`` means the input already is the injection
        ``U x`` (shape ``(n,)`` per sample).
      bias: ``b``, ``(n,)`` (or the per-sample output shape of ``W``); ``None`` means 0.
      prior: a :class:`optjax.priors.Prior` or ``None`` (``R = 0``).
      weight_norm: a known upper bound on ``||W||`` (e.g. maintained by a normalisation);
        ``None``: computed exactly when needed.
      compute_dtype: ``None``, or a lower precision (``jnp.bfloat16``) for the products with W
        inside T (static); the state, the residuals and the objective stay in the input dtype.
        The residual then cannot fall below that precision: use a tolerance to match.
    """

    weight: jax.Array
    activation: _activations.Activation = dataclasses.field(metadata=dict(static=True))
    input_weight: jax.Array | None = None
    bias: jax.Array | None = None
    prior: Prior | None = None
    weight_norm: jax.Array | None = None
    compute_dtype: object = dataclasses.field(default=None, metadata=dict(static=True))

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
                f"prior must be an optjax.priors.Prior or None, got {type(self.prior).__name__}"
            )
        w = self.weight
        if linear_map.is_dense(w):
            if getattr(w, "ndim", None) != 2:
                raise ValueError(
                    f"weight W must be a 2-D (n, d) array, got shape {getattr(w, 'shape', None)}"
                )
            if not jnp.issubdtype(w.dtype, jnp.floating):
                raise TypeError(f"weight W must have a floating dtype, got {w.dtype}")
        n_shape = linear_map.out_shape(w)
        if self.input_weight is not None:
            u = self.input_weight
            if getattr(u, "ndim", None) != 2 or (u.shape[0],) != n_shape:
                raise ValueError(
                    f"input_weight U must be an (n, p) array with n = {n_shape[0] if len(n_shape) == 1 else n_shape} "
                    f"(the rows of W); got shape {getattr(u, 'shape', None)}"
                )
        if self.bias is not None and tuple(jnp.shape(self.bias)) != n_shape:
            raise ValueError(
                f"bias b must have shape {n_shape} (the output shape of W), got {jnp.shape(self.bias)}"
            )

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
        if self.input_weight is None:
            return self.injection_shape
        return (self.input_weight.shape[1],)

    @property
    def dtype(self):
        return linear_map.dtype(self.weight)

    def spectral_norm(self) -> jax.Array:
        """``weight_norm`` when given, else the exact ``||W||`` (no gradient flows through it)."""
        if self.weight_norm is not None:
            return jnp.asarray(self.weight_norm)
        return jax.lax.stop_gradient(linear_map.spectral_norm(self.weight))


def injection(problem: OptEqProblem, x: jax.Array) -> jax.Array:
    """The input injection c = U x + b for a batch ``x`` of shape ``(B,) + input_shape``."""
    c = x if problem.input_weight is None else x @ problem.input_weight.T
    if problem.bias is not None:
        c = c + problem.bias
    return c


def convexity_margin(problem: OptEqProblem) -> jax.Array:
    r""":math:`1 - s_\sigma \|W\|^2`: nonnegative iff the unit operator is the gradient of a
    convex 1-smooth function (and so firmly nonexpansive, and G convex)."""
    return 1.0 - problem.activation.slope_bound * problem.spectral_norm() ** 2


def strong_convexity(problem: OptEqProblem) -> jax.Array:
    r"""The modulus :math:`\mu = 1 - s_\sigma\|W\|^2 + \mu_R` of :math:`G + R`; a value
    :math:`\le 0` means no strong convexity is certified. A margin within rounding of zero
    (``0 < 1 - s ||W||^2 <= 64 eps``, e.g. a W normalised to ``||W|| = 1``) counts as zero: it
    certifies nothing, rather than a modulus of 1e-16 and bounds of 1e30."""
    extra = 0.0 if problem.prior is None else problem.prior.strong_convexity
    margin = convexity_margin(problem)
    slack = 64 * jnp.finfo(jnp.result_type(margin, float)).eps
    margin = jnp.where(margin <= slack, jnp.minimum(margin, 0.0), margin)
    return margin + jax.lax.stop_gradient(jnp.asarray(extra))
