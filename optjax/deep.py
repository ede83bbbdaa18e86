r"""Deep OptEq: a chain of layers with feed-forward and feedback couplings (docs/maths.md,
section 4).

Layers :math:`l = 1..L` with states :math:`s_l` (vectors, or feature maps of any shape) and
couplings :math:`A_l` from layer :math:`l` to layer :math:`l + 1` (dense matrices, or any linear
map of :mod:`optjax.linear_map`: a convolution, a strided convolution between resolutions),
:math:`l = 1..L-1`:

.. math::

    s_l = \sigma_l\big(A_{l-1} s_{l-1} + A_l^\top s_{l+1} + b_l\big), \qquad
    b_1 = U x + b \ (\text{the injection}), \quad A_0 = A_L = 0.

This is :math:`s = \sigma(K s + b)` with :math:`K` symmetric block-tridiagonal (:math:`A_l`
below the diagonal, :math:`A_l^\top` above), the prox-gradient step with step 1 on

.. math::

    H(s) = \sum_l \Big[\textstyle\sum_i f_l(s_{l,i}) + \tfrac12\|s_l\|^2 - b_l^\top s_l\Big]
           - \sum_l \langle s_{l+1}, A_l s_l \rangle,

with :math:`f_l` the penalty of :math:`\sigma_l = \operatorname{prox}_{f_l}`. Since
:math:`|s^\top K s| \le \sum_l (\|A_{l-1}\| + \|A_l\|)\|s_l\|^2`,

.. math:: \|K\| \le 1 - m, \qquad m = 1 - \max_l\big(\|A_{l-1}\| + \|A_l\|\big)

(the *convexity margin*): for :math:`m > 0`, :math:`H` is :math:`m`-strongly convex, its
minimiser is the unique equilibrium, and the Jacobi map :math:`J(s) = \sigma(K s + b)` is an
:math:`(1 - m)`-contraction. Two maps share these fixed points:

* Jacobi: all layers at once; prox-gradient with step :math:`1 < 2 / \|I - K\|`, so :math:`H`
  decreases monotonically.
* Gauss--Seidel: layers :math:`1..L` in turn, each using the newest :math:`s_{l-1}` (a forward
  pass with feedback); each layer update exactly minimises :math:`H` over :math:`s_l`
  (block-coordinate descent), so :math:`H` decreases monotonically.

**Certificate** at a returned point :math:`s`, with :math:`r_J = \|s - J(s)\|`: the contraction
gives :math:`\|s - s^\star\| \le r_J / m`; and :math:`K(s - J s) \in \partial H(J s)` gives
:math:`H(J s) - H^\star \le (1 - m)^2 r_J^2 / (2m)`, so
:math:`H(s) - H^\star \le \max(0, H(s) - H(J s)) + (1 - m)^2 r_J^2 / (2m)`.

Both sweeps are solved by the engine (:func:`optjax.equilibrium`); the implicit gradient depends
only on the fixed point, so both give the same gradients. The Jacobian of either map is not
symmetric (:math:`D K` for Jacobi, :math:`D = \operatorname{diag}\sigma'`), so the backward
system is solved with GMRES (default) or fixed-point iteration, not conjugate gradients;
:math:`J^\top` is applied with the couplings' adjoints (one product with every :math:`A_l` and
:math:`A_l^\top`, like a sweep), never by differentiating the map.

States are handled per sample as one flat vector :math:`(s_1, \dots, s_L)` (each layer
raveled); :func:`equilibrium` returns them split per layer, in their shapes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optjax import activations as _activations
from optjax import linear_map
from optjax.config import ConfigError, require
from optjax.problem import (Conditions, Defect, EquilibriumProblem, NonconvexError, _array_like,
                            _is_concrete, finite_tree, rounding_slack)

__all__ = [
    "DeepProblem",
    "SWEEPS",
    "jacobi_map",
    "gauss_seidel_map",
    "objective",
    "convexity_margin",
    "coupling_norms",
    "normalize",
    "normalization_scales",
    "split",
    "equilibrium",
]

SWEEPS = ("jacobi", "gauss_seidel")


def _as_activation(act) -> _activations.Activation:
    if isinstance(act, _activations.Activation):
        return act
    if isinstance(act, str):
        return _activations.get(act)
    raise TypeError(
        "activations must be optjax Activations or registry names such as 'relu'; got "
        f"{type(act).__name__}")


def _size(shape) -> int:
    return int(math.prod(shape))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeepProblem(EquilibriumProblem):
    """A deep OptEq chain of ``L = len(couplings) + 1`` layers (a pytree; activations and the
    sweep are static).

    Attributes:
      couplings: ``(A_1, ..., A_{L-1})``: ``A_l`` maps layer ``l``'s state to layer ``l+1``'s,
        a dense ``(n_{l+1}, n_l)`` array or a linear map (e.g. :class:`optjax.convolution.Conv2D`,
        :class:`optjax.convolution.StridedConv2D`); ``()`` for one layer.
      input_weight: ``U``: a dense ``(n_1, p)`` array, or a linear map from one input sample
        to layer 1's shape (e.g. a :class:`optjax.convolution.StridedConv2D` stem); ``None``
        means ``x`` already is ``U x`` (of layer 1's shape).
      biases: ``(b_1, ..., b_L)``, each broadcastable to its layer's shape (e.g. one value per
        channel); ``None`` means zeros.
      activations: one activation (name or :class:`optjax.Activation`) for every layer, or a
        sequence of ``L`` of them (static).
      sweep: ``"jacobi"`` or ``"gauss_seidel"``: the map the solver iterates (static; same fixed
        points and gradients).
      coupling_norms: known upper bounds on ``(||A_1||, ..., ||A_{L-1}||)`` (e.g. kept by a
        normalisation); ``None``: computed when needed.
      layer_shapes: the per-sample state shape of each layer (static); ``None``: derived from
        the couplings and ``input_weight`` (give it for a one-layer chain without ``U``).
    """

    couplings: tuple
    input_weight: jax.Array | None
    biases: tuple | None = None
    activations: tuple = dataclasses.field(default="relu", metadata=dict(static=True))
    sweep: str = dataclasses.field(default="jacobi", metadata=dict(static=True))
    coupling_norms: jax.Array | None = None
    layer_shapes: tuple | None = dataclasses.field(default=None, metadata=dict(static=True))

    kind: ClassVar[str] = "deep_opteq"
    default_solver: ClassVar[str] = "fixed_point"
    defect_reasons: ClassVar[dict] = {
        Defect.NONCONVEX_WEIGHTS: "convexity margin 1 - max_l(||A_(l-1)|| + ||A_l||) < 0: some "
        "layer has ||A_(l-1)|| + ||A_l|| > 1; rescale with optjax.deep.normalize",
        Defect.NONFINITE_PARAMETERS: "NaN or Inf in the couplings, U or the biases; check the "
        "weights",
    }

    def __post_init__(self):
        couplings = tuple(self.couplings)
        object.__setattr__(self, "couplings", couplings)
        num_layers = len(couplings) + 1
        acts = self.activations
        if isinstance(acts, (str, _activations.Activation)):
            acts = (acts,) * num_layers
        acts = tuple(_as_activation(a) for a in acts)
        if len(acts) != num_layers:
            raise ValueError(
                f"got {len(acts)} activations for {num_layers} layers ({len(couplings)} "
                "couplings); pass one activation, or one per layer")
        object.__setattr__(self, "activations", acts)
        if self.sweep not in SWEEPS:
            raise ConfigError(f"sweep must be one of {SWEEPS}, got {self.sweep!r}")
        if self.biases is not None:
            biases = tuple(self.biases)
            if len(biases) != num_layers:
                raise ValueError(
                    f"got {len(biases)} biases for {num_layers} layers ({len(couplings)} "
                    "couplings); pass one bias per layer, or None")
            object.__setattr__(self, "biases", biases)
        if self.layer_shapes is not None:
            object.__setattr__(self, "layer_shapes",
                               tuple(tuple(int(n) for n in s) for s in self.layer_shapes))
        # Pytree unflattening rebuilds the problem with placeholder leaves: check shapes only
        # when the leaves are arrays (or tracers).
        if all(_array_like(leaf) for leaf in jax.tree_util.tree_leaves(self)):
            self._check_shapes()

    def _check_shapes(self):
        u = self.input_weight
        if u is not None and linear_map.is_dense(u) and u.ndim != 2:
            raise ValueError(f"input_weight U must be a 2-D (n_1, p) array or a linear map, got "
                             f"shape {u.shape}")
        shapes = self.shapes
        for l, a in enumerate(self.couplings, start=1):
            dense = linear_map.is_dense(a)
            if dense and a.ndim != 2:
                raise ValueError(f"coupling A_{l} must be a 2-D array, got shape {a.shape}")
            if tuple(linear_map.in_shape(a)) != shapes[l - 1]:
                if dense and len(shapes[l - 1]) == 1:
                    raise ValueError(
                        f"coupling A_{l} must have shape (n_{l + 1}, n_{l}) with n_{l} = "
                        f"{shapes[l - 1][0]} (the size of layer {l}); got {a.shape}")
                raise ValueError(
                    f"coupling A_{l} must take layer {l}'s state of shape {shapes[l - 1]}; it "
                    f"takes {tuple(linear_map.in_shape(a))}")
        if self.biases is not None:
            for l, (b, shape) in enumerate(zip(self.biases, shapes), start=1):
                try:
                    fits = jnp.broadcast_shapes(jnp.shape(b), shape) == shape
                except ValueError:
                    fits = False
                if not fits:
                    raise ValueError(
                        f"bias b_{l} must have shape {shape} (the shape of layer {l}), or "
                        f"broadcast to it; got {tuple(jnp.shape(b))}")
        for leaf in jax.tree_util.tree_leaves(self):
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise TypeError(f"the problem's arrays must be floating, got {leaf.dtype}")

    # -- shapes --------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.couplings) + 1

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """The per-sample state shape of every layer."""
        if self.layer_shapes is not None:
            return self.layer_shapes
        if self.input_weight is not None:
            first = tuple(linear_map.out_shape(self.input_weight))
        elif self.couplings:
            first = tuple(linear_map.in_shape(self.couplings[0]))
        elif self.biases is not None:
            first = tuple(jnp.shape(self.biases[0]))
        else:
            raise ValueError("a one-layer problem without U or biases has no known size; pass "
                             "layer_shapes")
        return (first,) + tuple(tuple(linear_map.out_shape(a)) for a in self.couplings)

    @property
    def sizes(self) -> tuple[int, ...]:
        """``(n_1, ..., n_L)``: the number of entries of each layer's state."""
        return tuple(_size(s) for s in self.shapes)

    @property
    def state_size(self) -> int:
        """Length of the flat per-sample state ``(s_1, ..., s_L)``."""
        return int(sum(self.sizes))

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.state_size,)

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.input_weight is None:
            return self.shapes[0]
        return tuple(linear_map.in_shape(self.input_weight))

    @property
    def input_features(self) -> int:
        """``p``, the per-sample size of ``x`` (dense chains)."""
        return _size(self.input_shape)

    # -- the engine's interface ------------------------------------------------------------------
    def equilibrium_map(self):
        return _DeepMap(self.activations, self.shapes, self.sweep == "gauss_seidel")

    def parameters(self):
        rest = [jnp.zeros(s, self.dtype) for s in self.shapes[1:]] if self.biases is None else \
            list(self.biases[1:])
        return (self.couplings, tuple(rest))

    def sample_data(self, x, feature=None):
        u = self.input_weight
        if u is None:
            c1 = x
        elif linear_map.is_dense(u):
            c1 = x @ u.T
        else:
            c1 = jax.vmap(lambda v: linear_map.apply(u, v))(x)
        if self.biases is not None:
            c1 = c1 + self.biases[0]
        return jnp.broadcast_to(c1, (x.shape[0],) + self.shapes[0])

    def prepare(self, *, certify: bool) -> "DeepProblem":
        if certify and self.coupling_norms is None and self.couplings and \
                _is_concrete(self.couplings):
            norms = jnp.stack([linear_map.cached_norm(a) for a in self.couplings])
            return dataclasses.replace(self, coupling_norms=norms)
        return self

    def conditions(self, *, certify: bool) -> Conditions:
        dtype = self.dtype
        # No gradient: stopped at the couplings, not at the norms, or differentiating the
        # caller would run the SVDs' full decompositions (about 10x their values' cost).
        frozen = jax.lax.stop_gradient(self.couplings)
        if certify:
            norms = coupling_norms(frozen) if self.coupling_norms is None else \
                jax.lax.stop_gradient(jnp.asarray(self.coupling_norms))
        else:  # certified lower bounds only: flags clearly nonconvex couplings
            norms = jnp.stack([linear_map.norm_lower_bound(a) for a in frozen]) if \
                self.couplings else jnp.zeros((0,), dtype)
        margin = 1.0 - jnp.max(_layer_sums(norms.astype(dtype)))
        bits = jnp.where(margin < -rounding_slack(dtype), int(Defect.NONCONVEX_WEIGHTS), 0)
        bits = bits | jnp.where(finite_tree(self), 0, int(Defect.NONFINITE_PARAMETERS))
        nan = jnp.asarray(jnp.nan, dtype)
        modulus = margin if certify else nan
        return Conditions(bits.astype(jnp.int32), modulus, 1.0 - modulus)

    def validate(self, conditions: Conditions) -> None:
        defects = conditions.defects
        if _is_concrete(defects) and int(defects) & Defect.NONCONVEX_WEIGHTS and \
                _is_concrete(self.couplings):
            norms = np.asarray(coupling_norms(self.couplings))
            raise NonconvexError(
                f"convexity margin 1 - max_l(||A_(l-1)|| + ||A_l||) = "
                f"{1 - float(np.max(np.asarray(_layer_sums(jnp.asarray(norms))))):.6g} < 0 "
                f"(coupling norms {np.round(norms, 6).tolist()}): H is not guaranteed convex, so "
                "no unique equilibrium is guaranteed. Rescale with "
                "optjax.deep.normalize(couplings, rho).")
        super().validate(conditions)

    def certificate(self, point, last, residual, params, data, conditions: Conditions):
        from optjax.certificate import Certificate

        frozen = jax.lax.stop_gradient
        point, params, data = frozen(point), frozen(params), frozen(data)
        m = frozen(conditions.modulus)
        jacobi = _DeepMap(self.activations, self.shapes, False)
        image = jax.vmap(jacobi, in_axes=(0, None, 0))(point, params, data)
        r_j = jnp.sqrt(jnp.sum((point - image) ** 2, axis=1))
        positive = m > 0
        safe = jnp.where(positive, m, 1.0)
        distance = jnp.where(positive, r_j / safe, jnp.inf)
        if jacobi.has_penalties:
            h = jax.vmap(jacobi.objective, in_axes=(0, None, 0))
            value, value_j = h(point, params, data), h(image, params, data)
            sub = jnp.maximum(value - value_j, 0.0) + (1.0 - safe) ** 2 * r_j**2 / (2 * safe)
            sub = jnp.where(positive, sub, jnp.inf)
        else:
            value = jnp.full(residual.shape, jnp.nan, residual.dtype)
            sub = jnp.full(residual.shape, jnp.inf, residual.dtype)
        return Certificate(residual=frozen(residual), objective=value.astype(residual.dtype),
                           modulus=m, suboptimality_bound=sub.astype(residual.dtype),
                           distance_bound=distance.astype(residual.dtype),
                           weight_norm=frozen(conditions.norm))


