r"""DEQ layers (the unconstrained baseline) in the optjax framework; monotone DEQ layers are in
:mod:`optjax.nn.mondeq`.

Each is a thin holder of parameters around a problem type of the core
(:class:`optjax.families.deq.DEQProblem`, :class:`optjax.families.mondeq.MonDEQProblem`) solved by the same engine
as the OptEq layers (:func:`optjax.equilibrium`: per-sample forward solvers, implicit gradients,
the same backward modes, the same :class:`optjax.SolveInfo`), so that comparisons measure the
models, not the code around them.

=============  ===========================================================================
layer          equilibrium (per sample, :math:`c = Ux + b`)
=============  ===========================================================================
DEQDense       :math:`z = \sigma(Wz + c)`, :math:`W \in \mathbb{R}^{d\times d}` unconstrained
DEQConv        the same, :math:`W` a 3x3 convolution over ``(H, W, C)`` feature maps
MonDEQDense    :math:`z = \operatorname{relu}(Wz + c)`,
               :math:`W = (1 - m)I - A^\top A + B - B^\top` (Winston & Kolter, 2020)
MonDEQConv     the same, :math:`A, B` 3x3 convolutions, :math:`A^\top, B^\top` their adjoints
=============  ===========================================================================

**DEQ** (Bai, Kolter & Koltun, 2019): nothing guarantees that an equilibrium exists, that it is
unique, or that the solver (Anderson by default) finds it. Non-convergence is not an error: it is
reported per sample in the :class:`optjax.SolveInfo` of ``layer(x, return_info=True)``
(``converged = False``) and summarised in ``layer.stats.converged_share``; the implicit
gradient at a non-converged point is only an approximation. :math:`I - J` is not symmetric:
the backward solve defaults to GMRES.

Every layer summarises its last call in ``layer.stats`` (fixed-size scalars that work under
``nnx.jit``, inside ``nnx.Sequential`` and in checkpoints; :class:`optjax.nn.SolveSummary`) and
returns the per-sample :class:`optjax.SolveInfo` on request:
``z, info = layer(x, return_info=True)``. Evaluation mode (``model.eval()``, ``nnx.view``)
changes nothing in these layers; they accept it so that Flax's mode switches reach every layer
alike.
"""


from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from optjax.engine.backward import Backward
from optjax.engine.result import BackwardStats
from optjax.families.deq import DEQProblem, jacobian_frobenius
from optjax.linalg.convolution import Conv2D
from optjax.nn.base import (BaselineLayer, Output, check_input, conv2d, resolve_activation,
                            solve_layer)
from optjax.solvers import Solver

__all__ = ["DEQDense", "DEQConv"]

_WEIGHT_SCALE = 0.4  # DEQ init: rows of W have norm ~0.4, so ||W|| ~ 0.8 for a random square W


def _row_normalised(v: jax.Array, gain: jax.Array, axes: int | tuple[int, ...]) -> jax.Array:
    """``gain * v / ||v||`` with the norm over ``axes`` (one norm per output unit)."""
    return gain * v / jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True))



class _DEQLayer(BaselineLayer):
    """The Jacobian penalty shared by :class:`DEQDense` and :class:`DEQConv`."""

    def _jacobian_setup(self, jacobian_penalty: bool, rngs: nnx.Rngs) -> None:
        if not isinstance(jacobian_penalty, bool):
            raise TypeError(f"{type(self).__name__}: jacobian_penalty must be True or False, "
                            f"got {jacobian_penalty!r}")
        self.jacobian_penalty = jacobian_penalty
        if not jacobian_penalty:
            return  # no state: the layer's checkpoints are those of a plain DEQ
        # The probes' key, derived without drawing from rngs (the parameters are initialised
        # as without the penalty), kept as raw uint32 data with a call counter: plain arrays
        # that checkpoints store like any other state.
        stream = rngs["jacobian"] if "jacobian" in rngs or "default" in rngs else rngs.params
        key = jax.random.fold_in(stream.key.get_value(), stream.count.get_value() + 0x4A4143)
        self.jacobian_key = nnx.Variable(jax.random.key_data(key))
        self.jacobian_calls = nnx.Variable(jnp.zeros((), jnp.uint32))

    def _solve(self, problem: DEQProblem, c: jax.Array, init: jax.Array | None, return_info: bool,
               backward_probe: BackwardStats | None) -> Output:
        z, info = solve_layer(self, problem, c, init, True, backward_probe)
        if self.jacobian_penalty and not self.use_running_average:
            calls = self.jacobian_calls[...]
            key = jax.random.fold_in(jax.random.wrap_key_data(self.jacobian_key[...]), calls)
            self.jacobian_calls[...] = calls + 1
            self.sow(nnx.Intermediate, "jacobian_frobenius",
                     jacobian_frobenius(problem, z, c, key))
        return (z, info) if return_info else z


