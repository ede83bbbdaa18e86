r"""The map of a monDEQ layer for the engine: :math:`S(z) = \operatorname{relu}(W z + c)`,
iterated in the splittings' scaled variable, with the structured :math:`J^\top` and the
splitting of the backward system (the maths: :mod:`optjax.families.mondeq`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from optjax.config import ConfigError
from optjax.families.mondeq.operators import apply_w, apply_w_transpose

__all__ = ["MonDEQMap", "AdjointSplitting", "SPLITTINGS", "MARGIN"]

SPLITTINGS = ("forward_backward", "peaceman_rachford")
MARGIN = 1.0 + 2.0**-8  # on the splittings' stopping tests (MonDEQMap._scale)


class AdjointSplitting(NamedTuple):
    """The backward system's splitting at one equilibrium: ``step(u, g)``, ``solution(u, g) ->
    v``, and ``scale`` with ``||g - (I - J^T) v|| <= scale * ||u - step(u, g)||``."""

    step: Callable
    solution: Callable
    scale: jax.Array


@dataclasses.dataclass(frozen=True)
class MonDEQMap:
    """:math:`S(z) = \\operatorname{relu}(Wz + c)` for one sample. Params ``(A, B, alpha)``
    (forward-backward) or ``(A, B, alpha, resolvent)`` (Peaceman--Rachford); the solver iterates
    the splitting in its scaled variable (see the module docstring)."""

    m: float
    splitting: str = "forward_backward"

    def __call__(self, z: jax.Array, params: tuple, c: jax.Array) -> jax.Array:
        a, b = params[:2]
        return jax.nn.relu(apply_w(self.m, a, b, z) + c).astype(z.dtype)

    def jacobian_transpose(self, z: jax.Array, params: tuple,
                           c: jax.Array) -> Callable[[jax.Array], jax.Array]:
        a, b = params[:2]
        active = (apply_w(self.m, a, b, z) + c > 0).astype(z.dtype)
        return lambda v: apply_w_transpose(self.m, a, b, active * v).astype(v.dtype)

    def adjoint_splitting(self, z: jax.Array, params: tuple, c: jax.Array) -> AdjointSplitting:
        """Peaceman--Rachford on the backward system at ``z`` (module docstring, *Backward*)."""
        if self.splitting != "peaceman_rachford":
            raise ConfigError("the adjoint splitting is Peaceman--Rachford's: use "
                              "splitting='peaceman_rachford', or backward='gmres'")
        a, b, alpha, res = params
        active = (apply_w(self.m, a, b, z) + c > 0).astype(z.dtype)
        inverse_t = res.transposed()

        def half(u: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:  # (u_half, w_half)
            u_half = 2 * active * u - u
            return u_half, inverse_t(u_half + alpha * g)

        def step(u: jax.Array, g: jax.Array) -> jax.Array:
            u_half, w_half = half(u, g)
            return 2 * w_half - u_half

        # v = g + W^T w_half: the bound below holds there
        def solution(u: jax.Array, g: jax.Array) -> jax.Array:
            return g + apply_w_transpose(self.m, a, b, half(u, g)[1])

        w_norm = (1 + alpha + res.norm) / alpha
        scale = w_norm * 0.5 / jnp.minimum(alpha, 1.0) * MARGIN
        return AdjointSplitting(step, solution, scale)

    def _scale(self, params: tuple, dtype: Any) -> jax.Array:
        """y = scale * (the splitting's variable): FB ``1 / min(alpha, 1)``, PR
        ``max(1, 1/alpha) / 2``, times ``1 + 2^-8``: the two residuals can be equal in exact
        arithmetic (FB where the active set is settled, PR where every component stays active),
        and the margin absorbs their rounding."""
        if self.splitting == "forward_backward":
            scale = 1.0 / jnp.minimum(params[2], 1.0)
        else:
            scale = 0.5 / jnp.minimum(params[2], 1.0)
        return (scale * MARGIN).astype(dtype)

    def solve_map(self, y: jax.Array, params: tuple, c: jax.Array) -> jax.Array:
        a, b, alpha = params[:3]
        scale = self._scale(params, y.dtype)
        if self.splitting == "forward_backward":
            z = y / scale
            out = jax.nn.relu((1 - alpha) * z + alpha * (apply_w(self.m, a, b, z) + c))
            return (out * scale).astype(y.dtype)
        u = y / scale
        u_half, z_half = self._half_step(u, params, c)
        return ((2 * z_half - u_half) * scale).astype(y.dtype)

    @staticmethod
    def _half_step(u: jax.Array, params: tuple, c: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Peaceman--Rachford's ``(u_half, z_half)`` from ``u``: ``u_half = 2 relu(u) - u``,
        ``z_half = M^{-1}(u_half + alpha c)``."""
        u_half = 2 * jax.nn.relu(u) - u
        return u_half, params[3](u_half + params[2] * c)

    def solve_state(self, z: jax.Array, params: tuple, c: jax.Array) -> jax.Array:
        return z * self._scale(params, z.dtype)

    def equilibrium_point(self, y: jax.Array, params: tuple, c: jax.Array) -> jax.Array:
        point = y / self._scale(params, y.dtype)
        if self.splitting == "forward_backward":
            return point
        return self._half_step(point, params, c)[1].astype(y.dtype)  # z_half: module docstring