# -- the maps ------------------------------------------------------------------------------------


def split(sizes: Sequence[int], s: jax.Array) -> list[jax.Array]:
    """Split flat states (last axis ``sum(sizes)``) into per-layer flat arrays."""
    return list(jnp.split(s, np.cumsum(sizes)[:-1].tolist(), axis=-1))


def _unflatten(shapes, s):
    parts = split([_size(x) for x in shapes], s)
    return [p.reshape(shape) for p, shape in zip(parts, shapes)]


def _pre_activation(couplings, terms, states, l, below):
    pre = terms[l]
    if l > 0:
        pre = pre + linear_map.apply(couplings[l - 1], below)
    if l < len(states) - 1:
        pre = pre + linear_map.transpose(couplings[l], states[l + 1])
    return pre


def _sweep(activations, couplings, terms, states, gauss_seidel: bool):
    """One Jacobi or Gauss--Seidel update of all layers (one sample): new states and the
    pre-activations used."""
    new, pres = list(states), []
    for l in range(len(states)):
        below = None if l == 0 else (new[l - 1] if gauss_seidel else states[l - 1])
        pre = _pre_activation(couplings, terms, states, l, below)
        pres.append(pre)
        new[l] = activations[l].prox(pre)
    return new, pres


def _energy(activations, couplings, terms, states) -> jax.Array:
    """H for one sample."""
    value = 0.0
    for act, b, s in zip(activations, terms, states):
        value = value + jnp.sum(act.penalty(s)) + 0.5 * jnp.sum(s * s) - jnp.sum(b * s)
    for l, a in enumerate(couplings):
        value = value - jnp.vdot(states[l + 1], linear_map.apply(a, states[l]))
    return value


