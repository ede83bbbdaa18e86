r"""Deep OptEq as a Flax NNX module (docs/maths.md, section 4; the maths is in
:mod:`optjax.deep`).

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

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from optjax import activations as _activations
from optjax import backward as _backward
from optjax import deep as _deep
from optjax import solvers as _solvers
from optjax.config import ConfigError
from optjax.nn._info import EquilibriumModule

__all__ = ["DeepOptEq"]


class DeepOptEq(EquilibriumModule):
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
    """

    def __init__(
        self,
        in_features: int,
        layer_sizes: Sequence[int],
        *,
        activation="relu",
        rho: float = 0.95,
        sweep: str = "gauss_seidel",
        solver="fixed_point",
        tol: float = 1e-4,
        max_steps: int = 100,
        backward="gmres",
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        sizes = tuple(layer_sizes)
        if not sizes or not all(isinstance(n, int) and n > 0 for n in sizes):
            raise ConfigError(
                f"layer_sizes must be a non-empty sequence of positive ints, got {layer_sizes!r}"
            )
        if not (isinstance(in_features, int) and in_features > 0):
            raise ConfigError(f"in_features must be a positive int, got {in_features!r}")
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
            activation = (activation,) * len(sizes)
        acts = tuple(_deep._as_activation(a) for a in activation)
        if len(acts) != len(sizes):
            raise ConfigError(f"got {len(acts)} activations for {len(sizes)} layers")

        self.in_features = in_features
        self.layer_sizes = sizes
        self.activations = acts
        self.rho = float(rho)
        self.sweep = sweep
        self.solver = solver
        self.tol = tol
        self.max_steps = max_steps
        self.backward = backward

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

    def used_couplings(self) -> tuple[jax.Array, ...]:
        """The normalised couplings ``A_l`` the solve uses."""
        return self._normalized()[0]

    def _normalized(self):
        """The normalised couplings and their norms ``scale_l ||V_l||`` (for the certificate)."""
        raw = tuple(a.get_value() for a in self.couplings)
        if not raw:
            return (), None
        norms = _deep.coupling_norms(raw)
        scales = _deep.normalization_scales(norms, self.rho)
        couplings = tuple(v * k.astype(v.dtype) for v, k in zip(raw, scales))
        return couplings, jax.lax.stop_gradient(scales * norms)

    def problem(self) -> _deep.DeepProblem:
        """The :class:`optjax.deep.DeepProblem` this module solves."""
        couplings, norms = self._normalized()
        return _deep.DeepProblem(
            couplings,
            self.input_weight.get_value(),
            tuple(b.get_value() for b in self.biases),
            self.activations,
            sweep=self.sweep,
            coupling_norms=norms,
        )

    def states(self, x: jax.Array, *, return_info: bool = False):
        """All equilibrium states ``[s_1, ..., s_L]`` for the batch ``x`` (and the
        :class:`optjax.SolveInfo` if ``return_info``); updates ``self.stats``."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"DeepOptEq expects x of shape (batch, {self.in_features}); got {tuple(x.shape)}"
            )
        states, info = _deep.equilibrium(
            self.problem(), x, solver=self.solver, tol=self.tol, max_steps=self.max_steps,
            backward=self.backward,
        )
        return self._finish(states, info, return_info)

    def __call__(self, x: jax.Array, *, return_info: bool = False):
        states, info = self.states(x, return_info=True)
        return (states[-1], info) if return_info else states[-1]
