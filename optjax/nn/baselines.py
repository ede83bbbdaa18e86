r"""Baseline implicit layers in the optjax framework: DEQ and monotone DEQ (monDEQ).

Each is a thin holder of parameters around a problem type of the core
(:class:`optjax.deq.DEQProblem`, :class:`optjax.mondeq.MonDEQProblem`) solved by the same engine
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

**monDEQ**: :math:`I - W = mI + A^\top A - (B - B^\top)` has symmetric part
:math:`\succeq mI` (``m > 0``), so :math:`z \mapsto (I - W)z - c` is strongly monotone and the
equilibrium exists and is unique for every input. It is solved by Peaceman--Rachford splitting
with the exact resolvent :math:`(I + \alpha(I - W))^{-1}` (a dense inverse, or per-frequency
inverses by the FFT for circular convolutions: ``MonDEQConv`` uses ``padding="circular"`` with
it), as in the monDEQ paper; ``splitting="forward_backward"`` gives the safe-step
forward-backward iteration (zero padding allowed). See :mod:`optjax.mondeq` for both, their
steps and the certificate (a distance bound). ``W`` is not symmetric, so there is no objective;
the backward system is solved by the same Peaceman--Rachford splitting on the adjoint problem
(``backward="auto"``; GMRES for forward-backward).

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

from optjax import activations as _activations
from optjax import backward as _backward
from optjax import solvers as _solvers
from optjax.config import ConfigError, positive_int, require
from optjax.convolution import Conv2D
from optjax.deq import DEQProblem
from optjax.equilibrium import equilibrium
from optjax.mondeq import MonDEQProblem, peaceman_rachford_step, step_size
from optjax.nn._info import EquilibriumModule

__all__ = [
    "DEQDense",
    "DEQConv",
    "MonDEQDense",
    "MonDEQConv",
    "conv2d",
    "conv2d_adjoint",
    "param_count",
]

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
_EXACT_NORM_MAX = 256  # dense monDEQ: exact ||I - W|| (SVD) up to this width, power iteration above
_WEIGHT_SCALE = 0.4  # DEQ init: rows of W have norm ~0.4, so ||W|| ~ 0.8 for a random square W
_MON_SCALE = 0.1  # monDEQ init: A, B entries ~ N(0, 0.1^2 / fan_in), so L = ||I - W|| stays small


def param_count(module: nnx.Module) -> int:
    """Total number of scalars in the module's :class:`nnx.Param` leaves."""
    return int(sum(leaf.size for leaf in jax.tree.leaves(nnx.state(module, nnx.Param))))


# --- convolutions -------------------------------------------------------------------------------