@dataclasses.dataclass(frozen=True)
class _DeepMap:
    """The Jacobi or Gauss--Seidel map of a chain for the engine (hashable): ``map(z, params,
    c1)`` with ``params = (couplings, (b_2, ..., b_L))`` and flat ``z``."""

    activations: tuple
    shapes: tuple
    gauss_seidel: bool

    @property
    def has_penalties(self) -> bool:
        return all(a.penalty is not None for a in self.activations)

    def _parts(self, z, params, c1):
        couplings, rest = params
        terms = [c1] + [jnp.broadcast_to(b, s) for b, s in zip(rest, self.shapes[1:])]
        return couplings, terms, _unflatten(self.shapes, z)

    def __call__(self, z, params, c1):
        couplings, terms, states = self._parts(z, params, c1)
        new, _ = _sweep(self.activations, couplings, terms, states, self.gauss_seidel)
        return jnp.concatenate([s.reshape(-1) for s in new]).astype(z.dtype)

    @property
    def objective(self):
        return self._objective if self.has_penalties else None

    def jacobian_transpose(self, z, params, c1):
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
        _, pres = _sweep(self.activations, couplings, terms, states, self.gauss_seidel)
        slopes = [jax.jvp(act.prox, (pre,), (jnp.ones_like(pre),))[1]
                  for act, pre in zip(self.activations, pres)]
        last = len(states) - 1

        def apply(v):
            vs = _unflatten(self.shapes, v)
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

    def _objective(self, z, params, c1):
        couplings, terms, states = self._parts(z, params, c1)
        return _energy(self.activations, couplings, terms, states)

    def value_and_map(self, z, params, c1):
        couplings, terms, states = self._parts(z, params, c1)
        new, pres = _sweep(self.activations, couplings, terms, states, self.gauss_seidel)
        image = jnp.concatenate([s.reshape(-1) for s in new]).astype(z.dtype)
        if self.gauss_seidel:  # the sweep's pre-activations mix old and new states
            return _energy(self.activations, couplings, terms, states), image
        # Jacobi: sum_l <s_l, pre_l - b_l> = s^T K s = 2 sum_l <s_(l+1), A_l s_l>.
        value = 0.0
        for act, b, s, pre in zip(self.activations, terms, states, pres):
            value = value + jnp.sum(act.penalty(s)) + 0.5 * jnp.sum(s * s) - jnp.sum(b * s) \
                - 0.5 * jnp.vdot(s, pre - b)
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