class DEQDense(_DEQLayer):
    r"""Dense deep equilibrium layer: :math:`z^\star = \sigma(W z^\star + U x + b)`.

    :math:`W` (``features x features``) is unconstrained; with ``weight_norm`` it is
    :math:`W = \operatorname{diag}(g)\, V / \|V\|_{\text{row}}`, every row of ``V`` normalised
    to unit Euclidean norm and scaled by its gain :math:`g_i` (as PyTorch's ``weight_norm(dim=0)``
    in the DEQ reference code). Initially the rows of :math:`W` have norm 0.4, so
    :math:`\|W\|_2 \approx 0.8` and the map is a contraction for a 1-Lipschitz ``activation``;
    training may lose that. **No existence or uniqueness guarantee**: samples where the solver
    stops above ``tol`` have ``converged = False`` in the :class:`optjax.SolveInfo`.

    Args:
      in_features, features: sizes of ``x`` and ``z``.
      activation: an optjax activation name, a ``jax.nn`` function name, or a callable.
      solver: forward solver (name or :mod:`optjax.solvers` instance), Anderson by default.
      tol: per-sample tolerance on ``||z - S(z)||``.
      max_steps: iteration cap per sample.
      backward: backward mode (name or :mod:`optjax.engine.backward` instance), GMRES by default.
      weight_norm: parametrise :math:`W` by row-normalised ``V`` and gains ``g``.
      jacobian_penalty: in training mode, also estimate :math:`\|J\|_F^2 / d` per sample at
        the equilibrium (:func:`optjax.deq.jacobian_frobenius`, one Gaussian probe from the
        ``jacobian`` stream of ``rngs``, else ``default``, else ``params``) and ``sow`` it as
        the ``nnx.Intermediate`` ``"jacobian_frobenius"``: capture it with
        ``nnx.capture(model, nnx.Intermediate)`` and add a multiple of its mean to the loss
        (Bai et al. 2021; ``optjax train --jacobian-penalty``). The probes' stream is derived
        from ``rngs`` without drawing from it: the parameters are those of the layer without
        the penalty.
      param_dtype: dtype of the parameters.
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    ``__call__(x, *, init=None, return_info=False)``: ``x`` of shape ``(batch, in_features)``;
    ``init`` an optional starting point (no gradient). Returns ``z*`` of shape
    ``(batch, features)`` (and the per-sample :class:`optjax.SolveInfo` if ``return_info``).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from optjax.nn import DEQDense
      >>> layer = DEQDense(3, 4, activation=jnp.tanh, rngs=nnx.Rngs(0))   # any callable sigma
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
      >>> z, info = layer(x, return_info=True)
      >>> z.shape, bool(info.converged.all())                  # no guarantee: check it
      ((2, 4), True)
    """

    def __init__(
        self,
        in_features: int,
        features: int,
        *,
        activation: str | Callable = "relu",
        solver: str | Solver = "anderson",
        tol: float = 1e-4,
        max_steps: int = 50,
        backward: str | Backward = "gmres",
        weight_norm: bool = True,
        jacobian_penalty: bool = False,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        self._setup(solver, backward, tol, max_steps)
        self._jacobian_setup(jacobian_penalty, rngs)
        self.in_features, self.features = int(in_features), int(features)
        self.activation = resolve_activation(activation)
        self.weight_norm = bool(weight_norm)
        k_w, k_u = rngs.params(), rngs.params()
        v = jax.random.normal(k_w, (features, features), param_dtype)
        if weight_norm:
            self.weight = nnx.Param(v)
            self.gain: nnx.Param[jax.Array] | None = nnx.Param(
                jnp.full((features,), _WEIGHT_SCALE, param_dtype))
        else:
            self.weight = nnx.Param(v * (_WEIGHT_SCALE / jnp.sqrt(features)).astype(param_dtype))
            self.gain = None
        self.input_weight = nnx.Param(
            nnx.initializers.lecun_normal(in_axis=1, out_axis=0)(
                k_u, (features, in_features), param_dtype
            )
        )
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype))

    def effective_weight(self) -> jax.Array:
        """The matrix :math:`W` of the equilibrium map."""
        if self.gain is None:
            return self.weight[...]
        return _row_normalised(self.weight[...], self.gain[...][:, None], axes=1)

    def __call__(self, x: jax.Array, *, init: jax.Array | None = None,
                 return_info: bool = False,
                 backward_probe: BackwardStats | None = None) -> Output:
        x = check_input(type(self).__name__, x, (self.in_features,))
        w = self.effective_weight()
        dtype = self._dtype(x, w, self.input_weight[...])
        c = x.astype(dtype) @ self.input_weight[...].T.astype(dtype) + self.bias[...].astype(dtype)
        return self._solve(DEQProblem(w.astype(dtype), self.activation), c, init, return_info,
                           backward_probe)


