r"""Monotone operator equilibrium (monDEQ) problems (Winston & Kolter, 2020).

.. math::

    z^\star = \operatorname{relu}(W z^\star + U x + b), \qquad
    W = (1 - m) I - A^\top A + B - B^\top,

with :math:`A, B` dense ``(d, d)`` matrices or square linear maps (convolutions) and
:math:`m > 0`. Then :math:`I - W = m I + A^\top A - (B - B^\top)` has symmetric part
:math:`\succeq m I`: the operator :math:`G(z) = (I - W) z - c` is :math:`m`-strongly monotone,
and the equilibrium (:math:`0 \in G(z) + N_{\ge 0}(z)`) exists and is unique for every input.
:math:`W` is not symmetric, so no objective is minimised; ``backward="auto"`` solves the
backward system with Peaceman--Rachford on the adjoint problem when the forward uses it
(*Backward* below), with GMRES after forward-backward.

**Solving** (the engine's ``solve_map``): forward-backward splitting
:math:`z \leftarrow \operatorname{relu}(z - \alpha G(z)) = \operatorname{relu}((1 - \alpha) z +
\alpha (W z + c))`, a contraction with factor :math:`\sqrt{1 - 2\alpha m + \alpha^2 L^2}`,
:math:`L = \|I - W\|`, for every :math:`0 < \alpha < 2m/L^2`; the default
:math:`\alpha = m/L^2` minimises that factor. It runs on :math:`y = z / s`,
:math:`s = \min(\alpha, 1)`, so that the solver's test :math:`\|y - \text{FB}(y)\| \le` tol
implies the equilibrium residual :math:`\|z - \operatorname{relu}(W z + c)\| \le` tol: for a
projection :math:`P`, :math:`t \mapsto \|z - P(z - t d)\|` is nondecreasing and
:math:`t \mapsto \|z - P(z - t d)\| / t` nonincreasing, so the residual at :math:`t = 1` is at
most :math:`\max(1, 1/\alpha)` times the splitting's. (Both splittings scale by a further
:math:`1 + 2^{-8}`: the two residuals can be equal in exact arithmetic, and the margin absorbs
their rounding.)

**Peaceman--Rachford** (``splitting="peaceman_rachford"``, what the monDEQ paper uses for
convolutions): with :math:`F(z) = (I - W) z - c` and :math:`R_F = (I + \alpha F)^{-1}`, i.e.
:math:`R_F(v) = M^{-1}(v + \alpha c)`, :math:`M = I + \alpha(I - W)`, and :math:`R_G =
\operatorname{relu}` (the resolvent of :math:`N_{\ge 0}`), one step on the splitting's own
variable :math:`u` is

.. math::

    z = \operatorname{relu}(u), \quad u_{1/2} = 2z - u, \quad z_{1/2} = R_F(u_{1/2}), \quad
    u \leftarrow 2 z_{1/2} - u_{1/2},

the composition of the reflected resolvents :math:`(2R_G - I)(2R_F - I)`; for an
:math:`m`-strongly monotone, :math:`L`-Lipschitz :math:`F` it is a contraction with factor
:math:`\sqrt{1 - 4\alpha m / (1 + \alpha L)^2}` for every :math:`\alpha > 0`, and
:math:`\operatorname{relu}(u^\star) = z^\star`. The default step is
:math:`\alpha = 1/\sqrt{m L}`, :math:`L = \|I - W\|_2` computed exactly (as the resolvent is):
the step that minimises the contraction factor of the reflected resolvent :math:`2R_F - I`
when :math:`F` is the gradient of an :math:`m`-strongly convex, :math:`L`-smooth function
(Giselsson & Boyd, 2017); the monDEQ's :math:`F` also has a skew part, so here it is a
heuristic. The monDEQ authors use
:math:`\alpha = 1` and tune it by halving while the forward steps drop; on a trained
Fashion-MNIST conv layer (:math:`m = 1`, :math:`L = 26`, 256 test images, tol
:math:`10^{-3}`) the mean steps to tol were 50 at :math:`\alpha = 1`, 27 at 1/2, 22 at 0.35, 27
at 1/4 and 30 at :math:`1/\sqrt{mL} = 0.196`; on one trained longer (:math:`L = 87`) 43 at the
default 0.107, 41 at 0.13 (the best) and 105 at 1/2: near the best with no search.
:math:`M^{-1}` is applied exactly, computed once
per call (a step then costs one application of :math:`M^{-1}` and no product with
:math:`W`): for dense
:math:`A, B` an explicit inverse (the symmetric part of :math:`M` is :math:`\succeq (1 + \alpha
m) I`, so :math:`\|M^{-1}\| \le 1` and the inverse is as accurate as a solve); for circular
convolutions (:class:`optjax.convolution.Conv2D` with ``padding="circular"``) by the FFT, where
:math:`M` is block-diagonal with one :math:`c \times c` complex matrix per frequency,
:math:`(1 + \alpha m) I + \alpha(\hat A_f^H \hat A_f - \hat B_f + \hat B_f^H)`, inverted once.
(A zero-padded convolution is not diagonalised by the DFT: use forward-backward there.)

*Stopping test and returned point.* The step's residual is :math:`d = u - u^+ = 2(z -
z_{1/2})`. The point handed to the engine is :math:`z_{1/2}` (``equilibrium_point``, one more
resolvent), where the equilibrium residual :math:`r = z_{1/2} - \operatorname{relu}(W z_{1/2} +
c)` costs no product with :math:`W`: from :math:`M z_{1/2} = u_{1/2} + \alpha c`,
:math:`W z_{1/2} + c = z_{1/2} + (z_{1/2} - u_{1/2})/\alpha`. With :math:`e = z_{1/2} - z`
this is :math:`z + (u - z)/\alpha + (1 + 1/\alpha) e`, and :math:`z = \operatorname{relu}(z + (u
- z)/\alpha)` (where :math:`u > 0`, :math:`u = z`; elsewhere :math:`z = 0 \ge u`); a check of the
four sign cases (:math:`u_i > 0` or not, :math:`(W z_{1/2} + c)_i > 0` or not) shows that every
:math:`r_i` lies between :math:`e_i` and :math:`-e_i/\alpha`. So

.. math:: \|z_{1/2} - \operatorname{relu}(W z_{1/2} + c)\| \le \max(1, 1/\alpha)\,\|e\| =
          \kappa\,\|d\|, \qquad \kappa = \max(1, 1/\alpha) / 2,

for any :math:`u` (also an extrapolated one), with equality when every component stays active
and :math:`\alpha \le 1`. The solver runs on :math:`y = \kappa u`, so its test :math:`\|y -
\text{PR}(y)\| \le` tol implies the equilibrium residual :math:`\le` tol at :math:`z_{1/2}`.
(At :math:`z = \operatorname{relu}(u)` the same argument needs :math:`\|M\|_2/(2\alpha)`, up to
:math:`1 + \alpha L` times larger: 6 to 11 on trained Fashion-MNIST conv layers, where stopping
at :math:`z_{1/2}` saves 14-31% of the forward steps.)

*Backward.* The backward system :math:`(I - J^\top) v = g`, :math:`J^\top v = W^\top D v`,
:math:`D = \operatorname{diag}(\operatorname{relu}'(Wz + c)) \in \{0, 1\}`, is again a strongly
monotone inclusion: :math:`w = Dv` solves :math:`0 \in F(w) + N_V(w)`, :math:`F(w) = (I -
W^\top) w - g`, :math:`V = \{w : (I - D) w = 0\}`, and :math:`v = g + W^\top w`.
Peaceman--Rachford with :math:`R_F = M^{-\top}(\cdot + \alpha g)` (the transposed inverse, per
frequency its conjugate transpose) and :math:`R_G = D` (the projection onto :math:`V`) solves it
at the forward's rate and cost per step (``backward="splitting"``, what ``"auto"`` picks): one
step is :math:`u_{1/2} = 2Du - u`, :math:`w_{1/2} = R_F(u_{1/2})`, :math:`u \leftarrow 2w_{1/2}
- u_{1/2}`, with residual :math:`d = 2(Du - w_{1/2})`. As in the forward, the answer is taken
at the half point, :math:`v = g + W^\top w_{1/2}`: with :math:`e = w_{1/2} - Du` and
:math:`F(w_{1/2}) = (u_{1/2} - w_{1/2})/\alpha` (from :math:`M^\top w_{1/2} = u_{1/2} + \alpha
g`), the system's residual is :math:`g - (I - W^\top D) v = -W^\top((I - D) e - De/\alpha)`, so

.. math:: \|g - (I - J^\top) v\| \le \|W\|\,\max(1, 1/\alpha)\,\|d\| / 2,

with :math:`\|W\| \le (1 + \alpha + \|M\|) / \alpha` (:math:`W = ((1 + \alpha) I - M) /
\alpha`): the stopping test, which needs no product with :math:`W`; the exact residual is
computed once after the loop.

**The map** the engine certifies and differentiates is :math:`S(z) = \operatorname{relu}(W z +
c)` itself (same fixed points): ``info.residual`` is the equilibrium residual, and the backward
uses :math:`J^\top v = W^\top (D v)`, :math:`D = \operatorname{diag}(\operatorname{relu}'(Wz +
c))`, with the adjoints of :math:`A, B`.

**Certificate**: for the returned :math:`x = \operatorname{relu}(W z + c)` one has
:math:`W(z - x) \in G(x) + N_{\ge 0}(x)`, and :math:`G + N` is :math:`m`-strongly monotone, so
:math:`\|x - z^\star\| \le \|W (z - x)\| / m` (the ``distance_bound``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optjax import linear_map
from optjax.config import ConfigError
from optjax.problem import (Conditions, EquilibriumProblem, _array_like, _is_concrete,
                            finite_tree, injected_input_shape)

__all__ = ["MonDEQProblem", "SPLITTINGS", "Resolvent", "AdjointSplitting", "resolvent",
           "step_size", "peaceman_rachford_step", "lipschitz"]

SPLITTINGS = ("forward_backward", "peaceman_rachford")
_MARGIN = 1.0 + 2.0**-8  # on the splittings' stopping tests (MonDEQMap._scale)


def _apply_w(m, a, b, z):
    r""":math:`W z = (1 - m) z - A^\top A z + B z - B^\top z` for one sample."""
    return (1 - m) * z - linear_map.transpose(a, linear_map.apply(a, z)) \
        + linear_map.apply(b, z) - linear_map.transpose(b, z)


def _apply_w_transpose(m, a, b, v):
    r""":math:`W^\top v = (1 - m) v - A^\top A v + B^\top v - B v`."""
    return (1 - m) * v - linear_map.transpose(a, linear_map.apply(a, v)) \
        + linear_map.transpose(b, v) - linear_map.apply(b, v)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Resolvent:
    r""":math:`v \mapsto M^{-1} v`, :math:`M = I + \alpha(I - W)`, for one sample, and
    :math:`\|M\|_2` (see :func:`resolvent`).

    Attributes:
      inverse: ``(d, d)`` (dense), or ``(H, W // 2 + 1, c, c)`` complex: :math:`M_f^{-1}` on the
        half spectrum of ``rfft2`` (circular convolutions).
      norm: :math:`\|M\|_2`, exact.
      spatial: ``(H, W)`` for the FFT form, ``None`` for dense (static).
    """

    inverse: jax.Array
    norm: jax.Array
    spatial: tuple | None = dataclasses.field(default=None, metadata=dict(static=True))

    def transposed(self) -> "Resolvent":
        r""":math:`v \mapsto M^{-\top} v` (the adjoint problem's resolvent): the transposed
        inverse, or per frequency its conjugate transpose (a real operator's adjoint)."""
        inverse = self.inverse.T if self.spatial is None else \
            jnp.conj(jnp.swapaxes(self.inverse, -1, -2))
        return Resolvent(inverse, self.norm, self.spatial)

    def __call__(self, v: jax.Array) -> jax.Array:
        if self.spatial is None:
            return jnp.matmul(self.inverse, v, precision=jax.lax.Precision.HIGHEST)
        spectrum = jnp.fft.rfft2(v, axes=(0, 1))
        spectrum = jnp.einsum("hwoc,hwc->hwo", self.inverse, spectrum,
                              precision=jax.lax.Precision.HIGHEST)
        return jnp.fft.irfft2(spectrum, s=self.spatial, axes=(0, 1)).astype(v.dtype)


def _resolvent_form(a, b) -> str | None:
    """``"dense"``, ``"fft"``, or None when :math:`M^{-1}` has no exact fast form here."""
    from optjax.convolution import Conv2D

    if linear_map.is_dense(a) and linear_map.is_dense(b):
        return "dense"
    if all(isinstance(w, Conv2D) and w.padding == "circular" for w in (a, b)) and \
            a.spatial == b.spatial:
        return "fft"
    return None


def _i_minus_w(m: float, a, b):
    r"""``(form, K)``: :math:`K = I - W = mI + A^\top A - B + B^\top` as a dense matrix, or per
    frequency of ``rfft2`` (``(H, W // 2 + 1, c, c)`` complex) for circular convolutions."""
    form = _resolvent_form(a, b)
    hi = jax.lax.Precision.HIGHEST
    if form == "dense":
        eye = jnp.eye(a.shape[0], dtype=a.dtype)
        return form, m * eye + jnp.matmul(a.T, a, precision=hi) - b + b.T
    if form == "fft":
        ta, tb = a.transfer_matrices(), b.transfer_matrices()
        adj = lambda t: jnp.conj(jnp.swapaxes(t, -1, -2))  # noqa: E731
        eye = jnp.eye(ta.shape[-1], dtype=ta.dtype)
        return form, m * eye + jnp.matmul(adj(ta), ta, precision=hi) - tb + adj(tb)
    raise ValueError(_NO_RESOLVENT.format(a=type(a).__name__, b=type(b).__name__))


def resolvent(m: float, a, b, alpha) -> Resolvent:
    r"""The exact resolvent :math:`(I + \alpha(I - W))^{-1}` of the monDEQ's linear part (no
    gradient), computed once: an explicit inverse for dense ``A, B``, one :math:`c \times c`
    inverse per frequency for circular :class:`~optjax.convolution.Conv2D` ``A, B`` (module
    docstring); and :math:`\|M\|_2`, exact (SVD, per frequency for the FFT form)."""
    a, b, alpha = jax.lax.stop_gradient((a, b, alpha))
    return _resolvent_of(*_i_minus_w(m, a, b), alpha, a)


def _resolvent_of(form: str, k: jax.Array, alpha, a) -> Resolvent:
    """:func:`resolvent` from ``(form, K)`` of :func:`_i_minus_w` (``a`` gives dtype and grid)."""
    mat = jnp.eye(k.shape[-1], dtype=k.dtype) + alpha * k
    if form == "dense":
        return Resolvent(jnp.linalg.solve(mat, jnp.eye(k.shape[-1], dtype=k.dtype)),
                         jnp.linalg.norm(mat, 2))
    from optjax.convolution import _one_by_one, _top_singular_value

    norm = _top_singular_value(mat).astype(a.kernel.dtype)
    return Resolvent(_one_by_one(jnp.linalg.inv, mat), norm, a.spatial)


def _norm_of(form: str, k: jax.Array, a) -> jax.Array:
    r""":math:`\|K\|_2` exactly for ``(form, K)`` of :func:`_i_minus_w` (dense: SVD; circular
    convolutions: the top singular value over the frequencies)."""
    if form == "dense":
        return jnp.linalg.norm(k, 2)
    from optjax.convolution import _top_singular_value

    return _top_singular_value(k).astype(a.kernel.dtype)


def _exact_lipschitz(m: float, a, b) -> jax.Array:
    r""":math:`\|I - W\|_2` exactly, where :math:`M^{-1}` has an exact form."""
    return _norm_of(*_i_minus_w(m, a, b), a)


def peaceman_rachford_step(m: float, a, b) -> jax.Array:
    r"""The default Peaceman--Rachford step :math:`\alpha = 1/\sqrt{m \|I - W\|_2}` (exact
    norm; no gradient; see the module docstring)."""
    a, b = jax.lax.stop_gradient((a, b))
    return 1.0 / jnp.sqrt(m * _exact_lipschitz(m, a, b))


def _peaceman_rachford_parameters(m: float, a, b, step, dtype):
    """``(alpha, resolvent)`` with :math:`I - W` built once (``step=None``: the default step,
    from the same matrices as the resolvent). No gradient."""
    a, b, step = jax.lax.stop_gradient((a, b, step))
    form, k = _i_minus_w(m, a, b)
    alpha = 1.0 / jnp.sqrt(m * _norm_of(form, k, a)) if step is None else step
    alpha = jnp.asarray(alpha, dtype)
    return alpha, _resolvent_of(form, k, alpha, a)


_NO_RESOLVENT = (
    "splitting='peaceman_rachford' applies (I + alpha (I - W))^-1 exactly, which needs dense A, "
    "B or circular convolutions (optjax.convolution.Conv2D with padding='circular', the same "
    "spatial size: the FFT diagonalises them); got A: {a}, B: {b} (a zero-padded convolution is "
    "not diagonalised by the DFT). Use padding='circular', or splitting='forward_backward'.")


class AdjointSplitting(NamedTuple):
    """The backward system's splitting at one equilibrium: ``step(u, g)``, ``solution(u, g) ->
    v``, and ``scale`` with ``||g - (I - J^T) v|| <= scale * ||u - step(u, g)||``."""

    step: Callable
    solution: Callable
    scale: jax.Array


@dataclasses.dataclass(frozen=True)
class MonDEQMap:
    """:math:`S(z) = \\operatorname{relu}(Wz + c)` for one sample. Params ``(A, B, alpha)``
    (forward-backward) or ``(A, B, alpha, resolvent)`` (Peaceman--Rachford); the solver iterates
    the splitting in its scaled variable (see the module docstring)."""

    m: float
    splitting: str = "forward_backward"

    def __call__(self, z, params, c):
        a, b = params[:2]
        return jax.nn.relu(_apply_w(self.m, a, b, z) + c).astype(z.dtype)

    def jacobian_transpose(self, z, params, c):
        a, b = params[:2]
        active = (_apply_w(self.m, a, b, z) + c > 0).astype(z.dtype)
        return lambda v: _apply_w_transpose(self.m, a, b, active * v).astype(v.dtype)

    def adjoint_splitting(self, z, params, c) -> "AdjointSplitting":
        """Peaceman--Rachford on the backward system at ``z`` (module docstring, *Backward*)."""
        if self.splitting != "peaceman_rachford":
            raise ConfigError("the adjoint splitting is Peaceman--Rachford's: use "
                              "splitting='peaceman_rachford', or backward='gmres'")
        a, b, alpha, res = params
        active = (_apply_w(self.m, a, b, z) + c > 0).astype(z.dtype)
        inverse_t = res.transposed()

        def half(u, g):  # (u_half, w_half)
            u_half = 2 * active * u - u
            return u_half, inverse_t(u_half + alpha * g)

        def step(u, g):
            u_half, w_half = half(u, g)
            return 2 * w_half - u_half

        def solution(u, g):  # v = g + W^T w_half: the bound below holds there
            return g + _apply_w_transpose(self.m, a, b, half(u, g)[1])

        w_norm = (1 + alpha + res.norm) / alpha
        scale = w_norm * 0.5 / jnp.minimum(alpha, 1.0) * _MARGIN
        return AdjointSplitting(step, solution, scale)

    def _scale(self, params, dtype):
        """y = scale * (the splitting's variable): FB ``1 / min(alpha, 1)``, PR
        ``max(1, 1/alpha) / 2``, times ``1 + 2^-8``: the two residuals can be equal in exact
        arithmetic (FB where the active set is settled, PR where every component stays active),
        and the margin absorbs their rounding."""
        if self.splitting == "forward_backward":
            scale = 1.0 / jnp.minimum(params[2], 1.0)
        else:
            scale = 0.5 / jnp.minimum(params[2], 1.0)
        return (scale * _MARGIN).astype(dtype)

    def solve_map(self, y, params, c):
        a, b, alpha = params[:3]
        scale = self._scale(params, y.dtype)
        if self.splitting == "forward_backward":
            z = y / scale
            out = jax.nn.relu((1 - alpha) * z + alpha * (_apply_w(self.m, a, b, z) + c))
            return (out * scale).astype(y.dtype)
        u = y / scale
        u_half, z_half = self._half_step(u, params, c)
        return ((2 * z_half - u_half) * scale).astype(y.dtype)

    @staticmethod
    def _half_step(u, params, c):
        """Peaceman--Rachford's ``(u_half, z_half)`` from ``u``: ``u_half = 2 relu(u) - u``,
        ``z_half = M^{-1}(u_half + alpha c)``."""
        u_half = 2 * jax.nn.relu(u) - u
        return u_half, params[3](u_half + params[2] * c)

    def solve_state(self, z, params, c):
        return z * self._scale(params, z.dtype)

    def equilibrium_point(self, y, params, c):
        point = y / self._scale(params, y.dtype)
        if self.splitting == "forward_backward":
            return point
        return self._half_step(point, params, c)[1].astype(y.dtype)  # z_half: module docstring


def lipschitz(m: float, a, b, shape, *, exact_max: int = 256, iterations: int = 50) -> jax.Array:
    r""":math:`L = \|I - W\|_2`: exact (singular values of the dense matrix) for dense ``A, B``
    with ``d <= exact_max``, otherwise a power-iteration estimate (``iterations`` steps on
    :math:`(I - W)^\top (I - W)` from a fixed start; a lower bound)."""
    if linear_map.is_dense(a) and a.shape[0] <= exact_max:
        i_w = m * jnp.eye(a.shape[0], dtype=a.dtype) + a.T @ a - b + b.T
        return jnp.linalg.norm(i_w, 2)
    op = lambda v: v - _apply_w(m, a, b, v)  # noqa: E731
    op_t = lambda v: v - _apply_w_transpose(m, a, b, v)  # noqa: E731
    v = jax.random.normal(jax.random.PRNGKey(0), shape, linear_map.dtype(a))

    def body(_, v):
        w = op_t(op(v))
        return w / jnp.sqrt(jnp.sum(w * w))

    v = jax.lax.fori_loop(0, iterations, body, v / jnp.sqrt(jnp.sum(v * v)))
    return jnp.sqrt(jnp.sum(op(v) ** 2))


def step_size(m: float, a, b, shape, **options) -> jax.Array:
    r"""The default splitting step :math:`\alpha = m / L^2` (no gradient)."""
    a, b = jax.lax.stop_gradient((a, b))
    return m / lipschitz(m, a, b, shape, **options) ** 2


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MonDEQProblem(EquilibriumProblem):
    """A monDEQ layer (a pytree; ``m`` is static).

    Attributes:
      weight_a, weight_b: ``A, B``: dense ``(d, d)`` arrays or square linear maps.
      m: the monotonicity margin, > 0 (static).
      input_weight: ``U``, ``(d, p)``; ``None`` means ``x`` already is ``U x``.
      bias: broadcastable to the state shape; ``None`` means 0.
      step: the splitting step ``alpha``. Forward-backward: ``None`` means :func:`step_size`,
        computed once per call outside the solve; any ``0 < alpha < 2 m / L^2`` converges.
        Peaceman--Rachford: ``None`` means :func:`peaceman_rachford_step`,
        :math:`1/\\sqrt{mL}`, computed inside the solve from the same :math:`I - W` as the
        resolvent; any ``alpha > 0`` converges.
      splitting: ``"forward_backward"`` or ``"peaceman_rachford"`` (static; same equilibrium,
        same certificate and gradients; see the module docstring). Peaceman--Rachford needs
        dense ``A, B`` or circular :class:`~optjax.convolution.Conv2D` ones.
    """

    weight_a: Any
    weight_b: Any
    m: float = dataclasses.field(default=0.05, metadata=dict(static=True))
    input_weight: jax.Array | None = None
    bias: jax.Array | None = None
    step: jax.Array | None = None
    splitting: str = dataclasses.field(default="forward_backward", metadata=dict(static=True))

    kind: ClassVar[str] = "mondeq"
    default_solver: ClassVar[str] = "fixed_point"

    def __post_init__(self):
        if not (isinstance(self.m, (int, float)) and not isinstance(self.m, bool) and self.m > 0):
            raise ConfigError(f"m must be a positive number (the monotonicity margin), got "
                              f"{self.m!r}")
        if self.splitting not in SPLITTINGS:
            raise ConfigError(f"splitting must be one of {SPLITTINGS}, got {self.splitting!r}")
        if not all(_array_like(leaf) for leaf in jax.tree_util.tree_leaves(self.weight_a)):
            return
        if self.step is not None and _is_concrete(self.step) and not bool(
                jnp.all(jnp.asarray(self.step) > 0)):
            raise ConfigError(f"step (the splitting's alpha) must be positive, got "
                              f"{np.asarray(self.step).tolist()}")
        for name, w in (("weight_a", self.weight_a), ("weight_b", self.weight_b)):
            if tuple(linear_map.in_shape(w)) != tuple(linear_map.out_shape(w)) or (
                    linear_map.is_dense(w) and w.ndim != 2):
                raise ValueError(f"{name} of a monDEQ must be a square (d, d) array or a map of "
                                 f"the state to itself")
        if tuple(linear_map.in_shape(self.weight_a)) != tuple(linear_map.in_shape(self.weight_b)):
            raise ValueError("weight_a and weight_b must act on the same state shape")
        if self.splitting == "peaceman_rachford" and \
                _resolvent_form(self.weight_a, self.weight_b) is None:
            raise ValueError(_NO_RESOLVENT.format(a=type(self.weight_a).__name__,
                                                  b=type(self.weight_b).__name__))

    @property
    def state_shape(self):
        return tuple(linear_map.in_shape(self.weight_a))

    @property
    def input_shape(self):
        return injected_input_shape(self.input_weight, self.state_shape)

    @property
    def dtype(self):
        return linear_map.dtype(self.weight_a)

    @property
    def adjoint_splitting(self) -> bool:
        return self.splitting == "peaceman_rachford"

    def equilibrium_map(self):
        return MonDEQMap(float(self.m), self.splitting)

    def _alpha(self):  # forward-backward's (Peaceman--Rachford's: _peaceman_rachford_parameters)
        if self.step is not None:
            return self.step
        return step_size(self.m, self.weight_a, self.weight_b, self.state_shape)

    def parameters(self):
        if self.splitting == "forward_backward":
            alpha = jax.lax.stop_gradient(jnp.asarray(self._alpha(), self.dtype))
            return (self.weight_a, self.weight_b, alpha)
        alpha, res = _peaceman_rachford_parameters(self.m, self.weight_a, self.weight_b,
                                                   self.step, self.dtype)
        return (self.weight_a, self.weight_b, alpha, res)

    def prepare(self, *, certify: bool) -> "MonDEQProblem":
        # Peaceman--Rachford's default step comes with the resolvent, from one I - W.
        if self.step is None and self.splitting == "forward_backward":
            return dataclasses.replace(self, step=jnp.asarray(self._alpha(), self.dtype))
        return self

    def sample_data(self, x, feature=None):
        c = x if self.input_weight is None else x @ self.input_weight.T
        if self.bias is not None:
            c = c + self.bias
        return jnp.broadcast_to(c, (x.shape[0],) + self.state_shape)

    def conditions(self, *, certify: bool) -> Conditions:
        from optjax.problem import Defect

        dtype = self.dtype
        bad = ~finite_tree((self.weight_a, self.weight_b, self.input_weight, self.bias))
        bits = jnp.where(bad, int(Defect.NONFINITE_PARAMETERS), 0).astype(jnp.int32)
        return Conditions(bits, jnp.asarray(self.m, dtype), jnp.asarray(jnp.nan, dtype))

    def certificate(self, point, last, residual, params, data, conditions: Conditions):
        from optjax.certificate import Certificate

        frozen = jax.lax.stop_gradient
        a, b = frozen(params[:2])
        gap = jax.vmap(lambda v: _apply_w(self.m, a, b, v))(frozen(last - point))
        dist = jnp.sqrt(jnp.sum(gap**2, axis=tuple(range(1, gap.ndim)))) / self.m
        nan = jnp.full(residual.shape, jnp.nan, residual.dtype)
        inf = jnp.full(residual.shape, jnp.inf, residual.dtype)
        return Certificate(residual=frozen(residual), objective=nan,
                           modulus=jnp.asarray(self.m, residual.dtype),
                           suboptimality_bound=inf, distance_bound=dist.astype(residual.dtype),
                           weight_norm=frozen(conditions.norm))
