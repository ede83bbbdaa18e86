r"""The unit operator and the equilibrium map of an OptEq problem, for one sample.

.. math::

    T(z) = W^\top \sigma(W z + c) = \nabla \psi(z), \quad \psi(z) = \textstyle\sum_i \Phi((Wz + c)_i),

    S(z) = \operatorname{prox}_R(T(z)) = \operatorname{prox}_R\big(z - \nabla(F - R)(z)\big).

:math:`S` is one forward-backward step with step 1 on :math:`F = G + R`; its fixed points are the
minimisers. The batched, public form is :func:`optjax.operator`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from optjax.convex.activations import Activation
from optjax.linalg import linear_map

Precision = jax.lax.PrecisionLike

__all__ = ["unit_operator", "equilibrium_map", "value_and_map", "jacobian_transpose", "EquilibriumMap"]


def unit_operator(weight: Any, activation: Callable[[jax.Array], jax.Array], z: jax.Array,
                  c: jax.Array, compute_dtype: Any = None,
                  precision: Precision = "highest") -> jax.Array:
    r""":math:`T(z) = W^\top \sigma(W z + c)` for one sample.

    With ``compute_dtype`` (mixed precision) the two products with W run in that dtype; the
    activation, the state and the result stay in ``z``'s dtype."""
    pre = linear_map.apply(weight, z, compute_dtype, precision) + c
    return linear_map.transpose(weight, activation(pre), compute_dtype, precision)


def equilibrium_map(activation: Callable[[jax.Array], jax.Array], z: jax.Array, params: Any,
                    data: Any, compute_dtype: Any = None,
                    precision: Precision = "highest") -> jax.Array:
    r""":math:`S(z) = \operatorname{prox}_R(T(z))` for one sample.

    ``params = (weight, prior)`` are shared by the batch; ``data = (c, feature)`` is per sample.
    """
    weight, prior = params
    c, feature = data
    t = unit_operator(weight, activation, z, c, compute_dtype, precision)
    return t if prior is None else prior.prox(t, feature)


def value_and_map(activation: Activation, z: jax.Array, params: Any, data: Any,
                  compute_dtype: Any = None,
                  precision: Precision = "highest") -> tuple[jax.Array, jax.Array]:
    r""":math:`(F(z), S(z))` for one sample at the cost of one :math:`T`: the product
    :math:`W z + c` serves both :math:`\Phi` and :math:`\sigma`."""
    weight, prior = params
    c, feature = data
    pre = linear_map.apply(weight, z, compute_dtype, precision) + c
    phi, s = activation.potential_and_prox(pre)
    value = 0.5 * jnp.sum(z * z) - jnp.sum(phi)
    t = linear_map.transpose(weight, s, compute_dtype, precision)
    if prior is None:
        return value, t
    return value + prior.value(z, feature), prior.prox(t, feature)


def jacobian_transpose(activation: Callable[[jax.Array], jax.Array], z: jax.Array, params: Any,
                       data: Any, compute_dtype: Any = None,
                       precision: Precision = "highest") -> Callable[[jax.Array], jax.Array]:
    r"""The map :math:`v \mapsto J_S(z)^\top v` for one sample, using the structure of T.

    :math:`J_T = W^\top D W` with :math:`D = \operatorname{diag}\sigma'(W z + c)` is symmetric,
    and :math:`J_S = J_P J_T` (:math:`J_P` the prox's Jacobian at :math:`T(z)`), so
    :math:`J_S^\top v = W^\top D W (J_P^\top v)`: two products with W per application, like
    T itself. (Reverse-mode differentiation of a convolution's adjoint inside the backward
    loop runs about 20x slower than T on XLA's CPU backend; this form does not.) Assumes an
    elementwise activation, as every :class:`optjax.Activation` is.
    """
    weight, prior = params
    c, feature = data
    pre = linear_map.apply(weight, z, compute_dtype, precision) + c
    slope = jax.jvp(activation, (pre,), (jnp.ones_like(pre),))[1]
    if prior is None:
        prox_t = None
    else:
        t = linear_map.transpose(weight, activation(pre), compute_dtype, precision)
        _, prox_t = jax.vjp(lambda u: prior.prox(u, feature), t)

    def apply(v: jax.Array) -> jax.Array:
        u = v if prox_t is None else prox_t(v)[0]
        inner = linear_map.apply(weight, u, compute_dtype, precision)
        return linear_map.transpose(weight, slope * inner, compute_dtype, precision)

    return apply


@dataclasses.dataclass(frozen=True)
class EquilibriumMap:
    """S of an OptEq problem for the engine: ``S(z, params, data)`` for one sample, with its
    objective, the fused ``value_and_map`` and the structured :func:`jacobian_transpose`.
    Hashable (a static argument)."""

    activation: Activation
    compute_dtype: Any = None
    precision: Precision = "highest"

    def __call__(self, z: jax.Array, params: Any, data: Any) -> jax.Array:
        return equilibrium_map(self.activation, z, params, data, self.compute_dtype,
                               self.precision)

    def objective(self, z: jax.Array, params: Any, data: Any) -> jax.Array:
        return self.value_and_map(z, params, data)[0]

    def value_and_map(self, z: jax.Array, params: Any, data: Any) -> tuple[jax.Array, jax.Array]:
        return value_and_map(self.activation, z, params, data, self.compute_dtype,
                             self.precision)

    def jacobian_transpose(self, z: jax.Array, params: Any,
                           data: Any) -> Callable[[jax.Array], jax.Array]:
        return jacobian_transpose(self.activation, z, params, data, self.compute_dtype,
                                  self.precision)