class DEQConv(_DEQLayer):
    r"""Convolutional deep equilibrium layer on ``(H, W, C)`` feature maps:
    :math:`z^\star = \sigma(K * z^\star + U * x + b)`.

    :math:`K` is a 3x3 ``channels -> channels`` convolution (stride 1, 'SAME' zero padding),
    :math:`U` a 3x3 ``in_channels -> channels`` convolution of the input, :math:`b` a
    per-channel bias. With ``weight_norm`` the kernel is normalised per output channel (over its
    ``3 x 3 x C`` fan-in) and scaled by a gain, initially 0.4. No existence or uniqueness
    guarantee; see :class:`DEQDense` for the arguments and ``return_info``.

    ``__call__(x, *, init=None, return_info=False)``: ``x`` of shape
    ``(batch, H, W, in_channels)``; returns ``z*`` of shape ``(batch, H, W, channels)``.

    Examples:
      >>> import jax
      >>> from flax import nnx
      >>> from optjax.nn import DEQConv
      >>> layer = DEQConv(2, 4, rngs=nnx.Rngs(0))             # in_channels, channels
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 2))
      >>> z, info = layer(x, return_info=True)
      >>> z.shape, bool(info.converged.all())                  # no guarantee: check it
      ((2, 6, 6, 4), True)
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        activation: str | Callable = "relu",
        solver: str | Solver = "anderson",
        tol: float = 1e-4,
        max_steps: int = 50,
        backward: str | Backward = "gmres",
        weight_norm: bool = True,
        jacobian_penalty: bool = False,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        self._setup(solver, backward, tol, max_steps)
        self._jacobian_setup(jacobian_penalty, rngs)
        self.in_channels, self.channels = int(in_channels), int(channels)
        self.activation = resolve_activation(activation)
        self.weight_norm = bool(weight_norm)
        k_w, k_u = rngs.params(), rngs.params()
        v = jax.random.normal(k_w, (3, 3, channels, channels), param_dtype)
        if weight_norm:
            self.kernel = nnx.Param(v)
            self.gain: nnx.Param[jax.Array] | None = nnx.Param(
                jnp.full((channels,), _WEIGHT_SCALE, param_dtype))
        else:
            scale = _WEIGHT_SCALE / jnp.sqrt(9 * channels)
            self.kernel = nnx.Param(v * scale.astype(param_dtype))
            self.gain = None
        self.input_kernel = nnx.Param(
            nnx.initializers.lecun_normal()(k_u, (3, 3, in_channels, channels), param_dtype)
        )
        self.bias = nnx.Param(jnp.zeros((channels,), param_dtype))

    def effective_kernel(self) -> jax.Array:
        """The ``HWIO`` kernel of the equilibrium map."""
        if self.gain is None:
            return self.kernel[...]
        return _row_normalised(self.kernel[...], self.gain[...], axes=(0, 1, 2))

    def __call__(self, x: jax.Array, *, init: jax.Array | None = None,
                 return_info: bool = False,
                 backward_probe: BackwardStats | None = None) -> Output:
        x = check_input(type(self).__name__, x, (None, None, self.in_channels))
        kernel = self.effective_kernel()
        dtype = self._dtype(x, kernel, self.input_kernel[...])
        c = conv2d(x.astype(dtype), self.input_kernel[...].astype(dtype))
        c = c + self.bias[...].astype(dtype)
        weight = Conv2D(kernel.astype(dtype), tuple(x.shape[1:3]))
        return self._solve(DEQProblem(weight, self.activation), c, init, return_info,
                           backward_probe)
