r"""The linear algebra of a monDEQ layer, :math:`W = (1 - m) I - A^\top A + B - B^\top`:
products with :math:`W` and :math:`W^\top`, the resolvent :math:`(I + \alpha (I - W))^{-1}`
(dense, or per frequency for circular convolutions), :math:`L = \|I - W\|` and the splittings'
default steps (the maths: :mod:`optjax.families.mondeq`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from optjax.linalg import linear_map
from optjax.linalg.convolution import Conv2D
from optjax.linalg.norms import one_by_one, top_singular_value

__all__ = ["apply_w", "apply_w_transpose", "Resolvent", "resolvent", "resolvent_form",
           "resolvent_of", "i_minus_w", "norm_of", "exact_lipschitz", "lipschitz", "step_size",
           "peaceman_rachford_step", "peaceman_rachford_parameters", "NO_RESOLVENT"]


def apply_w(m: float, a: Any, b: Any, z: jax.Array) -> jax.Array:
    r""":math:`W z = (1 - m) z - A^\top A z + B z - B^\top z` for one sample."""
    return (1 - m) * z - linear_map.transpose(a, linear_map.apply(a, z)) \
        + linear_map.apply(b, z) - linear_map.transpose(b, z)


def apply_w_transpose(m: float, a: Any, b: Any, v: jax.Array) -> jax.Array:
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


def resolvent_form(a: Any, b: Any) -> str | None:
    """``"dense"``, ``"fft"``, or None when :math:`M^{-1}` has no exact fast form here."""
    if linear_map.is_dense(a) and linear_map.is_dense(b):
        return "dense"
    if all(isinstance(w, Conv2D) and w.padding == "circular" for w in (a, b)) and \
            a.spatial == b.spatial:
        return "fft"
    return None


def i_minus_w(m: float, a: Any, b: Any) -> tuple[str, jax.Array]:
    r"""``(form, K)``: :math:`K = I - W = mI + A^\top A - B + B^\top` as a dense matrix, or per
    frequency of ``rfft2`` (``(H, W // 2 + 1, c, c)`` complex) for circular convolutions."""
    form = resolvent_form(a, b)
    hi = jax.lax.Precision.HIGHEST
    if form == "dense":
        eye = jnp.eye(a.shape[0], dtype=a.dtype)
        return form, m * eye + jnp.matmul(a.T, a, precision=hi) - b + b.T
    if form == "fft":
        ta, tb = a.transfer_matrices(), b.transfer_matrices()
        adj = lambda t: jnp.conj(jnp.swapaxes(t, -1, -2))  # noqa: E731
        eye = jnp.eye(ta.shape[-1], dtype=ta.dtype)
        return form, m * eye + jnp.matmul(adj(ta), ta, precision=hi) - tb + adj(tb)
    raise ValueError(NO_RESOLVENT.format(a=type(a).__name__, b=type(b).__name__))


def resolvent(m: float, a: Any, b: Any, alpha: ArrayLike) -> Resolvent:
    r"""The exact resolvent :math:`(I + \alpha(I - W))^{-1}` of the monDEQ's linear part (no
    gradient), computed once: an explicit inverse for dense ``A, B``, one :math:`c \times c`
    inverse per frequency for circular :class:`~optjax.linalg.convolution.Conv2D` ``A, B`` (module
    docstring); and :math:`\|M\|_2`, exact (SVD, per frequency for the FFT form)."""
    a, b, alpha = jax.lax.stop_gradient((a, b, alpha))
    return resolvent_of(*i_minus_w(m, a, b), alpha, a)


def resolvent_of(form: str, k: jax.Array, alpha: ArrayLike, a: Any) -> Resolvent:
    """:func:`resolvent` from ``(form, K)`` of :func:`i_minus_w` (``a`` gives dtype and grid)."""
    mat = jnp.eye(k.shape[-1], dtype=k.dtype) + alpha * k
    if form == "dense":
        return Resolvent(jnp.linalg.solve(mat, jnp.eye(k.shape[-1], dtype=k.dtype)),
                         jnp.linalg.norm(mat, 2))
    norm = top_singular_value(mat).astype(a.kernel.dtype)
    return Resolvent(one_by_one(jnp.linalg.inv, mat), norm, a.spatial)


def norm_of(form: str, k: jax.Array, a: Any) -> jax.Array:
    r""":math:`\|K\|_2` exactly for ``(form, K)`` of :func:`i_minus_w` (dense: SVD; circular
    convolutions: the top singular value over the frequencies)."""
    if form == "dense":
        return jnp.linalg.norm(k, 2)
    return top_singular_value(k).astype(a.kernel.dtype)


def exact_lipschitz(m: float, a: Any, b: Any) -> jax.Array:
    r""":math:`\|I - W\|_2` exactly, where :math:`M^{-1}` has an exact form."""
    return norm_of(*i_minus_w(m, a, b), a)


def peaceman_rachford_step(m: float, a: Any, b: Any) -> jax.Array:
    r"""The default Peaceman--Rachford step :math:`\alpha = 1/\sqrt{m \|I - W\|_2}` (exact
    norm; no gradient; see the module docstring)."""
    a, b = jax.lax.stop_gradient((a, b))
    return 1.0 / jnp.sqrt(m * exact_lipschitz(m, a, b))


def peaceman_rachford_parameters(m: float, a: Any, b: Any, step: ArrayLike | None,
                                 dtype: DTypeLike) -> tuple[jax.Array, Resolvent]:
    """``(alpha, resolvent)`` with :math:`I - W` built once (``step=None``: the default step,
    from the same matrices as the resolvent). No gradient."""
    a, b, step = jax.lax.stop_gradient((a, b, step))
    form, k = i_minus_w(m, a, b)
    alpha = 1.0 / jnp.sqrt(m * norm_of(form, k, a)) if step is None else step
    alpha = jnp.asarray(alpha, dtype)
    return alpha, resolvent_of(form, k, alpha, a)


def lipschitz(m: float, a: Any, b: Any, shape: tuple[int, ...], *, exact_max: int = 256,
              iterations: int = 50) -> jax.Array:
    r""":math:`L = \|I - W\|_2`: exact (singular values of the dense matrix) for dense ``A, B``
    with ``d <= exact_max``, otherwise a power-iteration estimate (``iterations`` steps on
    :math:`(I - W)^\top (I - W)` from a fixed start; a lower bound)."""
    if linear_map.is_dense(a) and a.shape[0] <= exact_max:
        i_w = m * jnp.eye(a.shape[0], dtype=a.dtype) + a.T @ a - b + b.T
        return jnp.linalg.norm(i_w, 2)
    op = lambda v: v - apply_w(m, a, b, v)  # noqa: E731
    op_t = lambda v: v - apply_w_transpose(m, a, b, v)  # noqa: E731
    v = jax.random.normal(jax.random.PRNGKey(0), shape, linear_map.dtype(a))

    def body(_: Any, v: jax.Array) -> jax.Array:
        w = op_t(op(v))
        return w / jnp.sqrt(jnp.sum(w * w))

    v = jax.lax.fori_loop(0, iterations, body, v / jnp.sqrt(jnp.sum(v * v)))
    return jnp.sqrt(jnp.sum(op(v) ** 2))


def step_size(m: float, a: Any, b: Any, shape: tuple[int, ...], **options: int) -> jax.Array:
    r"""The default splitting step :math:`\alpha = m / L^2` (no gradient)."""
    a, b = jax.lax.stop_gradient((a, b))
    return m / lipschitz(m, a, b, shape, **options) ** 2


NO_RESOLVENT = (
    "splitting='peaceman_rachford' applies (I + alpha (I - W))^-1 exactly, which needs dense A, "
    "B or circular convolutions (optjax.linalg.convolution.Conv2D with padding='circular', the same "
    "spatial size: the FFT diagonalises them); got A: {a}, B: {b} (a zero-padded convolution is "
    "not diagonalised by the DFT). Use padding='circular', or splitting='forward_backward'.")
