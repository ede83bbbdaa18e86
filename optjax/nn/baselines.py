r"""Baseline implicit layers in the optjax framework: DEQ and monotone DEQ (monDEQ).

They share the OptEq layers' machinery (:func:`optjax.implicit.fixed_point`: per-sample forward
solvers, implicit gradients, the same backward modes and statistics), so that comparisons
measure the models, not the code around them.

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
reported per sample in ``layer.info`` (``converged = False``), and the implicit gradient at a
non-converged point is only an approximation. :math:`I - J` is not symmetric: the backward
solve defaults to GMRES.

**monDEQ**: :math:`I - W = mI + A^\top A - (B - B^\top)` has symmetric part
:math:`\succeq mI` (``m > 0``), so :math:`z \mapsto (I - W)z - c` is strongly monotone and the
equilibrium exists and is unique for every input. It is computed by forward-backward
splitting, :math:`z \leftarrow \operatorname{relu}(z - \alpha((I - W)z - c))
= \operatorname{relu}((1 - \alpha)z + \alpha(Wz + c))`, a contraction with factor
:math:`\sqrt{1 - 2\alpha m + \alpha^2 L^2}` where :math:`L = \|I - W\|_2`, hence for every
:math:`0 < \alpha < 2m/L^2`. The default :math:`\alpha = m / L^2` minimises that factor (to
:math:`\sqrt{1 - m^2/L^2}`): convergence is guaranteed but slow when :math:`L \gg m`. ``W`` is
not symmetric, so there is no objective and the backward solve defaults to GMRES.

Every layer stores the statistics of its last call in ``layer.info``, a :class:`SolverInfo`
variable holding a :class:`SolveStats` of per-sample arrays (``None`` before the first call);
this works under ``nnx.jit`` and inside ``nnx.Sequential``.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from optjax import activations as _activations
from optjax import backward as _backward
from optjax import solvers as _solvers
from optjax.config import ConfigError, positive_int, require
from optjax.implicit import fixed_point
from optjax.info import BackwardStats
from optjax.nn._info import SolverInfo  # shared with the OptEq layers

__all__ = [
    "SolverInfo",
    "SolveStats",
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


class SolveStats(NamedTuple):
    """Per-sample statistics of a forward solve.

    Attributes:
      steps: solver iterations.
      evaluations: evaluations of the layer's map.
      residual: ``||z - S(z)||`` at the solver's last point (the returned point is ``S(z)``);
        for the monDEQ an upper bound on the equilibrium residual ``||z - relu(Wz + c)||``.
      converged: ``residual <= tol`` and everything finite.
    """

    steps: jax.Array
    evaluations: jax.Array
    residual: jax.Array
    converged: jax.Array


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


def _solve(layer, map_fn, params, c, init, tol_scale=None):
    """Run the batched fixed-point solve of ``map_fn`` with data ``c``, store the statistics in
    ``layer.info`` and return the equilibria.

    With ``tol_scale = s`` the solve runs on ``y = z / s`` (the map conjugated by the scaling),
    so the solver's test ``||y - T(y)|| <= tol`` reads ``||z - T(z)|| <= s * tol``."""
    batch, dtype = c.shape[0], c.dtype
    if init is None:
        z0 = jnp.zeros_like(c)
    else:
        z0 = jnp.broadcast_to(jnp.asarray(init, dtype), c.shape)
    if tol_scale is not None:
        scaled = map_fn
        map_fn = lambda y, p, d: scaled(p[-1] * y, p[:-1], d) / p[-1]  # noqa: E731
        params = params + (tol_scale,)
        z0 = z0 / tol_scale
    z, stats = fixed_point(
        map_fn,
        layer.solver,
        layer.backward,
        float(layer.tol),
        int(layer.max_steps),
        params,
        c,
        jax.lax.stop_gradient(z0),
        None,
        BackwardStats.zeros(batch, dtype),
    )
    if tol_scale is not None:
        z = tol_scale * z
    finite = jnp.all(jnp.isfinite(z.reshape(batch, -1)), axis=1) & jnp.isfinite(stats.residual)
    layer.info.set_value(
        SolveStats(
            steps=stats.steps,
            evaluations=stats.evaluations,
            residual=stats.residual,
            converged=finite & (stats.residual <= layer.tol),
        )
    )
    return z