def conv2d(z: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 (any odd size) convolution, stride 1, 'SAME' zero padding, of ``(..., H, W, C_in)``
    feature maps (one or a batch) with an ``HWIO`` kernel."""
    single = z.ndim == 3
    z = z[None] if single else z
    out = jax.lax.conv_general_dilated(z, kernel, (1, 1), "SAME", dimension_numbers=_DIMENSIONS)
    return out[0] if single else out


def conv2d_adjoint(y: jax.Array, kernel: jax.Array) -> jax.Array:
    """The exact adjoint of :func:`conv2d` for an odd-sized kernel: the convolution with the
    spatially flipped kernel, input and output channels swapped (the padding is symmetric, so
    'SAME' again). ``<conv2d(x, k), y> = <x, conv2d_adjoint(y, k)>``."""
    require(
        kernel.shape[0] % 2 == 1 and kernel.shape[1] % 2 == 1,
        f"conv2d_adjoint needs an odd kernel size, got {kernel.shape[:2]}",
    )
    return conv2d(y, jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2)))


# --- helpers ------------------------------------------------------------------------------------


def _resolve_activation(activation) -> Callable:
    """A callable from a registered optjax activation name (kept as the hashable
    :class:`~optjax.Activation`, a static attribute under ``nnx.jit``), a ``jax.nn`` name, or a
    callable."""
    if callable(activation):
        return activation
    if isinstance(activation, str):
        if activation in _activations.available():
            return _activations.get(activation)
        fn = getattr(jax.nn, activation, None)
        if callable(fn):
            return fn
    raise ConfigError(
        f"unknown activation {activation!r}: pass a callable, one of "
        f"{', '.join(_activations.available())}, or a jax.nn function name"
    )


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _check_settings(owner, tol, max_steps):
    require(
        _positive_number(tol),
        f"{owner}.tol must be a positive number, got {tol!r}",
    )
    positive_int(owner, "max_steps", max_steps)


def _check_input(owner, x, feature_shape):
    if not hasattr(x, "shape"):
        x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{owner}: x must have a floating dtype, got {x.dtype}")
    if x.ndim != len(feature_shape) + 1 or any(
        want is not None and got != want for got, want in zip(x.shape[1:], feature_shape)
    ):
        want = "(batch, " + ", ".join("?" if w is None else str(w) for w in feature_shape) + ")"
        raise ValueError(f"{owner}: x must have shape {want}, got {tuple(x.shape)}")
    return x


def _solve(layer, problem, c, init, return_info, backward_probe=None):
    """Solve ``problem`` for the injections ``c`` with the layer's settings, summarise the
    :class:`optjax.SolveInfo` in ``layer.stats`` and return the equilibria (and the info if
    ``return_info``); ``backward_probe`` as :func:`optjax.equilibrium`'s."""
    if init is not None:
        init = jnp.broadcast_to(jnp.asarray(init, c.dtype), c.shape)
    z, info = equilibrium(problem, c, solver=layer.solver, backward=layer.backward,
                          tol=layer.tol, max_steps=layer.max_steps, init=init,
                          backward_probe=backward_probe)
    return layer._finish(z, info, return_info)


def _row_normalised(v, gain, axes):
    """``gain * v / ||v||`` with the norm over ``axes`` (one norm per output unit)."""
    return gain * v / jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True))


def _check_splitting(owner, splitting):
    from optjax.mondeq import SPLITTINGS

    require(splitting in SPLITTINGS,
            f"{owner}.splitting must be one of {', '.join(SPLITTINGS)}, got {splitting!r}")


def _check_monotone_settings(owner, m, alpha, power_iterations):
    require(
        _positive_number(m),
        f"{owner}.m must be a positive number (the monotonicity margin), got {m!r}",
    )
    require(
        alpha is None or _positive_number(alpha),
        f"{owner}.alpha must be None (the default step of the splitting) or a positive number, "
        f"got {alpha!r}",
    )
    positive_int(owner, "power_iterations", power_iterations)


class _Equilibrium(EquilibriumModule):
    """Settings shared by the four layers."""

    def _setup(self, solver, backward, tol, max_steps):
        _check_settings(type(self).__name__, tol, max_steps)
        self.solver = _solvers.get(solver)
        self.backward = backward if backward == "auto" else _backward.get(backward)
        self.tol = float(tol)
        self.max_steps = int(max_steps)
        self._init_stats()

    def _dtype(self, x, *params):
        return jnp.result_type(x.dtype, *(p.dtype for p in params))

    def _problem_step(self, dtype, *spatial):
        """A monDEQ's ``MonDEQProblem.step``: None for Peaceman--Rachford's default (the problem
        computes it from the I - W it builds for the resolvent), else :meth:`step_size`."""
        if self.alpha is None and self.splitting == "peaceman_rachford":
            return None
        return self.step_size(*spatial).astype(dtype)


# --- DEQ ----------------------------------------------------------------------------------------


