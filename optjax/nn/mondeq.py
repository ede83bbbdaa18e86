r"""Monotone DEQ (monDEQ) layers in the optjax framework (the DEQ layers: :mod:`optjax.nn.deq`).

The layers and the problem type share the engine with the OptEq layers (see :mod:`optjax.nn.deq`).

**monDEQ**: :math:`I - W = mI + A^\top A - (B - B^\top)` has symmetric part
:math:`\succeq mI` (``m > 0``), so :math:`z \mapsto (I - W)z - c` is strongly monotone and the
equilibrium exists and is unique for every input. It is solved by Peaceman--Rachford splitting
with the exact resolvent :math:`(I + \alpha(I - W))^{-1}` (a dense inverse, or per-frequency
inverses by the FFT for circular convolutions: ``MonDEQConv`` uses ``padding="circular"`` with
it), as in the monDEQ paper; ``splitting="forward_backward"`` gives the safe-step
forward-backward iteration (zero padding allowed). See :mod:`optjax.families.mondeq` for both, their
steps and the certificate (a distance bound). ``W`` is not symmetric, so there is no objective;
the backward system is solved by the same Peaceman--Rachford splitting on the adjoint problem
(``backward="auto"``; GMRES for forward-backward).

Statistics (``layer.stats``, ``return_info=True``) and evaluation mode work as for every
layer (see :mod:`optjax.nn.deq`).
"""


from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from optjax.config import ConfigError, positive_int, require
from optjax.engine.backward import Backward
from optjax.engine.result import BackwardStats
from optjax.families.mondeq import SPLITTINGS, MonDEQProblem, apply_w, peaceman_rachford_step, step_size
from optjax.linalg import linear_map
from optjax.linalg.convolution import Conv2D
from optjax.nn.base import (BaselineLayer, Output, check_input, conv2d, positive_number,
                            solve_layer)
from optjax.solvers import Solver

__all__ = ["MonDEQDense", "MonDEQConv"]

_EXACT_NORM_MAX = 256  # dense monDEQ: exact ||I - W|| (SVD) up to this width, power iteration above
_MON_SCALE = 0.1  # monDEQ init: A, B entries ~ N(0, 0.1^2 / fan_in), so L = ||I - W|| stays small


def _check_splitting(owner: str, splitting: str) -> None:
    require(splitting in SPLITTINGS,
            f"{owner}.splitting must be one of {', '.join(SPLITTINGS)}, got {splitting!r}")


def _check_monotone_settings(owner: str, m: float, alpha: float | None,
                             power_iterations: int) -> None:
    require(
        positive_number(m),
        f"{owner}.m must be a positive number (the monotonicity margin), got {m!r}",
    )
    require(
        alpha is None or positive_number(alpha),
        f"{owner}.alpha must be None (the default step of the splitting) or a positive number, "
        f"got {alpha!r}",
    )
    positive_int(owner, "power_iterations", power_iterations)


class MonDEQDense(BaselineLayer):
    r"""Dense monotone equilibrium layer (Winston & Kolter, 2020):
    :math:`z^\star = \operatorname{relu}(W z^\star + U x + b)`,
    :math:`W = (1 - m) I - A^\top A + B - B^\top`, solved as an
    :class:`optjax.families.mondeq.MonDEQProblem` (see there for the splitting, its step and why ``tol``
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
    problem (:class:`optjax.engine.backward.Splitting`), GMRES with forward-backward.

    Examples:
      >>> import jax
      >>> from flax import nnx
      >>> from optjax.nn import MonDEQDense
      >>> layer = MonDEQDense(3, 4, m=0.5, rngs=nnx.Rngs(0))  # in_features, features
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
      >>> z, info = layer(x, return_info=True)
      >>> z.shape, bool(info.converged.all())
      ((2, 4), True)
    """

    def __init__(
        self,
        in_features: int,
        features: int,
        *,
        m: float = 0.05,
        alpha: float | None = None,
        splitting: str = "peaceman_rachford",
        solver: str | Solver = "fixed_point",
        tol: float = 1e-4,
        max_steps: int = 500,
        backward: str | Backward = "auto",
        power_iterations: int = 50,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
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

    def input_lipschitz(self) -> jax.Array:
        """A certified bound on the Lipschitz constant of ``x -> z*``: ``||U|| / m``
        (:meth:`optjax.families.mondeq.MonDEQProblem.input_lipschitz`)."""
        return linear_map.spectral_norm(self.input_weight[...]) / self.m

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
                 return_info: bool = False,
                 backward_probe: BackwardStats | None = None) -> Output:
        x = check_input(type(self).__name__, x, (self.in_features,))
        a, b = self.weight_a[...], self.weight_b[...]
        dtype = self._dtype(x, a, self.input_weight[...])
        c = x.astype(dtype) @ self.input_weight[...].T.astype(dtype) + self.bias[...].astype(dtype)
        problem = MonDEQProblem(a.astype(dtype), b.astype(dtype), self.m,
                                step=self._problem_step(dtype), splitting=self.splitting)
        return solve_layer(self, problem, c, init, return_info, backward_probe)