def _row_normalised(v, gain, axes):
    """``gain * v / ||v||`` with the norm over ``axes`` (one norm per output unit)."""
    return gain * v / jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True))


def _power_norm(op, op_adjoint, shape, dtype, iterations):
    """Power-iteration estimate of ``||op||_2`` (a lower bound, from a fixed random start)."""
    v = jax.random.normal(jax.random.PRNGKey(0), shape, dtype)

    def body(_, v):
        w = op_adjoint(op(v))
        return w / jnp.sqrt(jnp.sum(w * w))

    v = jax.lax.fori_loop(0, iterations, body, v / jnp.sqrt(jnp.sum(v * v)))
    return jnp.sqrt(jnp.sum(op(v) ** 2))


def _relu_fb_map(apply_w, z, params, c):
    """One forward-backward step ``relu((1 - alpha) z + alpha (W z + c))``."""
    *weights, alpha = params
    return jax.nn.relu((1 - alpha) * z + alpha * (apply_w(z, *weights) + c))


def _check_monotone_settings(owner, m, alpha, power_iterations):
    require(
        _positive_number(m),
        f"{owner}.m must be a positive number (the monotonicity margin), got {m!r}",
    )
    require(
        alpha is None or _positive_number(alpha),
        f"{owner}.alpha must be None (the safe default m / ||I - W||^2) or a positive number, "
        f"got {alpha!r}",
    )
    positive_int(owner, "power_iterations", power_iterations)


class _Equilibrium(nnx.Module):
    """Settings shared by the four layers."""

    def _setup(self, solver, backward, tol, max_steps):
        _check_settings(type(self).__name__, tol, max_steps)
        self.solver = _solvers.get(solver)
        self.backward = _backward.get(backward)
        self.tol = float(tol)
        self.max_steps = int(max_steps)
        self.info = SolverInfo(None)

    def _dtype(self, x, *params):
        return jnp.result_type(x.dtype, *(p.dtype for p in params))


# --- DEQ ----------------------------------------------------------------------------------------


def _dense_deq_map(activation, z, params, c):
    (w,) = params
    return activation(w @ z + c)


def _conv_deq_map(activation, z, params, c):
    (kernel,) = params
    return activation(conv2d(z, kernel) + c)


class DEQDense(_Equilibrium):
    r"""Dense deep equilibrium layer: :math:`z^\star = \sigma(W z^\star + U x + b)`.

    :math:`W` (``features x features``) is unconstrained; with ``weight_norm`` it is
    :math:`W = \operatorname{diag}(g)\, V / \|V\|_{\text{row}}`, every row of ``V`` normalised
    to unit Euclidean norm and scaled by its gain :math:`g_i` (as PyTorch's ``weight_norm(dim=0)``
    in the DEQ reference code). Initially the rows of :math:`W` have norm 0.4, so
    :math:`\|W\|_2 \approx 0.8` and the map is a contraction for a 1-Lipschitz ``activation``;
    training may lose that. **No existence or uniqueness guarantee**: samples where the solver
    stops above ``tol`` have ``info.converged = False``.

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

    ``__call__(x, *, init=None)``: ``x`` of shape ``(batch, in_features)``; ``init`` an optional
    starting point (no gradient). Returns ``z*`` of shape ``(batch, features)``.
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

    def __call__(self, x: jax.Array, *, init: jax.Array | None = None) -> jax.Array:
        x = _check_input(type(self).__name__, x, (self.in_features,))
        w = self.effective_weight()
        dtype = self._dtype(x, w, self.input_weight[...])
        c = x.astype(dtype) @ self.input_weight[...].T.astype(dtype) + self.bias[...].astype(dtype)
        map_fn = functools.partial(_dense_deq_map, self.activation)
        return _solve(self, map_fn, (w.astype(dtype),), c, init)


class DEQConv(_Equilibrium):
    r"""Convolutional deep equilibrium layer on ``(H, W, C)`` feature maps:
    :math:`z^\star = \sigma(K * z^\star + U * x + b)`.

    :math:`K` is a 3x3 ``channels -> channels`` convolution (stride 1, 'SAME' zero padding),
    :math:`U` a 3x3 ``in_channels -> channels`` convolution of the input, :math:`b` a
    per-channel bias. With ``weight_norm`` the kernel is normalised per output channel (over its
    ``3 x 3 x C`` fan-in) and scaled by a gain, initially 0.4. No existence or uniqueness
    guarantee; see :class:`DEQDense` for the arguments and ``info``.

    ``__call__(x, *, init=None)``: ``x`` of shape ``(batch, H, W, in_channels)``; returns
    ``z*`` of shape ``(batch, H, W, channels)``.
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

    def __call__(self, x: jax.Array, *, init: jax.Array | None = None) -> jax.Array:
        x = _check_input(type(self).__name__, x, (None, None, self.in_channels))
        kernel = self.effective_kernel()
        dtype = self._dtype(x, kernel, self.input_kernel[...])
        c = conv2d(x.astype(dtype), self.input_kernel[...].astype(dtype))
        c = c + self.bias[...].astype(dtype)
        map_fn = functools.partial(_conv_deq_map, self.activation)
        return _solve(self, map_fn, (kernel.astype(dtype),), c, init)


