"""The monDEQ layer as an equilibrium problem (the maths: :mod:`optjax.families.mondeq`)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from optjax.config import ConfigError
from optjax.engine.certificate import Certificate
from optjax.engine.numerics import finite_tree, is_array_like, is_concrete
from optjax.engine.problem import Conditions, Defect, EquilibriumProblem, injected_input_shape
from optjax.engine.properties import MapProperty
from optjax.families.mondeq.map import SPLITTINGS, MonDEQMap
from optjax.families.mondeq.operators import (NO_RESOLVENT, apply_w, peaceman_rachford_parameters,
                                              resolvent_form, step_size)
from optjax.linalg import linear_map

__all__ = ["MonDEQProblem"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MonDEQProblem(EquilibriumProblem):
    """A monDEQ layer (a pytree; ``m`` is static).

    Attributes:
      weight_a, weight_b: ``A, B``: dense ``(d, d)`` arrays or square linear maps.
      m: the monotonicity margin, > 0 (static).
      input_weight: ``U``, ``(d, p)``; ``None`` means ``x`` already is ``U x``.
      bias: broadcastable to the state shape; ``None`` means 0.
      step: the splitting step ``alpha``. Forward-backward: ``None`` means :func:`step_size`,
        computed once per call outside the solve; any ``0 < alpha < 2 m / L^2`` converges.
        Peaceman--Rachford: ``None`` means :func:`peaceman_rachford_step`,
        :math:`1/\\sqrt{mL}`, computed inside the solve from the same :math:`I - W` as the
        resolvent; any ``alpha > 0`` converges.
      splitting: ``"forward_backward"`` or ``"peaceman_rachford"`` (static; same equilibrium,
        same certificate and gradients; see the module docstring). Peaceman--Rachford needs
        dense ``A, B`` or circular :class:`~optjax.linalg.convolution.Conv2D` ones.
    """

    weight_a: Any
    weight_b: Any
    m: float = dataclasses.field(default=0.05, metadata=dict(static=True))
    input_weight: jax.Array | None = None
    bias: jax.Array | None = None
    step: jax.Array | None = None
    splitting: str = dataclasses.field(default="forward_backward", metadata=dict(static=True))

    kind: ClassVar[str] = "mondeq"
    default_solver: ClassVar[str] = "fixed_point"

    def __post_init__(self) -> None:
        if not (isinstance(self.m, (int, float)) and not isinstance(self.m, bool) and self.m > 0):
            raise ConfigError(f"m must be a positive number (the monotonicity margin), got "
                              f"{self.m!r}")
        if self.splitting not in SPLITTINGS:
            raise ConfigError(f"splitting must be one of {SPLITTINGS}, got {self.splitting!r}")
        if not all(is_array_like(leaf) for leaf in jax.tree_util.tree_leaves(self.weight_a)):
            return
        if self.step is not None and is_concrete(self.step) and not bool(
                jnp.all(jnp.asarray(self.step) > 0)):
            raise ConfigError(f"step (the splitting's alpha) must be positive, got "
                              f"{np.asarray(self.step).tolist()}")
        for name, w in (("weight_a", self.weight_a), ("weight_b", self.weight_b)):
            if tuple(linear_map.in_shape(w)) != tuple(linear_map.out_shape(w)) or (
                    linear_map.is_dense(w) and w.ndim != 2):
                raise ValueError(f"{name} of a monDEQ must be a square (d, d) array or a map of "
                                 f"the state to itself")
        if tuple(linear_map.in_shape(self.weight_a)) != tuple(linear_map.in_shape(self.weight_b)):
            raise ValueError("weight_a and weight_b must act on the same state shape")
        if self.splitting == "peaceman_rachford" and \
                resolvent_form(self.weight_a, self.weight_b) is None:
            raise ValueError(NO_RESOLVENT.format(a=type(self.weight_a).__name__,
                                                  b=type(self.weight_b).__name__))

    @property
    def state_shape(self) -> tuple[int, ...]:
        return tuple(linear_map.in_shape(self.weight_a))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return injected_input_shape(self.input_weight, self.state_shape)

    @property
    def dtype(self) -> jnp.dtype:
        return linear_map.dtype(self.weight_a)

    @property
    def adjoint_splitting(self) -> bool:
        return self.splitting == "peaceman_rachford"

    @property
    def map_properties(self) -> MapProperty:
        r"""The iterated splitting is a contraction (in the Euclidean norm of its variable):
        forward-backward with :math:`0 < \alpha < 2m/L^2` by a factor
        :math:`\sqrt{1 - 2\alpha m + \alpha^2 L^2}`, Peaceman--Rachford for any :math:`\alpha > 0`
        (:math:`I - W` is :math:`m`-strongly monotone and :math:`L`-Lipschitz). :math:`W` is not
        symmetric: there is no objective."""
        return MapProperty.CONTRACTION | MapProperty.NONEXPANSIVE

    def input_lipschitz(self) -> jax.Array:
        r"""A certified bound on the Lipschitz constant of :math:`x \mapsto z^\star(x)`:
        :math:`\|U\| / m` (Winston & Kolter 2020): :math:`z^\star` solves
        :math:`0 \in (I - W)z - c + N_{\ge 0}(z)` with :math:`I - W` :math:`m`-strongly
        monotone (:math:`\|U\| = 1` without ``input_weight``)."""
        u = 1.0 if self.input_weight is None else \
            jax.lax.stop_gradient(linear_map.spectral_norm(self.input_weight))
        return jnp.asarray(u / self.m, self.dtype)

    def equilibrium_map(self) -> MonDEQMap:
        return MonDEQMap(float(self.m), self.splitting)

    # forward-backward's step (Peaceman--Rachford's: peaceman_rachford_parameters)
    def _alpha(self) -> jax.Array:
        if self.step is not None:
            return self.step
        return step_size(self.m, self.weight_a, self.weight_b, self.state_shape)

    def parameters(self) -> tuple:
        if self.splitting == "forward_backward":
            alpha = jax.lax.stop_gradient(jnp.asarray(self._alpha(), self.dtype))
            return (self.weight_a, self.weight_b, alpha)
        alpha, res = peaceman_rachford_parameters(self.m, self.weight_a, self.weight_b,
                                                   self.step, self.dtype)
        return (self.weight_a, self.weight_b, alpha, res)

    def prepare(self, *, certify: bool) -> "MonDEQProblem":
        # Peaceman--Rachford's default step comes with the resolvent, from one I - W.
        if self.step is None and self.splitting == "forward_backward":
            return dataclasses.replace(self, step=jnp.asarray(self._alpha(), self.dtype))
        return self

    def sample_data(self, x: jax.Array, feature: jax.Array | None = None) -> jax.Array:
        c = x if self.input_weight is None else x @ self.input_weight.T
        if self.bias is not None:
            c = c + self.bias
        return jnp.broadcast_to(c, (x.shape[0],) + self.state_shape)

    def conditions(self, *, certify: bool) -> Conditions:
        dtype = self.dtype
        bad = ~finite_tree((self.weight_a, self.weight_b, self.input_weight, self.bias))
        bits = jnp.where(bad, int(Defect.NONFINITE_PARAMETERS), 0).astype(jnp.int32)
        return Conditions(bits, jnp.asarray(self.m, dtype), jnp.asarray(jnp.nan, dtype))

    def certificate(self, point: jax.Array, last: jax.Array, residual: jax.Array, params: tuple,
                    data: Any, conditions: Conditions) -> Certificate:
        frozen = jax.lax.stop_gradient
        a, b = frozen(params[:2])
        gap = jax.vmap(lambda v: apply_w(self.m, a, b, v))(frozen(last - point))
        dist = jnp.sqrt(jnp.sum(gap**2, axis=tuple(range(1, gap.ndim)))) / self.m
        nan = jnp.full(residual.shape, jnp.nan, residual.dtype)
        inf = jnp.full(residual.shape, jnp.inf, residual.dtype)
        return Certificate(residual=frozen(residual), objective=nan,
                           modulus=jnp.asarray(self.m, residual.dtype),
                           suboptimality_bound=inf, distance_bound=dist.astype(residual.dtype),
                           weight_norm=frozen(conditions.norm))