def _one_map(problem, s, x, gauss_seidel):
    if jnp.shape(s) != (problem.state_size,):
        raise ValueError(
            f"s must be one flat state of shape ({problem.state_size},) (layer shapes "
            f"{problem.shapes}); got {jnp.shape(s)}")
    if tuple(jnp.shape(x)) != tuple(problem.input_shape):
        raise ValueError(
            f"x must be one sample of shape {problem.input_shape}; got {jnp.shape(x)}")
    c1 = problem.sample_data(x[None])[0]
    map_fn = _DeepMap(problem.activations, problem.shapes, gauss_seidel)
    return map_fn(s, problem.parameters(), c1)


def _batched_states(problem: DeepProblem, s, batch: int | None) -> jax.Array:
    """Flat ``(B, state_size)`` states from a flat array or a list of per-layer arrays."""
    if isinstance(s, (list, tuple)):
        states = [jnp.asarray(v) for v in s]
        want = [(batch,) + shape for shape in problem.shapes]
        got = [tuple(v.shape) for v in states]
        if len(states) != problem.num_layers or (batch is not None and got != want):
            raise ValueError(
                f"states must be {problem.num_layers} arrays of shapes {want}; got {got}")
        return jnp.concatenate([v.reshape(v.shape[0], -1) for v in states], axis=1)
    s = jnp.asarray(s)
    wrong_batch = batch is not None and s.ndim == 2 and s.shape[0] != batch
    if s.ndim != 2 or s.shape[1] != problem.state_size or wrong_batch:
        raise ValueError(
            f"s must have shape (batch, {problem.state_size}) (flat states, layer shapes "
            f"{problem.shapes}), or be a list of per-layer (batch,) + shape arrays; got "
            f"{s.shape}")
    return s


