r"""Deep OptEq as a Flax NNX module (docs/maths.md, section 4; the maths is in
:mod:`optjax.families.deep`).

``DeepOptEq`` holds raw couplings :math:`V_l`, the input weight :math:`U` and the biases
:math:`b_l` as parameters and solves

.. math:: s_l = \sigma_l(A_{l-1} s_{l-1} + A_l^\top s_{l+1} + b_l), \qquad b_1 = U x + b,

with the used couplings :math:`A = \operatorname{normalize}(V, \rho)`
(:func:`optjax.deep.normalize`): exact spectral norms, rescaled so that
:math:`\|A_{l-1}\| + \|A_l\| \le \rho` for every layer, whatever the parameters are. The
equilibrium therefore always minimises a :math:`(1 - \rho)`-strongly convex objective, and the
solve is certified with the norms computed for the normalisation (no second computation).
Gradients flow through the normalisation (the norms' derivatives included), so they are the
exact gradients of the normalised model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from optjax.convex import activations as _activations
from optjax.engine import backward as _backward
from optjax.families import deep as _deep
from optjax.families.deep import problem as _deep_problem
from optjax import solvers as _solvers
from optjax.config import ConfigError
from optjax.engine.result import BackwardStats
from optjax.nn.base import EquilibriumModule, Output

__all__ = ["DeepOptEq", "DeepOptEqConv"]


class _DeepChain(EquilibriumModule):
    """Settings, normalisation and the solve shared by the dense and convolutional chains;
    subclasses hold the raw couplings and define :meth:`_raw_couplings` and the input."""

    if TYPE_CHECKING:  # each chain's
        def _raw_couplings(self) -> tuple: ...

        def states(self, x: jax.Array, *, return_info: bool = False,
                   backward_probe: BackwardStats | None = None) -> Output: ...

    def _settings(self, num_layers: int, *,
                  activation: (str | _activations.Activation
                               | Sequence[str | _activations.Activation]),
                  rho: float, sweep: str, solver: str | _solvers.Solver, tol: float,
                  max_steps: int, backward: str | _backward.Backward) -> None:
        if not (isinstance(rho, (int, float)) and 0.0 < rho <= 1.0):
            raise ConfigError(
                f"rho must be in (0, 1] so that ||A_(l-1)|| + ||A_l|| <= rho keeps the objective "
                f"convex; got {rho!r}"
            )
        if sweep not in _deep.SWEEPS:
            raise ConfigError(f"sweep must be one of {_deep.SWEEPS}, got {sweep!r}")
        _solvers.get(solver)  # fail early on bad settings
        if _backward.get(backward).requires_symmetric:
            raise ConfigError(
                f"backward={backward!r} needs a symmetric system, but the Jacobian of the deep "
                "map is not symmetric; use backward='gmres' or 'fixed_point'")
        if isinstance(activation, (str, _activations.Activation)):
            activation = (activation,) * num_layers
        acts = tuple(_deep_problem.as_activation(a) for a in activation)
        if len(acts) != num_layers:
            raise ConfigError(f"got {len(acts)} activations for {num_layers} layers")
        self.activations = acts
        self.rho = float(rho)
        self.sweep = sweep
        self.solver = solver
        self.tol = tol
        self.max_steps = max_steps
        self.backward = backward

    def used_couplings(self) -> tuple:
        """The normalised couplings ``A_l`` the solve uses."""
        return self._normalized()[0]

    def _normalized(self) -> tuple[tuple, jax.Array | None]:
        """The normalised couplings and their norms ``scale_l ||V_l||`` (for the certificate)."""
        raw = self._raw_couplings()
        if not raw:
            return (), None
        norms = _deep.coupling_norms(raw)
        scales = _deep.normalization_scales(norms, self.rho)
        couplings = tuple(jax.tree_util.tree_map(lambda a, k=k: a * k.astype(a.dtype), v)
                          for v, k in zip(raw, scales))
        return couplings, jax.lax.stop_gradient(scales * norms)

    def _solve(self, problem: _deep.DeepProblem, x: jax.Array, return_info: bool,
               backward_probe: BackwardStats | None = None) -> Output:
        states, info = _deep.equilibrium(
            problem, x, solver=self.solver, tol=self.tol, max_steps=self.max_steps,
            backward=self.backward, backward_probe=backward_probe,
        )
        return self._finish(states, info, return_info)

    def __call__(self, x: jax.Array, *, return_info: bool = False,
                 backward_probe: BackwardStats | None = None) -> Output:
        states, info = self.states(x, return_info=True, backward_probe=backward_probe)
        return (states[-1], info) if return_info else states[-1]


class DeepOptEq(_DeepChain):
    """A chain of ``L = len(layer_sizes)`` OptEq layers with feed-forward and feedback couplings.

    ``x (B, in_features) -> s_L (B, layer_sizes[-1])``, the last layer's equilibrium state; all
    states of the last call are returned by :meth:`states`.

    Args:
      in_features: size of x.
      layer_sizes: ``(n_1, ..., n_L)``.
      activation: a registry name or :class:`optjax.Activation` for every layer, or one per layer.
      rho: bound on ``||A_(l-1)|| + ||A_l||`` kept by the normalisation, in (0, 1]
        (< 1: strongly convex, unique equilibrium).
      sweep: ``"gauss_seidel"`` (layer by layer, a forward pass with feedback) or ``"jacobi"``.
      solver, tol, max_steps, backward: passed to :func:`optjax.deep.equilibrium`.
      param_dtype: dtype of the parameters.
      rngs: ``nnx.Rngs`` for the initialisation (``A_l`` and ``U`` Gaussian with variance
        1/fan-in, biases 0).

    ``__call__(x, *, return_info=False)`` returns ``s_L`` (or ``(s_L, info)`` with the
    per-sample :class:`optjax.SolveInfo`); after each call ``self.stats`` summarises the solve
    (:class:`optjax.nn.SolveSummary`). The solve is certified in both modes (the norms are
    computed for the normalisation anyway), so evaluation mode changes nothing here; it is
    accepted so that ``model.eval()`` and ``nnx.view`` reach every layer alike.

    Examples:
      >>> import jax
      >>> from flax import nnx
      >>> from optjax.nn import DeepOptEq
      >>> layer = DeepOptEq(3, (8, 4), rngs=nnx.Rngs(0))      # in_features, layer sizes
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
      >>> layer(x).shape                                      # the last layer's state
      (2, 4)
      >>> [s.shape for s in layer.states(x)]                  # every layer's
      [(2, 8), (2, 4)]
      >>> float(layer.stats.converged_share[...])
      1.0
    """

    def __init__(
        self,
        in_features: int,
        layer_sizes: Sequence[int],
        *,
        activation: (str | _activations.Activation
                     | Sequence[str | _activations.Activation]) = "relu",
        rho: float = 0.95,
        sweep: str = "gauss_seidel",
        solver: str | _solvers.Solver = "fixed_point",
        tol: float = 1e-4,
        max_steps: int = 100,
        backward: str | _backward.Backward = "gmres",
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        sizes = tuple(layer_sizes)
        if not sizes or not all(isinstance(n, int) and n > 0 for n in sizes):
            raise ConfigError(
                f"layer_sizes must be a non-empty sequence of positive ints, got {layer_sizes!r}"
            )
        if not (isinstance(in_features, int) and in_features > 0):
            raise ConfigError(f"in_features must be a positive int, got {in_features!r}")
        self._settings(len(sizes), activation=activation, rho=rho, sweep=sweep, solver=solver,
                       tol=tol, max_steps=max_steps, backward=backward)
        self.in_features = in_features
        self.layer_sizes = sizes

        keys = jax.random.split(rngs.params(), len(sizes))
        self.input_weight = nnx.Param(
            jax.random.normal(keys[0], (sizes[0], in_features), param_dtype) / jnp.sqrt(in_features)
        )
        self.couplings = nnx.List([
            nnx.Param(jax.random.normal(k, (n_out, n_in), param_dtype) / jnp.sqrt(n_in))
            for k, n_in, n_out in zip(keys[1:], sizes[:-1], sizes[1:])
        ])
        self.biases = nnx.List([nnx.Param(jnp.zeros((n,), param_dtype)) for n in sizes])
        self._init_stats()

    def _raw_couplings(self) -> tuple:
        return tuple(a.get_value() for a in self.couplings)

    def problem(self) -> _deep.DeepProblem:
        """The :class:`optjax.families.deep.DeepProblem` this module solves."""
        couplings, norms = self._normalized()
        return _deep.DeepProblem(
            couplings,
            self.input_weight.get_value(),
            tuple(b.get_value() for b in self.biases),
            self.activations,
            sweep=self.sweep,
            coupling_norms=norms,
        )

    def input_lipschitz(self) -> jax.Array:
        """A certified bound on the Lipschitz constant of ``x -> s*`` (every layer):
        :meth:`optjax.families.deep.DeepProblem.input_lipschitz` (``U`` included)."""
        return self.problem().input_lipschitz()

    def states(self, x: jax.Array, *, return_info: bool = False,
               backward_probe: BackwardStats | None = None) -> Output:
        """All equilibrium states ``[s_1, ..., s_L]`` for the batch ``x`` (and the
        :class:`optjax.SolveInfo` if ``return_info``); updates ``self.stats``."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"DeepOptEq expects x of shape (batch, {self.in_features}); got {tuple(x.shape)}"
            )
        return self._solve(self.problem(), x, return_info, backward_probe)