class MonDEQConv(BaselineLayer):
    r"""Convolutional monotone equilibrium layer on ``(H, W, C)`` feature maps:
    :math:`z^\star = \operatorname{relu}(W z^\star + U * x + b)`,
    :math:`W z = (1 - m) z - A^\top(A z) + B z - B^\top z`.

    :math:`A, B` are 3x3 ``channels -> channels`` convolutions (stride 1, 'SAME' zero padding;
    :class:`optjax.linalg.convolution.Conv2D`) and :math:`A^\top, B^\top` their exact adjoints;
    :math:`U` is a 3x3 ``in_channels -> channels`` convolution and :math:`b` a per-channel bias.
    Everything else is as :class:`MonDEQDense`, except that :math:`\|I - W\|_2` is always a
    power-iteration estimate (``power_iterations`` steps on :math:`(I - W)^\top (I - W)` over
    one feature map of the input's spatial size, from a fixed random start).

    ``__call__(x, *, init=None, return_info=False)``: ``x`` of shape
    ``(batch, H, W, in_channels)``; returns ``z*`` of shape ``(batch, H, W, channels)``.

    Examples:
      >>> import jax
      >>> from flax import nnx
      >>> from optjax.nn import MonDEQConv
      >>> layer = MonDEQConv(2, 4, m=0.5, rngs=nnx.Rngs(0))   # circular padding: FFT resolvent
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 2))
      >>> z, info = layer(x, return_info=True)
      >>> z.shape, bool(info.converged.all())
      ((2, 6, 6, 4), True)
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
        solver: str | Solver = "fixed_point",
        tol: float = 1e-4,
        max_steps: int = 500,
        backward: str | Backward = "auto",
        power_iterations: int = 50,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
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

    def _maps(self, spatial: tuple[int, ...],
              dtype: DTypeLike | None = None) -> tuple[Conv2D, Conv2D]:
        ka, kb = self.kernel_a[...], self.kernel_b[...]
        if dtype is not None:
            ka, kb = ka.astype(dtype), kb.astype(dtype)
        return (Conv2D(ka, tuple(spatial), self.padding),
                Conv2D(kb, tuple(spatial), self.padding))

    def input_lipschitz(self, spatial: tuple[int, int]) -> jax.Array:
        """A certified bound on the Lipschitz constant of ``x -> z*`` for ``(H, W)`` feature
        maps: ``||U|| / m``, ``||U||`` the injection's certified norm on that grid."""
        return Conv2D(self.input_kernel[...], tuple(spatial)).spectral_norm() / self.m

    def apply_weight(self, z: jax.Array) -> jax.Array:
        """:math:`Wz` for one ``(H, W, C)`` feature map."""
        return apply_w(self.m, *self._maps(z.shape[:2]), z)

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
                 return_info: bool = False,
                 backward_probe: BackwardStats | None = None) -> Output:
        x = check_input(type(self).__name__, x, (None, None, self.in_channels))
        dtype = self._dtype(x, self.kernel_a[...], self.input_kernel[...])
        c = conv2d(x.astype(dtype), self.input_kernel[...].astype(dtype))
        c = c + self.bias[...].astype(dtype)
        a, b = self._maps(x.shape[1:3], dtype)
        problem = MonDEQProblem(a, b, self.m, step=self._problem_step(dtype, x.shape[1:3]),
                                splitting=self.splitting)
        return solve_layer(self, problem, c, init, return_info, backward_probe)