def states_of(problem: DeepProblem, flat: jax.Array) -> list[jax.Array]:
    """Flat ``(B, state_size)`` states split into per-layer arrays of their shapes."""
    return [p.reshape((flat.shape[0],) + shape)
            for p, shape in zip(split(problem.sizes, flat), problem.shapes)]


def objective(problem: DeepProblem, s, x: jax.Array) -> jax.Array:
    """Per-sample H(s; x), shape ``(B,)``; ``s`` flat ``(B, state_size)`` or a list of
    per-layer arrays. ``+inf`` where some ``s_l`` leaves the domain of its penalty (e.g.
    ``s < 0`` for relu)."""
    x = problem.check_input(x)
    flat = _batched_states(problem, s, x.shape[0])
    missing = [a.name for a in problem.activations if a.penalty is None]
    if missing:
        raise ValueError(
            f"the objective needs the penalty f of every activation; {missing} have none "
            "(pass penalty= to optjax.activations.from_function)")
    map_fn = _DeepMap(problem.activations, problem.shapes, False)
    return jax.vmap(map_fn.objective, in_axes=(0, None, 0))(
        flat, problem.parameters(), problem.sample_data(x))


# -- convexity -------------------------------------------------------------------------------


def coupling_norms(couplings: Sequence[Any]) -> jax.Array:
    """Spectral norms ``(||A_1||, ..., ||A_{L-1}||)`` (shape ``(L-1,)``): exact for dense
    couplings, the map's certified bound otherwise; differentiable where the top singular
    value is simple."""
    if not couplings:
        return jnp.zeros((0,))
    return jnp.stack([linear_map.spectral_norm(a) for a in couplings])


