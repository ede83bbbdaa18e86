r"""The two maps of a deep OptEq chain for one sample, on flat states: the Jacobi update
(every layer from the old states) and the Gauss--Seidel sweep (layer by layer, each from the
newest state below), with the chain's objective :math:`H` and the structured :math:`J^\top`
(see :mod:`optjax.families.deep`)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optjax.convex.activations import Activation
from optjax.linalg import linear_map

if TYPE_CHECKING:
    from optjax.families.deep.problem import DeepProblem

__all__ = ["DeepMap", "split", "unflatten", "energy", "jacobi_map", "gauss_seidel_map"]


def split(sizes: Sequence[int], s: jax.Array) -> list[jax.Array]:
    """Split flat states (last axis ``sum(sizes)``) into per-layer flat arrays."""
    return list(jnp.split(s, np.cumsum(sizes)[:-1].tolist(), axis=-1))


def unflatten(shapes: Sequence[tuple[int, ...]], s: jax.Array) -> list[jax.Array]:
    parts = split([math.prod(x) for x in shapes], s)
    return [p.reshape(shape) for p, shape in zip(parts, shapes)]


def _pre_activation(couplings: Sequence[Any], terms: list[jax.Array], states: list[jax.Array],
                    l: int, below: Any) -> jax.Array:  # below: s_(l-1), None for l = 0
    pre = terms[l]
    if l > 0:
        pre = pre + linear_map.apply(couplings[l - 1], below)
    if l < len(states) - 1:
        pre = pre + linear_map.transpose(couplings[l], states[l + 1])
    return pre


def _sweep(activations: Sequence[Activation], couplings: Sequence[Any], terms: list[jax.Array],
           states: list[jax.Array], gauss_seidel: bool
           ) -> tuple[list[jax.Array], list[jax.Array], list[jax.Array]]:
    """One Jacobi or Gauss--Seidel update of all layers (one sample): the new states, the
    pre-activations used, and the feedback terms :math:`A_l^\top s_{l+1}` of the old states
    (both sweeps take them from the old states; the objective reuses them)."""
    new, pres, feedback = list(states), [], []
    last = len(states) - 1
    for l in range(last + 1):
        pre = terms[l]
        if l > 0:
            below = new[l - 1] if gauss_seidel else states[l - 1]
            pre = pre + linear_map.apply(couplings[l - 1], below)
        if l < last:
            feedback.append(linear_map.transpose(couplings[l], states[l + 1]))
            pre = pre + feedback[l]
        pres.append(pre)
        new[l] = activations[l].prox(pre)
    return new, pres, feedback


def energy(activations: Sequence[Activation], couplings: Sequence[Any], terms: list[jax.Array],
           states: list[jax.Array]) -> jax.Array:
    """H for one sample."""
    value: Any = 0.0  # an array from the first layer on
    for act, b, s in zip(activations, terms, states):  # H has every penalty (has_penalties)
        value = (value + jnp.sum(act.penalty(s))  # type: ignore[misc]
                 + 0.5 * jnp.sum(s * s) - jnp.sum(b * s))
    for l, a in enumerate(couplings):
        value = value - jnp.vdot(states[l + 1], linear_map.apply(a, states[l]))
    return value


@dataclasses.dataclass(frozen=True)
class DeepMap:
    """The Jacobi or Gauss--Seidel map of a chain for the engine (hashable): ``map(z, params,
    c1)`` with ``params = (couplings, (b_2, ..., b_L))`` and flat ``z``."""

    activations: tuple[Activation, ...]
    shapes: tuple[tuple[int, ...], ...]
    gauss_seidel: bool

    @property
    def has_penalties(self) -> bool:
        return all(a.penalty is not None for a in self.activations)

    def _parts(self, z: jax.Array, params: tuple,
               c1: jax.Array) -> tuple[Any, list[jax.Array], list[jax.Array]]:
        couplings, rest = params
        terms = [c1] + [jnp.broadcast_to(b, s) for b, s in zip(rest, self.shapes[1:])]
        return couplings, terms, unflatten(self.shapes, z)

    def __call__(self, z: jax.Array, params: tuple, c1: jax.Array) -> jax.Array:
        couplings, terms, states = self._parts(z, params, c1)
        new, _, _ = _sweep(self.activations, couplings, terms, states, self.gauss_seidel)
        return jnp.concatenate([s.reshape(-1) for s in new]).astype(z.dtype)

    @property
    def objective(self) -> Callable[[jax.Array, tuple, jax.Array], jax.Array] | None:
        return self._objective if self.has_penalties else None

    def jacobian_transpose(self, z: jax.Array, params: tuple,
                           c1: jax.Array) -> Callable[[jax.Array], jax.Array]:
        r"""The map :math:`v \mapsto J^\top v` at ``z`` for one sample, from the couplings'
        adjoints (reverse-mode differentiation of a convolution's adjoint inside the backward
        loop is many times slower on XLA's CPU backend).

        With :math:`D = \operatorname{diag}\sigma'` at the sweep's pre-activations and
        :math:`K = L + L^\top` (:math:`L` the block-subdiagonal of the :math:`A_l`):
        Jacobi :math:`J = D K`, so :math:`J^\top v = K (D v)`; Gauss--Seidel
        :math:`s^+ = \sigma(L s^+ + L^\top s + b)`, so :math:`J = (I - D L)^{-1} D L^\top` and
        :math:`J^\top v = L (D w)` with :math:`w = v + L^\top D w`, solved from the last layer
        down. Either costs one product with every :math:`A_l` and :math:`A_l^\top`."""
        couplings, terms, states = self._parts(z, params, c1)
        _, pres, _ = _sweep(self.activations, couplings, terms, states, self.gauss_seidel)
        slopes = [jax.jvp(act.prox, (pre,), (jnp.ones_like(pre),))[1]
                  for act, pre in zip(self.activations, pres)]
        last = len(states) - 1

        def apply(v: jax.Array) -> jax.Array:
            vs = unflatten(self.shapes, v)
            if self.gauss_seidel:  # back-substitution for w, then L (D w)
                w = list(vs)
                for l in range(last - 1, -1, -1):
                    w[l] = vs[l] + linear_map.transpose(couplings[l], slopes[l + 1] * w[l + 1])
                dw = [d * x for d, x in zip(slopes, w)]
                out = [jnp.zeros_like(dw[0])] + [linear_map.apply(couplings[l], dw[l])
                                                  for l in range(last)]
            else:  # K (D v)
                dv = [d * x for d, x in zip(slopes, vs)]
                out = [_pre_activation(couplings, [jnp.zeros_like(x) for x in dv], dv, l,
                                       dv[l - 1] if l else None) for l in range(last + 1)]
            return jnp.concatenate([o.reshape(-1) for o in out]).astype(v.dtype)

        return apply

    def _objective(self, z: jax.Array, params: tuple, c1: jax.Array) -> jax.Array:
        couplings, terms, states = self._parts(z, params, c1)
        return energy(self.activations, couplings, terms, states)

    def value_and_map(self, z: jax.Array, params: tuple,
                      c1: jax.Array) -> tuple[jax.Array, jax.Array]:
        r"""``(H(s), map(s))`` for one sample at the cost of one sweep: the coupling term of
        :math:`H` is :math:`\sum_l \langle s_l, A_l^\top s_{l+1}\rangle`, and the sweep
        computes every :math:`A_l^\top s_{l+1}` from the old states (Jacobi and Gauss--Seidel
        alike), so no product with a coupling is added."""
        couplings, terms, states = self._parts(z, params, c1)
        new, _, feedback = _sweep(self.activations, couplings, terms, states, self.gauss_seidel)
        image = jnp.concatenate([s.reshape(-1) for s in new]).astype(z.dtype)
        value: Any = 0.0  # an array from the first layer on
        for act, b, s in zip(self.activations, terms, states):  # (has_penalties)
            value = (value + jnp.sum(act.penalty(s))  # type: ignore[misc]
                     + 0.5 * jnp.sum(s * s) - jnp.sum(b * s))
        for s, up in zip(states, feedback):
            value = value - jnp.vdot(s, up)
        return value, image


def jacobi_map(problem: DeepProblem, s: jax.Array, x: jax.Array) -> jax.Array:
    r"""One Jacobi step :math:`s \mapsto \sigma(K s + b)` for one sample (flat ``s``, ``x`` one
    sample): every layer updated from the old states."""
    return _one_map(problem, s, x, gauss_seidel=False)


def gauss_seidel_map(problem: DeepProblem, s: jax.Array, x: jax.Array) -> jax.Array:
    r"""One Gauss--Seidel sweep for one sample: layers :math:`1..L` in turn, layer :math:`l`
    using the new :math:`s_{l-1}` and the old :math:`s_{l+1}`; same fixed points as
    :func:`jacobi_map`."""
    return _one_map(problem, s, x, gauss_seidel=True)


def _one_map(problem: DeepProblem, s: jax.Array, x: jax.Array, gauss_seidel: bool) -> jax.Array:
    if jnp.shape(s) != (problem.state_size,):
        raise ValueError(
            f"s must be one flat state of shape ({problem.state_size},) (layer shapes "
            f"{problem.shapes}); got {jnp.shape(s)}")
    if tuple(jnp.shape(x)) != tuple(problem.input_shape):
        raise ValueError(
            f"x must be one sample of shape {problem.input_shape}; got {jnp.shape(x)}")
    c1 = problem.sample_data(x[None])[0]
    map_fn = DeepMap(problem.activations, problem.shapes, gauss_seidel)
    return map_fn(s, problem.parameters(), c1)


