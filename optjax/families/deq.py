r"""Deep equilibrium (DEQ) problems: the unconstrained baseline (Bai, Kolter & Koltun, 2019).

.. math:: z^\star = \sigma(W z^\star + U x + b),

with :math:`W` a dense ``(d, d)`` matrix or any square linear map of :mod:`optjax.linalg.linear_map`
(a convolution). Nothing guarantees that an equilibrium exists, that it is unique, or that a
solver finds it: there is no objective and no certificate (the bounds are infinite), and
non-convergence is reported per sample, not raised. :math:`I - J` is not symmetric, so the
backward system is solved with GMRES by default.

The backward pass uses the structure :math:`J = \sigma'(W z + c)\, W`, so
:math:`J^\top v = W^\top\big(\sigma'(Wz + c)^\top v\big)`: one product with :math:`W^\top`
(for a convolution, the adjoint convolution) per application, instead of reverse-mode
differentiation through the map.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> import optjax
  >>> W = jax.random.normal(jax.random.PRNGKey(0), (4, 4))
  >>> problem = optjax.deq.DEQProblem(0.5 * W / jnp.linalg.norm(W, 2), jnp.tanh)
  >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 4))
  >>> z, info = optjax.equilibrium(problem, x, tol=1e-4, max_steps=50)   # Anderson by default
  >>> z.shape, bool(info.converged.all())
  ((2, 4), True)
  >>> bool(jnp.isinf(info.certificate.distance_bound).all())   # a DEQ certifies nothing
  True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

from optjax.linalg import linear_map
from optjax.engine.numerics import is_array_like
from optjax.engine.problem import EquilibriumProblem, injected_input_shape

__all__ = ["DEQProblem", "jacobian_frobenius"]


@dataclasses.dataclass(frozen=True)
class DEQMap:
    """:math:`S(z) = \\sigma(W z + c)` for one sample, with its structured :math:`J^\\top`."""

    activation: Callable

    def __call__(self, z: jax.Array, params: tuple[Any], c: jax.Array) -> jax.Array:
        (weight,) = params
        return self.activation(linear_map.apply(weight, z) + c).astype(z.dtype)

    def jacobian_transpose(self, z: jax.Array, params: tuple[Any],
                           c: jax.Array) -> Callable[[jax.Array], jax.Array]:
        (weight,) = params
        _, vjp_act = jax.vjp(self.activation, linear_map.apply(weight, z) + c)
        return lambda v: linear_map.transpose(weight, vjp_act(v)[0]).astype(v.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DEQProblem(EquilibriumProblem):
    """A DEQ layer ``z = activation(W z + U x + b)`` (a pytree; the activation is static).

    Attributes:
      weight: ``W``, a dense ``(d, d)`` array or a square linear map (``in_shape ==
        out_shape``, e.g. :class:`optjax.linalg.convolution.Conv2D` with as many output as input
        channels).
      activation: any hashable callable acting on the pre-activation (an optjax activation, a
        ``jax.nn`` function); static.
      input_weight: ``U``, ``(d, p)``; ``None`` means ``x`` already is ``U x`` (state shape).
      bias: broadcastable to the state shape; ``None`` means 0.
    """

    weight: Any
    activation: Callable = dataclasses.field(metadata=dict(static=True))
    input_weight: jax.Array | None = None
    bias: jax.Array | None = None

    kind: ClassVar[str] = "deq"
    default_solver: ClassVar[str] = "anderson"

    def __post_init__(self) -> None:
        if not callable(self.activation):
            raise TypeError(f"activation must be callable, got {type(self.activation).__name__}")
        if not all(is_array_like(leaf) for leaf in jax.tree_util.tree_leaves(self.weight)):
            return
        w = self.weight
        if linear_map.is_dense(w) and (w.ndim != 2 or w.shape[0] != w.shape[1]):
            raise ValueError(f"weight W of a DEQ must be a square (d, d) array, got shape "
                             f"{w.shape}")
        if tuple(linear_map.in_shape(w)) != tuple(linear_map.out_shape(w)):
            raise ValueError(f"weight W of a DEQ must map the state to itself; it maps "
                             f"{linear_map.in_shape(w)} to {linear_map.out_shape(w)}")
        u = self.input_weight
        if u is not None and is_array_like(u) and (u.ndim != 2 or (u.shape[0],) != self.state_shape):
            raise ValueError(f"input_weight U must be a (d, p) array with d = "
                             f"{self.state_shape}; got shape {u.shape}")

    @property
    def state_shape(self) -> tuple[int, ...]:
        return tuple(linear_map.in_shape(self.weight))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return injected_input_shape(self.input_weight, self.state_shape)

    @property
    def dtype(self) -> jnp.dtype:
        return linear_map.dtype(self.weight)

    def equilibrium_map(self) -> DEQMap:
        return DEQMap(self.activation)

    def parameters(self) -> tuple[Any]:
        return (self.weight,)

    def sample_data(self, x: jax.Array, feature: jax.Array | None = None) -> jax.Array:
        c = x if self.input_weight is None else x @ self.input_weight.T
        if self.bias is not None:
            c = c + self.bias
        return jnp.broadcast_to(c, (x.shape[0],) + self.state_shape)


def jacobian_frobenius(problem: DEQProblem, z: jax.Array, x: jax.Array,
                       key: jax.Array) -> jax.Array:
    r"""Hutchinson's estimate of :math:`\|J_S(z)\|_F^2 / d` per sample, the Jacobian
    regulariser of DEQs (Bai, Koltun & Kolter, "Stabilizing Equilibrium Models by Jacobian
    Regularization", 2021).

    For :math:`\epsilon \sim N(0, I)`, :math:`E\|J^\top \epsilon\|^2 = \operatorname{tr}(J
    J^\top) = \|J\|_F^2`; one probe per sample, through the map's structured :math:`J^\top`
    (one product with :math:`W^\top`). ``z`` (the equilibria, ``(batch,) + state_shape``) is
    held fixed, as in the paper: the estimate is differentiable in the problem's parameters, not
    through the solve. ``x``: the inputs the problem was solved for. Returns ``(batch,)``.

    A DEQ has nothing else that bounds :math:`J` (and so the forward's convergence and the
    backward system's conditioning); OptEq problems need no such term (docs/maths.md).
    """
    z = jax.lax.stop_gradient(z)
    c = problem.sample_data(x)
    probes = jax.random.normal(key, z.shape, z.dtype)
    map_fn, params = problem.equilibrium_map(), problem.parameters()
    v = jax.vmap(lambda z, c, e: map_fn.jacobian_transpose(z, params, c)(e))(z, c, probes)
    return jnp.sum(jnp.reshape(v * v, (z.shape[0], -1)), axis=1) / max(math.prod(z.shape[1:]), 1)