def _layer_sums(norms: jax.Array) -> jax.Array:
    """``||A_{l-1}|| + ||A_l||`` for every layer (``A_0 = A_L = 0``)."""
    padded = jnp.concatenate([jnp.zeros((1,), norms.dtype), norms, jnp.zeros((1,), norms.dtype)])
    return padded[:-1] + padded[1:]


def convexity_margin(problem: DeepProblem) -> jax.Array:
    r""":math:`m = 1 - \max_l(\|A_{l-1}\| + \|A_l\|)` (1 for one layer; ``coupling_norms`` when
    given, else computed).

    :math:`m \ge 0` implies :math:`I - K \succeq 0` (H convex); :math:`m > 0` makes H
    :math:`m`-strongly convex and the Jacobi map an :math:`(1-m)`-contraction. It is a sufficient
    condition, independent of the activations' slopes."""
    norms = coupling_norms(problem.couplings) if problem.coupling_norms is None else \
        jnp.asarray(problem.coupling_norms)
    if norms.size == 0:
        return jnp.asarray(1.0, problem.dtype)
    return 1.0 - jnp.max(_layer_sums(norms))


def normalize(couplings: Sequence[Any], rho: float = 0.95, norms=None) -> tuple:
    r"""Rescale the couplings so that :math:`\|A_{l-1}\| + \|A_l\| \le \rho` for every layer.

    With :math:`t_l = \min(1, \rho / (\|A_{l-1}\| + \|A_l\|))`, :math:`A_l` is multiplied by
    :math:`\min(t_l, t_{l+1})`, so layer :math:`l`'s sum becomes at most
    :math:`t_l (\|A_{l-1}\| + \|A_l\|) \le \rho`. Couplings that already satisfy the condition are
    unchanged (the map is idempotent), and a two-layer chain gets :math:`\|A_1\| \le \rho`.

    The result is a differentiable function of the couplings: gradients flow through the norms
    (exact, or the given ``norms``: any differentiable upper bounds), so implicit gradients of
    a model that normalises its couplings are those of the normalised model (checked against
    finite differences in the tests). Returns the couplings scaled (dense arrays or linear-map
    pytrees alike).
    """
    require(
        isinstance(rho, (int, float)) and not isinstance(rho, bool) and 0 < rho <= 1,
        f"rho must be in (0, 1] (the bound on ||A_(l-1)|| + ||A_l||), got {rho!r}")
    couplings = tuple(couplings)
    if not couplings:
        return ()
    norms = coupling_norms(couplings) if norms is None else jnp.asarray(norms)
    scale = normalization_scales(norms, rho)
    return tuple(jax.tree_util.tree_map(lambda leaf, k=scale[l]: leaf * k.astype(leaf.dtype), a)
                 for l, a in enumerate(couplings))