class DEQDense(_Equilibrium):
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
      backward: backward mode (name or :mod:`optjax.backward` instance), GMRES by default.
      weight_norm: parametrise :math:`W` by row-normalised ``V`` and gains ``g``.
      param_dtype: dtype of the parameters.
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    ``__call__(x, *, init=None, return_info=False)``: ``x`` of shape ``(batch, in_features)``;
    ``init`` an optional starting point (no gradient). Returns ``z*`` of shape
    ``(batch, features)`` (and the per-sample :class:`optjax.SolveInfo` if ``return_info``).
    """

    def __init__(
        self,
        in_features: int,
        features: int,
        *,
        activation="relu",
        solver="anderson",
        tol: float = 1e-4,
        max_steps: int = 50,
        backward="gmres",
        weight_norm: bool = True,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._setup(solver, backward, tol, max_steps)
        self.in_features, self.features = int(in_features), int(features)
        self.activation = _resolve_activation(activation)
        self.weight_norm = bool(weight_norm)
        k_w, k_u = rngs.params(), rngs.params()
        v = jax.random.normal(k_w, (features, features), param_dtype)
        if weight_norm:
            self.weight = nnx.Param(v)
            self.gain = nnx.Param(jnp.full((features,), _WEIGHT_SCALE, param_dtype))
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
                 return_info: bool = False, backward_probe=None):
        x = _check_input(type(self).__name__, x, (self.in_features,))
        w = self.effective_weight()
        dtype = self._dtype(x, w, self.input_weight[...])
        c = x.astype(dtype) @ self.input_weight[...].T.astype(dtype) + self.bias[...].astype(dtype)
        return _solve(self, DEQProblem(w.astype(dtype), self.activation), c, init, return_info,
                      backward_probe)


class DEQConv(_Equilibrium):
    r"""Convolutional deep equilibrium layer on ``(H, W, C)`` feature maps:
    :math:`z^\star = \sigma(K * z^\star + U * x + b)`.

    :math:`K` is a 3x3 ``channels -> channels`` convolution (stride 1, 'SAME' zero padding),
    :math:`U` a 3x3 ``in_channels -> channels`` convolution of the input, :math:`b` a
    per-channel bias. With ``weight_norm`` the kernel is normalised per output channel (over its
    ``3 x 3 x C`` fan-in) and scaled by a gain, initially 0.4. No existence or uniqueness
    guarantee; see :class:`DEQDense` for the arguments and ``return_info``.

    ``__call__(x, *, init=None, return_info=False)``: ``x`` of shape
    ``(batch, H, W, in_channels)``; returns ``z*`` of shape ``(batch, H, W, channels)``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        activation="relu",
        solver="anderson",
        tol: float = 1e-4,
        max_steps: int = 50,
        backward="gmres",
        weight_norm: bool = True,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._setup(solver, backward, tol, max_steps)
        self.in_channels, self.channels = int(in_channels), int(channels)
        self.activation = _resolve_activation(activation)
        self.weight_norm = bool(weight_norm)
        k_w, k_u = rngs.params(), rngs.params()
        v = jax.random.normal(k_w, (3, 3, channels, channels), param_dtype)
        if weight_norm:
            self.kernel = nnx.Param(v)
            self.gain = nnx.Param(jnp.full((channels,), _WEIGHT_SCALE, param_dtype))
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
                 return_info: bool = False, backward_probe=None):
        x = _check_input(type(self).__name__, x, (None, None, self.in_channels))
        kernel = self.effective_kernel()
        dtype = self._dtype(x, kernel, self.input_kernel[...])
        c = conv2d(x.astype(dtype), self.input_kernel[...].astype(dtype))
        c = c + self.bias[...].astype(dtype)
        weight = Conv2D(kernel.astype(dtype), tuple(x.shape[1:3]))
        return _solve(self, DEQProblem(weight, self.activation), c, init, return_info,
                      backward_probe)


# --- monDEQ -------------------------------------------------------------------------------------


