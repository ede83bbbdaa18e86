r"""OptEq layers as Flax NNX modules: thin holders of parameters that call the core.

``OptEqDense``: :math:`z^\star = \operatorname{prox}_R(W^\top\sigma(W z^\star + U x + b))`,
``W`` of shape ``(hidden, features)``.

``OptEqConv``: the same with ``W`` a ``k x k`` convolution from ``channels`` to ``hidden``
channels (stride 1, same size), :math:`W^\top` its exact adjoint, and :math:`U x + b` a
convolution of the input.

Both keep :math:`\|W\| \le \rho` by the reparametrisation of :mod:`optjax.nn.spectral`. After
each call ``layer.stats`` summarises the solve (fixed-size scalars,
:class:`optjax.nn.SolveSummary`); ``z, info = layer(x, return_info=True)`` also returns the
per-sample :class:`optjax.SolveInfo`.

**What is certified, and what it costs.** ``certify=None`` (default): in evaluation mode
(``model.eval()``, or ``nnx.view(model, use_running_average=True, deterministic=True)``), the
exact (dense) or certified (convolution) norm of the used weight is computed, the weight
rescaled once more if the power-iteration estimate fell short, so :math:`\|W\| \le \rho` holds
exactly, and every sample gets the suboptimality and distance bounds. In training mode no norm
is computed (a dense 512 x 256 exact norm costs more than a whole forward solve on a CPU):
:math:`\|W\| \le \rho` then holds up to the error of the power-iteration estimate (a lower bound
of :math:`\|V\|` that tracks the weights with ``power_steps`` steps per call, 3 by default: with
one step, a convolution's estimate fell behind Adam's updates at learning rate 1e-2 and training
diverged), the objective stays convex as long as that error is below :math:`1/\rho - 1` (5% at
:math:`\rho = 0.95`), clearly nonconvex weights are still flagged (a certified lower bound on
:math:`\|W\|`), and the bounds are reported as infinite. ``certify=True`` certifies every call
(training included); ``certify=False`` never does. So training never pays the exact norm by
default, and the exact certificate of a trained model is one evaluation-mode call away:
``eval_model = nnx.view(model, use_running_average=True, deterministic=True)``, then
``eval_model(x)`` (``layer.stats.suboptimality_bound_max``) or ``layer(x, return_info=True)`` on
the layer of ``eval_model`` (per-sample bounds).

Priors (docs/maths.md, sections 5 and 6): ``prior`` is any :mod:`optjax.convex.priors` prior; the
quadratic prior's feature is :math:`u = T(0) = W^\top\sigma(U x + b)`, the first step of plain
iteration. ``anchor`` selects among several equilibria with Halpern's iteration, so it needs
``rho=1`` (with :math:`\rho < 1` the equilibrium is unique and an anchor would change nothing
but the speed): ``"zero"`` (minimum-norm equilibrium) or ``"injection"`` (:math:`T(0)`, as
above).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

import optjax
from optjax.linalg import linear_map
from optjax.convex import activations as _activations
from optjax.convex import priors as _priors
from optjax.config import ConfigError
from optjax.engine.backward import Backward
from optjax.engine.result import BackwardStats
from optjax.linalg.convolution import Conv2D
from optjax.nn.base import EquilibriumModule, Output
from optjax.nn.spectral import (PowerIterationState, certified_norm, initial_vector, normalize,
                                 power_step)
from optjax.solvers import Solver

__all__ = ["OptEqDense", "OptEqConv"]

_ANCHORS = (None, "zero", "injection")
_OUTPUTS = ("z", "s")


def _check_sizes(owner: str, **sizes: Any) -> None:
    for name, value in sizes.items():
        if value is None:
            continue
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ConfigError(f"{owner}: {name} must be a positive int, got {value!r}")


class _OptEqBase(EquilibriumModule):
    """Shared settings and the solve; subclasses define the weights and the injection."""

    if TYPE_CHECKING:  # each layer's: W, a dense array or a Conv2D
        def _raw_weight(self) -> Any: ...

    def _setup(self, *, activation: str | _activations.Activation, rho: float,
               solver: str | Solver | None, tol: float, max_steps: int, backward: str | Backward,
               output: str, prior: _priors.Prior | None, anchor: str | None,
               certify: bool | None, compute_dtype: DTypeLike | None, power_steps: int,
               state_shape: tuple[int, ...], param_dtype: DTypeLike, rngs: nnx.Rngs) -> None:
        if not 0.0 < rho <= 1.0:
            raise ConfigError(
                f"rho must be in (0, 1] so that ||W|| <= rho keeps the objective convex; got {rho}"
            )
        if output not in _OUTPUTS:
            raise ConfigError(f"output must be one of {_OUTPUTS}, got {output!r}")
        if anchor == "learned":
            raise ConfigError(
                "anchor='learned' is not available: the equilibrium Halpern selects does not "
                "depend differentiably on the anchor through implicit differentiation (I - J "
                "is singular there), so a learned anchor would never get a gradient; use "
                "'zero' or 'injection' with rho=1, or init to warm-start")
        if anchor not in _ANCHORS:
            raise ConfigError(f"anchor must be one of {_ANCHORS}, got {anchor!r}")
        if anchor is not None and rho < 1.0:
            raise ConfigError(
                f"anchor={anchor!r} needs rho=1: with rho = {rho} < 1 the equilibrium is unique, "
                "so an anchor changes nothing except making the solve slow (Halpern converges "
                "as O(1/k)); drop the anchor, or set rho=1 to choose among several equilibria")
        if certify not in (None, True, False):
            raise ConfigError(f"certify must be None (exact in evaluation mode), True or False; "
                              f"got {certify!r}")
        if prior is not None and not isinstance(prior, _priors.Prior):
            raise ConfigError(f"prior must be an optjax.convex.priors.Prior, got {type(prior).__name__}")
        self.activation = (activation if isinstance(activation, _activations.Activation)
                           else _activations.get(activation))
        self.rho = float(rho)
        self.solver = "halpern" if (anchor is not None and solver is None) else solver
        self.tol = tol
        self.max_steps = max_steps
        self.backward = backward
        self.output = output
        self.prior = prior
        self.anchor_kind = anchor
        self.certify = certify
        self.compute_dtype = compute_dtype
        self.power_steps = power_steps
        self._init_stats()
        # Converge the estimate once at construction; afterwards a few steps per training call
        # track the slowly changing weights.
        self.power = PowerIterationState(
            initial_vector(self._raw_weight(), rngs.params(), tuple(state_shape), param_dtype))

    def used_weight(self) -> Any:
        """The normalised weight W (updates the power-iteration vector in training mode)."""
        steps = self.power_steps if not self.use_running_average else 0
        v, sigma = power_step(self._raw_weight(), self.power.get_value(), steps)
        if not self.use_running_average:
            self.power.set_value(v)
        return normalize(self._raw_weight(), sigma, self.rho)

    def certified_weight(self) -> tuple[Any, jax.Array]:
        """``(W, ||W||)`` as evaluation mode uses them: the normalised weight (frozen power
        vector) corrected with the certified norm so that ``||W|| <= rho`` exactly."""
        v, sigma = power_step(self._raw_weight(), self.power.get_value(), 0)
        weight = normalize(self._raw_weight(), sigma, self.rho)
        norm = certified_norm(weight)
        scale = jnp.minimum(1.0, self.rho / jnp.maximum(norm, 1e-30))
        return jax.tree_util.tree_map(lambda a: a * scale.astype(a.dtype), weight), norm * scale

    def _injection_norm(self) -> jax.Array:  # pragma: no cover - defined by each layer
        raise NotImplementedError

    def input_lipschitz(self) -> jax.Array:
        r"""A certified bound on the Lipschitz constant of ``x -> z*`` of evaluation mode
        (:meth:`optjax.OptEqProblem.input_lipschitz` on the certified weight, times the
        injection's norm); ``inf`` when no strong convexity is certified (``rho = 1``).
        With ``output="s"`` the bound is of ``s* = sigma(W z* + U x + b)``:
        :math:`s_\sigma (\|W\| L_z + \|U\|)`."""
        weight, norm = self.certified_weight()
        problem = optjax.OptEqProblem(weight, self.activation, prior=self.prior,
                                      weight_norm=jax.lax.stop_gradient(norm))
        u = self._injection_norm()
        bound = problem.input_lipschitz() * u
        if self.output == "s":
            bound = self.activation.slope_bound * (norm * bound + u)
        return bound

    def _certifies(self) -> bool:
        return self.use_running_average if self.certify is None else self.certify

    def _solve(self, weight: Any, injection: jax.Array, return_info: bool,
               backward_probe: BackwardStats | None = None) -> Output:
        batch = injection.shape[0]
        norm = None
        certify = self._certifies()
        if certify:
            # The power estimate is a lower bound of ||V||: correct the scale with the certified
            # norm, so that ||W|| <= rho exactly, and hand that norm to the certificate. The
            # gradient flows through the correction too (the module's gradient is exact: a
            # stopped correction was 16% off for a convolution whose power vector had not
            # converged); it costs one more eigen-decomposition per frequency, in certified
            # calls only (evaluation mode by default, where nothing is differentiated).
            norm = certified_norm(weight)
            scale = jnp.minimum(1.0, self.rho / jnp.maximum(norm, 1e-30))
            weight = jax.tree_util.tree_map(lambda a: a * scale.astype(a.dtype), weight)
            norm = norm * scale
        problem = optjax.OptEqProblem(weight, self.activation, prior=self.prior, weight_norm=norm,
                                      compute_dtype=self.compute_dtype)
        first_step = None
        if isinstance(self.prior, _priors.Quadratic) or self.anchor_kind == "injection":
            first_step = optjax.operator(
                optjax.OptEqProblem(weight, self.activation, compute_dtype=self.compute_dtype),
                jnp.zeros((batch,) + problem.state_shape, injection.dtype), injection,
            )
        anchor = None
        if self.anchor_kind == "zero":
            anchor = jnp.zeros(problem.state_shape, injection.dtype)
        elif self.anchor_kind == "injection":
            anchor = first_step
        feature = first_step if isinstance(self.prior, _priors.Quadratic) else None
        z, info = optjax.equilibrium(
            problem, injection, solver=self.solver, tol=self.tol, max_steps=self.max_steps,
            backward=self.backward, feature=feature, anchor=anchor, certify=certify,
            backward_probe=backward_probe,
        )
        if self.output == "s":
            z = self.activation(jax.vmap(lambda zi: linear_map.apply(weight, zi))(z) + injection)
        return self._finish(z, info, return_info)


class OptEqDense(_OptEqBase):
    """Dense OptEq layer: ``x (B, in_features) -> z* (B, features)`` (or ``s* (B, hidden)``).

    Args:
      in_features, features: sizes of x and of the equilibrium z.
      hidden: rows of W (the width of sigma's argument); default ``2 * features``.
      activation: a registry name or :class:`optjax.Activation` (a proximal operator).
      rho: the bound on ``||W||`` kept by the reparametrisation (< 1: strongly convex).
      solver, tol, max_steps, backward: passed to :func:`optjax.equilibrium`.
      output: ``"z"`` (the minimiser) or ``"s"`` (``sigma(W z* + U x + b)``).
      prior, anchor: see the module docstring.
      certify: ``None`` (default): the exact ``||W||`` and the certificate in evaluation mode
        only; ``True``: every call; ``False``: never (see the module docstring).
      compute_dtype: e.g. ``jnp.bfloat16`` to evaluate T in mixed precision.

    ``__call__(x, *, return_info=False, backward_probe=None)``: ``x`` of shape
    ``(batch, in_features)``; ``backward_probe`` as :func:`optjax.equilibrium`'s; returns
    ``z`` (or ``(z, info)`` with the per-sample :class:`optjax.SolveInfo`).

    Examples:
      >>> import jax
      >>> from flax import nnx
      >>> from optjax.nn import OptEqDense
      >>> layer = OptEqDense(64, 16, rngs=nnx.Rngs(0))        # in_features, features
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 64))
      >>> layer(x).shape                                      # training mode: no certificate
      (2, 16)
      >>> float(layer.stats.distance_bound_max[...])
      inf
      >>> layer.eval()                                        # evaluation mode: certified
      >>> z, info = layer(x, return_info=True)
      >>> bool(info.converged.all()), bool((info.certificate.distance_bound < 0.01).all())
      (True, True)
    """

    def __init__(self, in_features: int, features: int, hidden: int | None = None, *,
                 activation: str | _activations.Activation = "relu", rho: float = 0.95,
                 solver: str | Solver | None = None, tol: float = 1e-4, max_steps: int = 100,
                 backward: str | Backward = "auto", output: str = "z",
                 prior: _priors.Prior | None = None, anchor: str | None = None,
                 certify: bool | None = None, compute_dtype: DTypeLike | None = None,
                 power_steps: int = 3, param_dtype: DTypeLike = jnp.float32,
                 rngs: nnx.Rngs) -> None:
        _check_sizes("OptEqDense", in_features=in_features, features=features, hidden=hidden)
        hidden = hidden or 2 * features
        self.in_features, self.features, self.hidden = in_features, features, hidden
        k1, k2 = jax.random.split(rngs.params())
        self.weight = nnx.Param(
            jax.random.normal(k1, (hidden, features), param_dtype) / jnp.sqrt(features))
        self.input_weight = nnx.Param(
            jax.random.normal(k2, (hidden, in_features), param_dtype) / jnp.sqrt(in_features))
        self.bias = nnx.Param(jnp.zeros((hidden,), param_dtype))
        self._setup(activation=activation, rho=rho, solver=solver, tol=tol, max_steps=max_steps,
                    backward=backward, output=output, prior=prior, anchor=anchor, certify=certify,
                    compute_dtype=compute_dtype, power_steps=power_steps,
                    state_shape=(features,), param_dtype=param_dtype, rngs=rngs)

    def _raw_weight(self) -> jax.Array:
        return self.weight.get_value()

    def _injection_norm(self) -> jax.Array:
        return linear_map.spectral_norm(self.input_weight.get_value())

    def __call__(self, x: jax.Array, *, return_info: bool = False,
                 backward_probe: BackwardStats | None = None) -> Output:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"OptEqDense expects x of shape (batch, {self.in_features}); got {tuple(x.shape)}"
            )
        injection = x @ self.input_weight.get_value().T + self.bias.get_value()
        return self._solve(self.used_weight(), injection, return_info, backward_probe)


class OptEqConv(_OptEqBase):
    """Convolutional OptEq layer: ``x (B, H, W, in_channels) -> z* (B, H, W, channels)`` (or
    ``s* (B, H, W, hidden)``), W a ``kernel_size`` convolution ``channels -> hidden``.

    Arguments as :class:`OptEqDense`, plus ``spatial = (H, W)``, ``kernel_size`` (odd) and
    ``padding`` (``"zeros"``: the norm is a certified FFT upper bound; ``"circular"``: exact).
    ``__call__(x, *, return_info=False, backward_probe=None)`` as :class:`OptEqDense`.

    Examples:
      >>> import jax
      >>> from flax import nnx
      >>> from optjax.nn import OptEqConv
      >>> layer = OptEqConv(1, 4, (6, 6), rngs=nnx.Rngs(0))   # in_channels, channels, (H, W)
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 1))
      >>> layer(x).shape
      (2, 6, 6, 4)
      >>> float(layer.stats.converged_share[...])
      1.0
    """

    def __init__(self, in_channels: int, channels: int, spatial: Sequence[int],
                 hidden: int | None = None, *, kernel_size: int = 3, padding: str = "zeros",
                 activation: str | _activations.Activation = "relu", rho: float = 0.95,
                 solver: str | Solver | None = None, tol: float = 1e-3, max_steps: int = 100,
                 backward: str | Backward = "auto", output: str = "z",
                 prior: _priors.Prior | None = None, anchor: str | None = None,
                 certify: bool | None = None, compute_dtype: DTypeLike | None = None,
                 power_steps: int = 3, param_dtype: DTypeLike = jnp.float32,
                 rngs: nnx.Rngs) -> None:
        _check_sizes("OptEqConv", in_channels=in_channels, channels=channels, hidden=hidden,
                     kernel_size=kernel_size)
        if len(tuple(spatial)) != 2:
            raise ConfigError(f"OptEqConv: spatial must be (H, W), got {spatial!r}")
        _check_sizes("OptEqConv", height=spatial[0], width=spatial[1])
        if kernel_size % 2 == 0:
            raise ConfigError(f"OptEqConv: kernel_size must be odd (a 'same'-sized convolution "
                              f"with an exact adjoint), got {kernel_size}")
        hidden = hidden or 2 * channels
        self.in_channels, self.channels, self.hidden = in_channels, channels, hidden
        self.spatial = tuple(int(s) for s in spatial)
        self.padding = padding
        k = kernel_size
        fan = k * k * channels
        self.kernel = nnx.Param(
            jax.random.normal(rngs.params(), (k, k, channels, hidden), param_dtype) / jnp.sqrt(fan))
        self.injection = nnx.Conv(in_channels, hidden, (k, k), padding="SAME",
                                  param_dtype=param_dtype, rngs=rngs)
        self._setup(activation=activation, rho=rho, solver=solver, tol=tol, max_steps=max_steps,
                    backward=backward, output=output, prior=prior, anchor=anchor, certify=certify,
                    compute_dtype=compute_dtype, power_steps=power_steps,
                    state_shape=self.spatial + (channels,), param_dtype=param_dtype, rngs=rngs)

    def _raw_weight(self) -> Conv2D:
        return Conv2D(self.kernel.get_value(), self.spatial, self.padding)

    def _injection_norm(self) -> jax.Array:
        return Conv2D(self.injection.kernel.get_value(), self.spatial).spectral_norm()

    def __call__(self, x: jax.Array, *, return_info: bool = False,
                 backward_probe: BackwardStats | None = None) -> Output:
        want = self.spatial + (self.in_channels,)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"OptEqConv expects x of shape (batch,) + {want} (channels last); got "
                f"{tuple(x.shape)}" + (
                    f": {x.shape[-1]} input channels, the layer was built for {self.in_channels}"
                    if x.ndim == 4 and x.shape[-1] != self.in_channels else "")
            )
        return self._solve(self.used_weight(), self.injection(x), return_info, backward_probe)