def normalization_scales(norms: jax.Array, rho: float) -> jax.Array:
    r"""The factors :math:`\min(t_l, t_{l+1})` of :func:`normalize` for the coupling norms
    ``norms`` (differentiable); the normalised couplings have norms ``scales * norms``."""
    sums = _layer_sums(norms)
    t = jnp.minimum(1.0, rho / jnp.maximum(sums, jnp.finfo(sums.dtype).tiny))
    return jnp.minimum(t[:-1], t[1:])


# -- the solve -------------------------------------------------------------------------------


def equilibrium(problem: DeepProblem, x: jax.Array, *, sweep: str | None = None, init=None,
                **options) -> tuple[list[jax.Array], Any]:
    """Solve the chain with :func:`optjax.equilibrium` and return ``([s_1, ..., s_L], info)``,
    ``s_l`` of shape ``(B,) + shape_l``, differentiable (implicitly) in the problem's arrays and
    ``x``.

    Args:
      problem: a :class:`DeepProblem`.
      x: inputs ``(B,) + problem.input_shape``.
      sweep: ``"jacobi"`` or ``"gauss_seidel"`` to override ``problem.sweep``.
      init: initial states (flat ``(B, state_size)`` or per layer); default 0. No gradient.
      **options: as :func:`optjax.equilibrium` (``solver``: default plain iteration, which
        converges for both sweeps when the margin is positive; ``"safeguarded_anderson"`` uses
        H; Nesterov assumes a 1-smooth objective while ``||I - K|| <= 2 - m``, so it can stall
        with the Jacobi sweep. ``backward``: GMRES by default; ``"cg"`` is refused).
    """
    from optjax.equilibrium import equilibrium as solve

    if not isinstance(problem, DeepProblem):
        raise TypeError(f"problem must be an optjax.deep.DeepProblem, got {type(problem).__name__}")
    if sweep is not None:
        if sweep not in SWEEPS:
            raise ConfigError(f"sweep must be one of {SWEEPS}, got {sweep!r}")
        problem = dataclasses.replace(problem, sweep=sweep)
    x = problem.check_input(x)
    if init is not None:
        init = _batched_states(problem, init, x.shape[0])
    flat, info = solve(problem, x, init=init, **options)
    return states_of(problem, flat), info