class MonDEQDense(_Equilibrium):
    r"""Dense monotone equilibrium layer (Winston & Kolter, 2020):
    :math:`z^\star = \operatorname{relu}(W z^\star + U x + b)`,
    :math:`W = (1 - m) I - A^\top A + B - B^\top`, solved as an
    :class:`optjax.mondeq.MonDEQProblem` (see there for the splitting, its step and why ``tol``
    bounds the equilibrium residual ``||z - relu(Wz + Ux + b)||``).

    ``alpha=None`` uses the splitting's default step, recomputed at every call (no gradient
    flows through it: the equilibrium does not depend on :math:`\alpha`): Peaceman--Rachford
    :math:`\alpha = 1/\sqrt{m\|I - W\|_2}` (exact norm), forward-backward
    :math:`\alpha = m / \|I - W\|_2^2` with :math:`\|I - W\|_2` exact (SVD) for
    ``features <= 256`` and a ``power_iterations``-step power-iteration estimate above (any
    :math:`\alpha < 2m/\|I - W\|^2` converges, so an estimate within a factor :math:`\sqrt 2`
    below the norm is still safe).

    ``A, B`` start with entries :math:`\mathcal N(0, 0.1^2/d)`, so that initially
    :math:`\|I - W\| \approx 0.3`; training usually grows :math:`\|I - W\|` and the step count
    with it (samples stopped by ``max_steps`` are reported as not converged). Other arguments
    as :class:`DEQDense`; the backward mode ``"auto"`` runs Peaceman--Rachford on the adjoint
    problem (:class:`optjax.backward.Splitting`), GMRES with forward-backward.
    """

    def __init__(
        self,
        in_features: int,
        features: int,
        *,
        m: float = 0.05,
        alpha: float | None = None,
        splitting: str = "peaceman_rachford",
        solver="fixed_point",
        tol: float = 1e-4,
        max_steps: int = 500,
        backward="auto",
        power_iterations: int = 50,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        _check_monotone_settings(type(self).__name__, m, alpha, power_iterations)
        _check_splitting(type(self).__name__, splitting)
        self._setup(solver, backward, tol, max_steps)
        self.splitting = splitting
        self.in_features, self.features = int(in_features), int(features)
        self.m = float(m)
        self.alpha = None if alpha is None else float(alpha)
        self.power_iterations = int(power_iterations)
        k_a, k_b, k_u = rngs.params(), rngs.params(), rngs.params()
        scale = (_MON_SCALE / jnp.sqrt(features)).astype(param_dtype)
        self.weight_a = nnx.Param(jax.random.normal(k_a, (features, features), param_dtype) * scale)
        self.weight_b = nnx.Param(jax.random.normal(k_b, (features, features), param_dtype) * scale)
        self.input_weight = nnx.Param(
            nnx.initializers.lecun_normal(in_axis=1, out_axis=0)(
                k_u, (features, in_features), param_dtype
            )
        )
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype))

    def effective_weight(self) -> jax.Array:
        """:math:`W = (1 - m) I - A^\\top A + B - B^\\top`."""
        a, b = self.weight_a[...], self.weight_b[...]
        return (1 - self.m) * jnp.eye(self.features, dtype=a.dtype) - a.T @ a + b - b.T

    def step_size(self) -> jax.Array:
        """The splitting step :math:`\\alpha` (no gradient): ``alpha`` when given, else
        ``1 / sqrt(m ||I - W||)`` for Peaceman--Rachford and ``m / ||I - W||^2`` for
        forward-backward."""
        a = self.weight_a[...]
        if self.alpha is not None:
            return jnp.asarray(self.alpha, a.dtype)
        if self.splitting == "peaceman_rachford":
            return peaceman_rachford_step(self.m, a, self.weight_b[...])
        return step_size(self.m, a, self.weight_b[...], (self.features,),
                         exact_max=_EXACT_NORM_MAX, iterations=self.power_iterations)

    def __call__(self, x: jax.Array, *, init: jax.Array | None = None,
                 return_info: bool = False, backward_probe=None):
        x = _check_input(type(self).__name__, x, (self.in_features,))
        a, b = self.weight_a[...], self.weight_b[...]
        dtype = self._dtype(x, a, self.input_weight[...])
        c = x.astype(dtype) @ self.input_weight[...].T.astype(dtype) + self.bias[...].astype(dtype)
        problem = MonDEQProblem(a.astype(dtype), b.astype(dtype), self.m,
                                step=self._problem_step(dtype), splitting=self.splitting)
        return _solve(self, problem, c, init, return_info, backward_probe)