class DeepOptEqConv(_DeepChain):
    """A convolutional, multi-scale deep OptEq chain: layer ``l`` is a ``(H_l, W_l, c_l)``
    feature map, coupling ``A_l`` a ``kernel_size`` convolution from layer ``l`` to layer
    ``l + 1`` with stride ``strides[l]`` (2: the next layer has half the resolution; a
    :class:`optjax.linalg.convolution.StridedConv2D`), its adjoint the feedback. The input injection
    ``U x + b_1`` is a convolution of the input (stride 1). The couplings are normalised by
    their certified FFT norms (differentiable: the gradients are those of the normalised model),
    which also certify every solve.

    ``x (B, H, W, in_channels) -> s_L (B, H_L, W_L, channels[-1])``; :meth:`states` gives every
    layer.

    Args:
      in_channels: channels of x.
      channels: ``(c_1, ..., c_L)``.
      spatial: ``(H, W)`` of x and of layer 1.
      strides: one per coupling (default all 1); the grid must be divisible by them.
      kernel_size: odd size of the couplings and of the injection.

    The other arguments are those of :class:`DeepOptEq`.

    Examples:
      >>> import jax
      >>> from flax import nnx
      >>> from optjax.nn import DeepOptEqConv
      >>> layer = DeepOptEqConv(1, (4, 8), (8, 8), strides=(2,), rngs=nnx.Rngs(0))
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
      >>> [s.shape for s in layer.states(x)]                  # 8 x 8, then 4 x 4
      [(2, 8, 8, 4), (2, 4, 4, 8)]
      >>> float(layer.stats.converged_share[...])
      1.0
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        spatial: Sequence[int],
        strides: Sequence[int] | None = None,
        *,
        kernel_size: int = 3,
        activation: (str | _activations.Activation
                     | Sequence[str | _activations.Activation]) = "relu",
        rho: float = 0.95,
        sweep: str = "gauss_seidel",
        solver: str | _solvers.Solver = "fixed_point",
        tol: float = 1e-3,
        max_steps: int = 50,
        backward: str | _backward.Backward = "fixed_point",
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        chans = tuple(channels)
        if not chans or not all(isinstance(c, int) and c > 0 for c in chans):
            raise ConfigError(f"channels must be a non-empty sequence of positive ints, got "
                              f"{channels!r}")
        strides = (1,) * (len(chans) - 1) if strides is None else tuple(strides)
        if len(strides) != len(chans) - 1 or not all(isinstance(t, int) and t >= 1
                                                     for t in strides):
            raise ConfigError(f"strides must hold one positive int per coupling "
                              f"({len(chans) - 1}), got {strides!r}")
        if not (isinstance(kernel_size, int) and kernel_size % 2 == 1):
            raise ConfigError(f"kernel_size must be an odd int, got {kernel_size!r}")
        grids = [tuple(int(n) for n in spatial)]
        for t in strides:
            if grids[-1][0] % t or grids[-1][1] % t:
                raise ConfigError(f"the grid {grids[-1]} is not divisible by the stride {t}")
            grids.append((grids[-1][0] // t, grids[-1][1] // t))
        self._settings(len(chans), activation=activation, rho=rho, sweep=sweep, solver=solver,
                       tol=tol, max_steps=max_steps, backward=backward)
        self.in_channels, self.channels, self.strides = in_channels, chans, strides
        self.grids = tuple(grids)
        k = kernel_size
        keys = jax.random.split(rngs.params(), len(chans))
        self.injection = nnx.Conv(in_channels, chans[0], (k, k), padding="SAME",
                                  param_dtype=param_dtype, rngs=rngs)
        self.couplings = nnx.List([
            nnx.Param(jax.random.normal(key, (k, k, c_in, c_out), param_dtype)
                      / jnp.sqrt(k * k * c_in))
            for key, c_in, c_out in zip(keys[1:], chans[:-1], chans[1:])
        ])
        self.biases = nnx.List([nnx.Param(jnp.zeros((c,), param_dtype)) for c in chans[1:]])
        self._init_stats()

    def _raw_couplings(self) -> tuple:
        from optjax.linalg.convolution import Conv2D, StridedConv2D

        maps = []
        for param, grid, t in zip(self.couplings, self.grids, self.strides):
            kernel = param.get_value()
            maps.append(Conv2D(kernel, grid) if t == 1 else StridedConv2D(kernel, grid, t))
        return tuple(maps)

    def problem(self) -> _deep.DeepProblem:
        """The :class:`optjax.families.deep.DeepProblem` this module solves (``x`` is the injection)."""
        couplings, norms = self._normalized()
        zero = jnp.zeros((self.channels[0],), self.biases[0].get_value().dtype)
        return _deep.DeepProblem(
            couplings, None, (zero,) + tuple(b.get_value() for b in self.biases),
            self.activations, sweep=self.sweep, coupling_norms=norms,
            layer_shapes=tuple(g + (c,) for g, c in zip(self.grids, self.channels)),
        )

    def input_lipschitz(self) -> jax.Array:
        """A certified bound on the Lipschitz constant of ``x -> s*`` (every layer):
        :meth:`optjax.families.deep.DeepProblem.input_lipschitz` times the injection's norm."""
        from optjax.linalg.convolution import Conv2D

        injection = Conv2D(self.injection.kernel.get_value(), self.grids[0]).spectral_norm()
        return self.problem().input_lipschitz() * injection

    def states(self, x: jax.Array, *, return_info: bool = False,
               backward_probe: BackwardStats | None = None) -> Output:
        """Every layer's equilibrium state (and the SolveInfo if ``return_info``)."""
        want = self.grids[0] + (self.in_channels,)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"DeepOptEqConv expects x of shape (batch,) + {want}; got "
                             f"{tuple(x.shape)}")
        return self._solve(self.problem(), self.injection(x), return_info, backward_probe)