# --- monDEQ -------------------------------------------------------------------------------------


def _dense_w(z, w):
    return w @ z


def _conv_w(m, z, kernel_a, kernel_b):
    """:math:`Wz = (1 - m)z - A^\\top A z + B z - B^\\top z` with convolutions A, B."""
    a_z = conv2d(z, kernel_a)
    return (
        (1 - m) * z
        - conv2d_adjoint(a_z, kernel_a)
        + conv2d(z, kernel_b)
        - conv2d_adjoint(z, kernel_b)
    )


class MonDEQDense(_Equilibrium):
    r"""Dense monotone equilibrium layer (Winston & Kolter, 2020):
    :math:`z^\star = \operatorname{relu}(W z^\star + U x + b)`,
    :math:`W = (1 - m) I - A^\top A + B - B^\top`.

    The equilibrium exists and is unique for every input (see the module docstring). It is
    computed by forward-backward splitting
    :math:`z \leftarrow \operatorname{relu}((1 - \alpha) z + \alpha (W z + U x + b))` iterated
    by ``solver`` (plain fixed-point iteration by default). ``alpha=None`` uses
    :math:`\alpha = m / \|I - W\|_2^2`, recomputed at every call (no gradient flows through it:
    the equilibrium does not depend on :math:`\alpha`), with :math:`\|I - W\|_2` exact (SVD) for
    ``features <= 256`` and a ``power_iterations``-step power-iteration estimate above; any
    :math:`\alpha < 2m/\|I - W\|^2` converges, so an estimate within a factor :math:`\sqrt 2`
    below the norm is still safe.

    The solve runs on :math:`z / \min(\alpha, 1)` so that ``tol`` bounds the equilibrium
    residual :math:`\|z - \operatorname{relu}(Wz + Ux + b)\|`: for a projection,
    :math:`\|z - \operatorname{relu}(z - t\,d)\|` is nondecreasing in :math:`t` and
    :math:`\|z - \operatorname{relu}(z - t\,d)\|/t` nonincreasing, so the residual at
    :math:`t = 1` is at most :math:`\max(1, 1/\alpha)` times the splitting's residual.

    ``A, B`` start with entries :math:`\mathcal N(0, 0.1^2/d)`, so that initially
    :math:`\|I - W\| \approx 0.3` and about 300 plain steps reach ``tol = 1e-4`` in float32;
    training usually grows :math:`\|I - W\|` and the step count with it (samples stopped by
    ``max_steps`` have ``info.converged = False``; ``solver="anderson"`` needs about 3x fewer
    steps). Other arguments as :class:`DEQDense`; the backward mode is GMRES by default
    (:math:`W` is not symmetric).
    """

    def __init__(
        self,
        in_features: int,
        features: int,
        *,
        m: float = 0.05,
        alpha: float | None = None,
        solver="fixed_point",
        tol: float = 1e-4,
        max_steps: int = 500,
        backward="gmres",
        power_iterations: int = 50,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        _check_monotone_settings(type(self).__name__, m, alpha, power_iterations)
        self._setup(solver, backward, tol, max_steps)
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
        """The splitting step :math:`\\alpha` (no gradient)."""
        w = jax.lax.stop_gradient(self.effective_weight())
        if self.alpha is not None:
            return jnp.asarray(self.alpha, w.dtype)
        i_w = jnp.eye(self.features, dtype=w.dtype) - w
        if self.features <= _EXACT_NORM_MAX:
            lipschitz = jnp.linalg.norm(i_w, 2)
        else:
            lipschitz = _power_norm(
                lambda v: i_w @ v, lambda v: i_w.T @ v, (self.features,), w.dtype,
                self.power_iterations,
            )
        return self.m / lipschitz**2

    def __call__(self, x: jax.Array, *, init: jax.Array | None = None) -> jax.Array:
        x = _check_input(type(self).__name__, x, (self.in_features,))
        w = self.effective_weight()
        dtype = self._dtype(x, w, self.input_weight[...])
        c = x.astype(dtype) @ self.input_weight[...].T.astype(dtype) + self.bias[...].astype(dtype)
        alpha = self.step_size().astype(dtype)
        map_fn = functools.partial(_relu_fb_map, _dense_w)
        return _solve(self, map_fn, (w.astype(dtype), alpha), c, init, jnp.minimum(alpha, 1))


class MonDEQConv(_Equilibrium):
    r"""Convolutional monotone equilibrium layer on ``(H, W, C)`` feature maps:
    :math:`z^\star = \operatorname{relu}(W z^\star + U * x + b)`,
    :math:`W z = (1 - m) z - A^\top(A z) + B z - B^\top z`.

    :math:`A, B` are 3x3 ``channels -> channels`` convolutions (stride 1, 'SAME' zero padding)
    and :math:`A^\top, B^\top` their exact adjoints (:func:`conv2d_adjoint`); :math:`U` is a 3x3
    ``in_channels -> channels`` convolution and :math:`b` a per-channel bias. Everything else is
    as :class:`MonDEQDense`, except that :math:`\|I - W\|_2` is always a power-iteration
    estimate (``power_iterations`` steps on :math:`(I - W)^\top (I - W)` over one feature map of
    the input's spatial size, from a fixed random start).

    ``__call__(x, *, init=None)``: ``x`` of shape ``(batch, H, W, in_channels)``; returns
    ``z*`` of shape ``(batch, H, W, channels)``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        m: float = 0.05,
        alpha: float | None = None,
        solver="fixed_point",
        tol: float = 1e-4,
        max_steps: int = 500,
        backward="gmres",
        power_iterations: int = 50,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        _check_monotone_settings(type(self).__name__, m, alpha, power_iterations)
        self._setup(solver, backward, tol, max_steps)
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

    def apply_weight(self, z: jax.Array) -> jax.Array:
        """:math:`Wz` for one ``(H, W, C)`` feature map or a batch of them."""
        return _conv_w(self.m, z, self.kernel_a[...], self.kernel_b[...])

    def step_size(self, spatial: tuple[int, int]) -> jax.Array:
        """The splitting step :math:`\\alpha` for ``(H, W)`` feature maps (no gradient)."""
        ka = jax.lax.stop_gradient(self.kernel_a[...])
        kb = jax.lax.stop_gradient(self.kernel_b[...])
        if self.alpha is not None:
            return jnp.asarray(self.alpha, ka.dtype)
        m = self.m

        def i_w(v):  # (I - W) v = m v + A^T A v - B v + B^T v
            return m * v + conv2d_adjoint(conv2d(v, ka), ka) - conv2d(v, kb) + conv2d_adjoint(v, kb)

        def i_w_adjoint(v):
            return m * v + conv2d_adjoint(conv2d(v, ka), ka) + conv2d(v, kb) - conv2d_adjoint(v, kb)

        shape = tuple(spatial) + (self.channels,)
        lipschitz = _power_norm(i_w, i_w_adjoint, shape, ka.dtype, self.power_iterations)
        return m / lipschitz**2

    def __call__(self, x: jax.Array, *, init: jax.Array | None = None) -> jax.Array:
        x = _check_input(type(self).__name__, x, (None, None, self.in_channels))
        ka, kb = self.kernel_a[...], self.kernel_b[...]
        dtype = self._dtype(x, ka, self.input_kernel[...])
        c = conv2d(x.astype(dtype), self.input_kernel[...].astype(dtype))
        c = c + self.bias[...].astype(dtype)
        alpha = self.step_size(x.shape[1:3]).astype(dtype)
        map_fn = functools.partial(_relu_fb_map, functools.partial(_conv_w, self.m))
        params = (ka.astype(dtype), kb.astype(dtype), alpha)
        return _solve(self, map_fn, params, c, init, jnp.minimum(alpha, 1))