class MonDEQConv(_Equilibrium):
    r"""Convolutional monotone equilibrium layer on ``(H, W, C)`` feature maps:
    :math:`z^\star = \operatorname{relu}(W z^\star + U * x + b)`,
    :math:`W z = (1 - m) z - A^\top(A z) + B z - B^\top z`.

    :math:`A, B` are 3x3 ``channels -> channels`` convolutions (stride 1, 'SAME' zero padding;
    :class:`optjax.convolution.Conv2D`) and :math:`A^\top, B^\top` their exact adjoints;
    :math:`U` is a 3x3 ``in_channels -> channels`` convolution and :math:`b` a per-channel bias.
    Everything else is as :class:`MonDEQDense`, except that :math:`\|I - W\|_2` is always a
    power-iteration estimate (``power_iterations`` steps on :math:`(I - W)^\top (I - W)` over
    one feature map of the input's spatial size, from a fixed random start).

    ``__call__(x, *, init=None, return_info=False)``: ``x`` of shape
    ``(batch, H, W, in_channels)``; returns ``z*`` of shape ``(batch, H, W, channels)``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        m: float = 0.05,
        alpha: float | None = None,
        splitting: str = "peaceman_rachford",
        padding: str | None = None,
        solver="fixed_point",
        tol: float = 1e-4,
        max_steps: int = 500,
        backward="auto",
        power_iterations: int = 50,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        _check_monotone_settings(type(self).__name__, m, alpha, power_iterations)
        _check_splitting(type(self).__name__, splitting)
        if padding is None:  # Peaceman-Rachford's FFT resolvent needs circular convolutions
            padding = "circular" if splitting == "peaceman_rachford" else "zeros"
        if padding not in ("zeros", "circular"):
            raise ConfigError(f"MonDEQConv.padding must be 'zeros' or 'circular', got {padding!r}")
        if splitting == "peaceman_rachford" and padding != "circular":
            raise ConfigError(
                "MonDEQConv: splitting='peaceman_rachford' applies (I + alpha (I - W))^-1 by the "
                "FFT, which needs padding='circular'; use that, or "
                "splitting='forward_backward' with zero padding")
        self._setup(solver, backward, tol, max_steps)
        self.splitting, self.padding = splitting, padding
        self.in_channels, self.channels = int(in_channels), int(channels)
        self.m = float(m)
        self.alpha = None if alpha is None else float(alpha)
        self.power_iterations = int(power_iterations)
        k_a, k_b, k_u = rngs.params(), rngs.params(), rngs.params()
        shape = (3, 3, channels, channels)
        scale = (_MON_SCALE / jnp.sqrt(9 * channels)).astype(param_dtype)
        self.kernel_a = nnx.Param(jax.random.normal(k_a, shape, param_dtype) * scale)
        self.kernel_b = nnx.Param(jax.random.normal(k_b, shape, param_dtype) * scale)
        self.input_kernel = nnx.Param(
            nnx.initializers.lecun_normal()(k_u, (3, 3, in_channels, channels), param_dtype)
        )
        self.bias = nnx.Param(jnp.zeros((channels,), param_dtype))

    def _maps(self, spatial, dtype=None):
        ka, kb = self.kernel_a[...], self.kernel_b[...]
        if dtype is not None:
            ka, kb = ka.astype(dtype), kb.astype(dtype)
        return (Conv2D(ka, tuple(spatial), self.padding),
                Conv2D(kb, tuple(spatial), self.padding))

    def apply_weight(self, z: jax.Array) -> jax.Array:
        """:math:`Wz` for one ``(H, W, C)`` feature map."""
        from optjax.mondeq import _apply_w

        return _apply_w(self.m, *self._maps(z.shape[:2]), z)

    def step_size(self, spatial: tuple[int, int]) -> jax.Array:
        """The splitting step :math:`\\alpha` for ``(H, W)`` feature maps (no gradient)."""
        if self.alpha is not None:
            return jnp.asarray(self.alpha, self.kernel_a[...].dtype)
        a, b = self._maps(spatial)
        if self.splitting == "peaceman_rachford":
            return peaceman_rachford_step(self.m, a, b)
        return step_size(self.m, a, b, tuple(spatial) + (self.channels,),
                         iterations=self.power_iterations)

    def __call__(self, x: jax.Array, *, init: jax.Array | None = None,
                 return_info: bool = False, backward_probe=None):
        x = _check_input(type(self).__name__, x, (None, None, self.in_channels))
        dtype = self._dtype(x, self.kernel_a[...], self.input_kernel[...])
        c = conv2d(x.astype(dtype), self.input_kernel[...].astype(dtype))
        c = c + self.bias[...].astype(dtype)
        a, b = self._maps(x.shape[1:3], dtype)
        problem = MonDEQProblem(a, b, self.m, step=self._problem_step(dtype, x.shape[1:3]),
                                splitting=self.splitting)
        return _solve(self, problem, c, init, return_info, backward_probe)
