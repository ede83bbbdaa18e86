"""The deep OptEq chain as an equilibrium problem (the maths: :mod:`optjax.families.deep`)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optjax.config import ConfigError
from optjax.convex import activations as _activations
from optjax.engine.certificate import Certificate
from optjax.engine.numerics import finite_tree, is_array_like, is_concrete, rounding_slack
from optjax.engine.problem import Conditions, Defect, EquilibriumProblem, NonconvexError
from optjax.engine.properties import MapProperty
from optjax.families.deep.normalization import convexity_margin, coupling_norms, layer_sums
from optjax.families.deep.sweeps import DeepMap
from optjax.linalg import linear_map

__all__ = ["DeepProblem", "SWEEPS", "as_activation"]

SWEEPS = ("jacobi", "gauss_seidel")


def as_activation(act: _activations.Activation | str) -> _activations.Activation:
    """An :class:`optjax.Activation` from itself or its registry name."""
    if isinstance(act, _activations.Activation):
        return act
    if isinstance(act, str):
        return _activations.get(act)
    raise TypeError(
        "activations must be optjax Activations or registry names such as 'relu'; got "
        f"{type(act).__name__}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeepProblem(EquilibriumProblem):
    """A deep OptEq chain of ``L = len(couplings) + 1`` layers (a pytree; activations and the
    sweep are static).

    Attributes:
      couplings: ``(A_1, ..., A_{L-1})``: ``A_l`` maps layer ``l``'s state to layer ``l+1``'s,
        a dense ``(n_{l+1}, n_l)`` array or a linear map (e.g. :class:`optjax.linalg.convolution.Conv2D`,
        :class:`optjax.linalg.convolution.StridedConv2D`); ``()`` for one layer.
      input_weight: ``U``: a dense ``(n_1, p)`` array, or a linear map from one input sample
        to layer 1's shape (e.g. a :class:`optjax.linalg.convolution.StridedConv2D` stem); ``None``
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
    input_weight: Any
    biases: tuple | None = None
    # a name or an Activation for every layer, made a tuple of Activations by __post_init__
    activations: tuple[_activations.Activation, ...] = dataclasses.field(
        default="relu", metadata=dict(static=True))  # type: ignore[arg-type]
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

    if TYPE_CHECKING:  # the dataclass's __init__, with the sequences and names it converts
        def __init__(self, couplings: Sequence[Any], input_weight: Any,
                     biases: Sequence[Any] | None = None,
                     activations: _activations.Activation | str | Sequence[
                         _activations.Activation | str] = "relu",
                     sweep: str = "jacobi", coupling_norms: jax.Array | None = None,
                     layer_shapes: Sequence[Sequence[int]] | None = None) -> None: ...

    def __post_init__(self) -> None:
        couplings = tuple(self.couplings)
        object.__setattr__(self, "couplings", couplings)
        num_layers = len(couplings) + 1
        acts = self.activations
        if isinstance(acts, (str, _activations.Activation)):
            acts = (acts,) * num_layers
        acts = tuple(as_activation(a) for a in acts)
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
        if all(is_array_like(leaf) for leaf in jax.tree_util.tree_leaves(self)):
            self._check_shapes()

    def _check_shapes(self) -> None:
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
        return tuple(math.prod(s) for s in self.shapes)

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
        return math.prod(self.input_shape)

    # -- the engine's interface ------------------------------------------------------------------
    @property
    def map_properties(self) -> MapProperty:
        r"""With a positive convexity margin :math:`m`: the Jacobi map :math:`\sigma(Ks + b)` is
        a :math:`(1 - m)`-contraction in the Euclidean norm (:math:`\|K\| \le 1 - m`); the
        Gauss--Seidel sweep is one in the max-over-layers norm :math:`\max_l \|s_l\|` (Jacobi
        is a contraction in that norm too, and the Gauss--Seidel sweep of such a map contracts
        by at least the same factor: Bertsekas & Tsitsiklis, *Parallel and Distributed
        Computation*, section 3.1.2). Both decrease :math:`H` (a proximal-gradient step of
        size :math:`1 < 2/\|I - K\|`; an exact block minimisation) when every activation has
        its penalty. Neither is a forward-backward step of size :math:`1/L`: :math:`H`'s
        smooth part has :math:`L = \|I - K\|`, up to :math:`2 - m`."""
        props = MapProperty.CONTRACTION
        if self.sweep == "jacobi":
            props |= MapProperty.NONEXPANSIVE
        if all(a.penalty is not None for a in self.activations):
            props |= MapProperty.OBJECTIVE
        return props

    def input_lipschitz(self) -> jax.Array:
        r"""A certified bound on the Lipschitz constant of :math:`x \mapsto s^\star(x)` (all
        layers): :math:`\|U\| / m`, :math:`m` the convexity margin (``inf`` when
        :math:`m \le 0`; :math:`\|U\| = 1` without ``input_weight``). :math:`H` is
        :math:`m`-strongly convex and the input enters it as :math:`-\langle U x, s_1\rangle`,
        whose gradient moves by :math:`\|U(x_1 - x_2)\|` (docs/maths.md, section 9)."""
        margin = jax.lax.stop_gradient(convexity_margin(self))
        u = 1.0 if self.input_weight is None else \
            jax.lax.stop_gradient(linear_map.spectral_norm(self.input_weight))
        return jnp.where(margin > 0, u / jnp.where(margin > 0, margin, 1.0), jnp.inf)

    def equilibrium_map(self) -> DeepMap:
        return DeepMap(self.activations, self.shapes, self.sweep == "gauss_seidel")

    def parameters(self) -> tuple[tuple, tuple]:
        rest = [jnp.zeros(s, self.dtype) for s in self.shapes[1:]] if self.biases is None else \
            list(self.biases[1:])
        return (self.couplings, tuple(rest))

    def sample_data(self, x: jax.Array, feature: jax.Array | None = None) -> jax.Array:
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
                is_concrete(self.couplings):
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
        margin = 1.0 - jnp.max(layer_sums(norms.astype(dtype)))
        bits = jnp.where(margin < -rounding_slack(dtype), int(Defect.NONCONVEX_WEIGHTS), 0)
        bits = bits | jnp.where(finite_tree(self), 0, int(Defect.NONFINITE_PARAMETERS))
        nan = jnp.asarray(jnp.nan, dtype)
        modulus = margin if certify else nan
        return Conditions(bits.astype(jnp.int32), modulus, 1.0 - modulus)

    def validate(self, conditions: Conditions) -> None:
        defects = conditions.defects
        if is_concrete(defects) and int(defects) & Defect.NONCONVEX_WEIGHTS and \
                is_concrete(self.couplings):
            norms = np.asarray(coupling_norms(self.couplings))
            raise NonconvexError(
                f"convexity margin 1 - max_l(||A_(l-1)|| + ||A_l||) = "
                f"{1 - float(np.max(np.asarray(layer_sums(jnp.asarray(norms))))):.6g} < 0 "
                f"(coupling norms {np.round(norms, 6).tolist()}): H is not guaranteed convex, so "
                "no unique equilibrium is guaranteed. Rescale with "
                "optjax.deep.normalize(couplings, rho).")
        super().validate(conditions)

    def certificate(self, point: jax.Array, last: jax.Array, residual: jax.Array, params: tuple,
                    data: jax.Array, conditions: Conditions) -> Certificate:
        frozen = jax.lax.stop_gradient
        point, params, data = frozen(point), frozen(params), frozen(data)
        m = frozen(conditions.modulus)
        jacobi = DeepMap(self.activations, self.shapes, False)
        image = jax.vmap(jacobi, in_axes=(0, None, 0))(point, params, data)
        r_j = jnp.sqrt(jnp.sum((point - image) ** 2, axis=1))
        positive = m > 0
        safe = jnp.where(positive, m, 1.0)
        distance = jnp.where(positive, r_j / safe, jnp.inf)
        if (objective := jacobi.objective) is not None:  # every layer has its penalty
            h = jax.vmap(objective, in_axes=(0, None, 0))
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
