r"""2-D convolutions as linear maps (see :mod:`optjax.linalg.linear_map`): :class:`Conv2D`, the weight
``W`` of a unit layer, and :class:`StridedConv2D`, a coupling between resolutions (its maths is
in its docstring). Below, :class:`Conv2D`.

For one sample :math:`z \in \mathbb{R}^{H \times W \times c_{in}}` and a kernel
:math:`K \in \mathbb{R}^{k \times k \times c_{in} \times c_{out}}` (HWIO, :math:`k = 2p + 1` odd),
stride 1 and a "same"-sized output,

.. math::

    (W z)[i, j, o] = \sum_{a, b < k} \sum_{c} K[a, b, c, o]\; \tilde z[i + a - p,\ j + b - p,\ c],

where :math:`\tilde z` extends :math:`z` by zeros (``padding="zeros"``) or periodically
(``padding="circular"``). This is the cross-correlation computed by
:func:`jax.lax.conv_general_dilated`.

**Adjoint.** Substituting :math:`a' = k - 1 - a` shows that
:math:`(W^\top y)[m, n, c] = \sum_{a, b, o} K[k-1-a, k-1-b, c, o]\, \tilde y[m + a - p, n + b - p, o]`:
the adjoint is the same kind of convolution (same padding) with the kernel flipped in space and
its channel axes swapped. For zero padding this holds because an index leaving the grid
contributes zero on both sides; for circular padding because the index map is a bijection mod
:math:`(H, W)`.

Spectral norms: :mod:`optjax.linalg.norms` (exact for circular padding, a certified upper
bound for zero padding).

Examples:
  >>> import jax, optjax
  >>> optjax.convolution.Conv2D.init(jax.random.PRNGKey(0), 3, 2, 4, spatial=(6, 6)).out_shape
  (6, 6, 4)
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp

from optjax.linalg.norms import circular_norm, wrapped_taps

__all__ = ["Conv2D", "StridedConv2D"]

_PADDINGS = ("zeros", "circular")
_DIMS = ("NHWC", "HWIO", "NHWC")


def _check_spatial(spatial: Any) -> tuple[int, int]:
    try:
        out = tuple(operator.index(s) for s in spatial)
    except TypeError:
        out = None
    if out is None or len(out) != 2 or min(out) < 1:
        raise ValueError(f"spatial must be a pair of positive ints (H, W), got {spatial!r}")
    return out


def _check_kernel(owner: str, kernel: Any, odd: bool) -> None:
    """Shape and dtype checks of a (k, k, c_in, c_out) kernel; placeholders (no shape) pass."""
    shape = getattr(kernel, "shape", None)
    if shape is None:
        return
    shape = tuple(shape)
    if len(shape) != 4:
        raise ValueError(
            f"{owner}: kernel must be 4-D (k, k, c_in, c_out) in HWIO layout, got shape {shape}")
    if shape[0] != shape[1] or shape[0] < 1 or (odd and shape[0] % 2 == 0):
        need = "an odd square spatial size (k, k) with k odd" if odd else \
            "a square spatial size (k, k)"
        raise ValueError(f"{owner}: kernel must have {need}, got {shape[:2]} (full shape {shape})")
    dtype = getattr(kernel, "dtype", None)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{owner}: kernel must have a floating dtype, got {dtype}")


def _check_sample(owner: str, name: str, x: jax.Array, want: tuple[int, ...]) -> None:
    got = tuple(jnp.shape(x))
    if got != want:
        hint = (" (apply/transpose take ONE sample; use jax.vmap for a batch)"
                if got[1:] == want else "")
        raise ValueError(
            f"{owner}.{name} expects one sample of shape {want} (H, W, channels), got {got}{hint}")


def _conv(x: jax.Array, kernel: jax.Array, pads: Any, stride: int = 1,
          dilation: int = 1) -> jax.Array:
    """Cross-correlation of one ``(H, W, c)`` sample, zero ``pads`` ``((top, bottom), (left,
    right))`` (negative: cropped), window stride ``stride``, the input dilated by ``dilation``
    (``dilation - 1`` zeros between its pixels)."""
    dtype = jnp.result_type(x, kernel)
    out = jax.lax.conv_general_dilated(
        jnp.asarray(x, dtype)[None], jnp.asarray(kernel, dtype), window_strides=(stride, stride),
        padding=tuple(pads), lhs_dilation=(dilation, dilation), dimension_numbers=_DIMS,
        precision=jax.lax.Precision.HIGHEST,
    )
    return out[0]


def _correlate(x: jax.Array, kernel: jax.Array, pads: Any, padding: str,
               stride: int) -> jax.Array:
    """VALID cross-correlation of one ``(H, W, c)`` sample extended by ``pads`` (``((top,
    bottom), (left, right))``) zeros or periodically, with window stride ``stride``."""
    if padding == "circular":
        x = jnp.pad(x, tuple(pads) + ((0, 0),), mode="wrap")
        pads = ((0, 0), (0, 0))
    return _conv(x, kernel, pads, stride)


def _adjoint_kernel(kernel: jax.Array) -> jax.Array:
    """The kernel of the adjoint correlation: flipped in space, channel axes swapped."""
    return jnp.swapaxes(kernel[::-1, ::-1], 2, 3)


class _PowerIteration:
    """``power_iteration``: a lower bound on the norm, shared by the convolutions."""

    if TYPE_CHECKING:  # what it uses of the subclasses
        kernel: jax.Array
        apply: Callable[[jax.Array], jax.Array]
        transpose: Callable[[jax.Array], jax.Array]

        @property
        def in_shape(self) -> tuple[int, ...]: ...

    def power_iteration(self, num_steps: int = 100, key: jax.Array | None = None) -> jax.Array:
        r"""A lower bound on :math:`\|W\|`: :math:`\|W v\|` for the unit vector ``v`` reached by
        ``num_steps`` steps of power iteration on :math:`W^\top W` from a random start
        (``key``, default ``PRNGKey(0)``). It converges to :math:`\|W\|` from below, at a rate
        set by the gap between the two largest distinct singular values."""
        if key is None:
            key = jax.random.PRNGKey(0)
        dtype = jnp.asarray(self.kernel).dtype
        v = jax.random.normal(key, self.in_shape, dtype)
        v = v / jnp.linalg.norm(v)

        def step(_: Any, v: jax.Array) -> jax.Array:
            w = self.transpose(self.apply(v))
            return w / jnp.linalg.norm(w)

        v = jax.lax.fori_loop(0, int(num_steps), step, v)
        return jnp.linalg.norm(self.apply(v))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Conv2D(_PowerIteration):
    r"""``W``: a 2-D convolution, stride 1, 'same'-sized output, kernel ``(k, k, c_in, c_out)`` (HWIO).

    ``apply`` maps ``(H, W, c_in) -> (H, W, c_out)`` and ``transpose`` is its exact adjoint
    (:math:`\langle W x, y\rangle = \langle x, W^\top y\rangle`), both for one sample; wrap them
    in ``jax.vmap`` for a batch (the core does).

    Attributes:
      kernel: ``(k, k, c_in, c_out)``, ``k`` odd (a pytree leaf: differentiable).
      spatial: ``(H, W)``, the per-sample spatial size (static).
      padding: ``"zeros"`` (SAME zero padding) or ``"circular"`` (periodic) (static).
    """

    kernel: jax.Array
    spatial: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    padding: str = dataclasses.field(default="zeros", metadata=dict(static=True))

    def __post_init__(self) -> None:
        object.__setattr__(self, "spatial", _check_spatial(self.spatial))
        if self.padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS}, got {self.padding!r}")
        # Pytree unflattening rebuilds the object with arbitrary leaves (None, ints, specs):
        # only array-like kernels are checked.
        _check_kernel("Conv2D", self.kernel, odd=True)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def init(cls, key: jax.Array, k: int, c_in: int, c_out: int, spatial: tuple[int, ...],
             padding: str = "zeros", dtype: jax.typing.DTypeLike = jnp.float32) -> "Conv2D":
        """He-normal initialisation: entries N(0, 2 / (k^2 c_in)). Rescale it (e.g. by
        ``0.9 / spectral_norm()``) before using it in a convex OptEq layer."""
        if not (isinstance(k, int) and k > 0 and k % 2 == 1):
            raise ValueError(f"k must be a positive odd int, got {k!r}")
        std = math.sqrt(2.0 / (k * k * c_in))
        kernel = std * jax.random.normal(key, (k, k, c_in, c_out), dtype)
        return cls(kernel=kernel, spatial=spatial, padding=padding)

    # -- shapes ------------------------------------------------------------------------------
    @property
    def kernel_size(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.spatial + (int(self.kernel.shape[2]),)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.spatial + (int(self.kernel.shape[3]),)

    # -- the map -----------------------------------------------------------------------------
    def _same(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        p = (kernel.shape[0] - 1) // 2
        return _correlate(x, kernel, ((p, p), (p, p)), self.padding, 1)

    def apply(self, z: jax.Array) -> jax.Array:
        """``W z`` for one sample: ``(H, W, c_in) -> (H, W, c_out)``."""
        _check_sample("Conv2D", "apply", z, self.in_shape)
        return self._same(z, self.kernel)

    def transpose(self, s: jax.Array) -> jax.Array:
        r""":math:`W^\top s` for one sample: ``(H, W, c_out) -> (H, W, c_in)``; the same
        convolution with the kernel flipped in space and its channel axes swapped."""
        _check_sample("Conv2D", "transpose", s, self.out_shape)
        return self._same(s, _adjoint_kernel(self.kernel))

    # -- norms and the Fourier form ----------------------------------------------------------
    def spectral_norm(self) -> jax.Array:
        r""":math:`\|W\|_2`: exact for ``"circular"`` (FFT block-diagonalisation); for
        ``"zeros"`` a certified upper bound, the exact norm of the circular convolution on the
        zero-padded grid :math:`(H + k - 1) \times (W + k - 1)` that :math:`W` is a
        restriction of. See the module docstring."""
        k = self.kernel_size
        if self.padding == "circular":
            grid = self.spatial
        else:
            grid = (self.spatial[0] + k - 1, self.spatial[1] + k - 1)
        kernel = jnp.asarray(self.kernel)
        return circular_norm(kernel, grid).astype(kernel.dtype)

    def transfer_matrices(self) -> jax.Array:
        r"""The per-frequency matrices of a circular convolution, on the half spectrum of
        :func:`jax.numpy.fft.rfft2`: ``M`` of shape ``(H, W // 2 + 1, c_out, c_in)`` (complex)
        with ``rfft2(W z)[f] = M[f] @ rfft2(z)[f]`` for every sample ``z`` (axes 0, 1).

        :math:`M_f = \sum_d h[d]^\top e^{+2\pi i \langle f, d\rangle/(H, W)}`, the conjugate
        transpose of the DFT of the wrapped kernel ``h`` (module docstring); the adjoint has
        :math:`M_f^H`. Only for ``padding="circular"``: a zero-padded convolution is not
        diagonalised by the DFT."""
        if self.padding != "circular":
            raise ValueError(
                "transfer_matrices needs padding='circular': the DFT diagonalises only a "
                f"periodic convolution, and this one has padding={self.padding!r}")
        kernel = jnp.asarray(self.kernel)
        h = wrapped_taps(kernel, self.spatial, 1, (self.kernel_size - 1) // 2)
        blocks = jnp.fft.rfft2(h, axes=(0, 1))  # (H, W//2+1, c_in, c_out)
        return jnp.conj(jnp.swapaxes(blocks, 2, 3))


def _zero_padded_grid(size: int, k: int, stride: int, offset: int) -> int:
    """The smallest multiple of ``stride`` >= ``size + max(offset, k - stride - offset)``: a
    torus on which the zero-padded strided correlation never wraps onto the data."""
    extra = max(offset, k - stride - offset, 0)
    return size + stride * (-(-extra // stride))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StridedConv2D(_PowerIteration):
    r"""``A``: a strided 2-D convolution from ``(H, W, c_in)`` to ``(H/s, W/s, c_out)``, a coupling
    between resolutions (e.g. 14 x 14 -> 7 x 7 in a multi-scale chain).

    With the kernel ``K`` of shape ``(k, k, c_in, c_out)`` (any ``k >= 1``; ``p = (k - 1) // 2``)
    and stride :math:`s` dividing ``H`` and ``W``,

    .. math::

        (A z)[i, j, o] = \sum_{a, b < k} \sum_c K[a, b, c, o]\,
                         \tilde z[s i + a - p,\ s j + b - p,\ c],

    :math:`\tilde z` the extension of :math:`z` by zeros (``"zeros"``) or periodically
    (``"circular"``). For ``s = 1`` and odd ``k`` this is :class:`Conv2D`.

    **Adjoint** (a transposed convolution). :math:`(A^\top y)[m] = \sum_a K[a]\,\hat y[m + p - a]`
    where :math:`\hat y` is :math:`y` upsampled by :math:`s` with zeros
    (:math:`\hat y[s i] = y[i]`, 0 elsewhere on the :math:`H \times W` grid); with
    :math:`a' = k - 1 - a` it is a stride-1 correlation of :math:`\hat y` with the kernel flipped
    in space and its channel axes swapped, padded by :math:`(k - 1 - p, p)` (zeros, or
    periodically: for the circular map every index is taken mod :math:`(H, W)`, which is a
    bijection).

    **Spectral norm (circular, exact).** Split :math:`z` into its :math:`s^2` polyphase
    components :math:`z_r[j] = z[s j + r]` (:math:`0 \le r < s` per axis), each on the
    :math:`(H/s) \times (W/s)` torus; stacking them along the channels is a permutation of
    the entries (an orthogonal map :math:`P`). Tap :math:`a` reads :math:`s i + a - p = s(i + d)
    + r` with :math:`r = (a - p) \bmod s`, :math:`d = \lfloor (a - p)/s \rfloor`, so
    :math:`A = C P` with :math:`C` a stride-1 circular correlation from :math:`s^2 c_{in}` to
    :math:`c_{out}` channels on the coarse torus. As for :class:`Conv2D`, the DFT
    block-diagonalises :math:`C` into :math:`c_{out} \times s^2 c_{in}` matrices :math:`M_f`, and
    :math:`\|A\| = \|C\| = \max_f \|M_f\|_2`.

    **Spectral norm (zeros, certified bound).** Embed :math:`z` with zeros in the torus of
    :math:`G = H + s \lceil e / s\rceil` rows, :math:`e = \max(p, k - s - p, 0)` (likewise
    columns; an isometry :math:`E`), apply the circular strided correlation :math:`C_G` there
    and keep the first :math:`H/s` output rows and columns (a coordinate projection :math:`Q`).
    Output :math:`i < H/s` reads rows :math:`s i - p \ge -p`, which wrap to :math:`\ge G - p \ge
    H`, up to :math:`s i + k - 1 - p \le H + k - s - p - 1 < G`: never a data row, only zeros,
    exactly as the zero extension does. So :math:`A = Q C_G E` and :math:`\|A\| \le \|C_G\|`,
    computed exactly as above: a certified upper bound, tight up to boundary effects.

    Attributes:
      kernel: ``(k, k, c_in, c_out)`` (HWIO; a pytree leaf, differentiable).
      spatial: ``(H, W)`` of the input, both divisible by ``stride`` (static).
      stride: ``s >= 1`` (static).
      padding: ``"zeros"`` or ``"circular"`` (static).
    """

    kernel: jax.Array
    spatial: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    stride: int = dataclasses.field(default=2, metadata=dict(static=True))
    padding: str = dataclasses.field(default="zeros", metadata=dict(static=True))

    def __post_init__(self) -> None:
        spatial = _check_spatial(self.spatial)
        object.__setattr__(self, "spatial", spatial)
        try:
            stride = operator.index(self.stride)
        except TypeError:
            stride = None
        if stride is None or isinstance(self.stride, bool) or stride < 1:
            raise ValueError(f"stride must be a positive int, got {self.stride!r}")
        object.__setattr__(self, "stride", stride)
        if spatial[0] % stride or spatial[1] % stride:
            raise ValueError(
                f"the input size {spatial} must be divisible by the stride {stride} (the output "
                f"is (H/s, W/s)); crop or pad the input to a multiple of {stride}")
        if self.padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS}, got {self.padding!r}")
        _check_kernel("StridedConv2D", self.kernel, odd=False)

    @classmethod
    def init(cls, key: jax.Array, k: int, c_in: int, c_out: int, spatial: tuple[int, ...],
             stride: int = 2, padding: str = "zeros",
             dtype: jax.typing.DTypeLike = jnp.float32) -> "StridedConv2D":
        """He-normal initialisation: entries N(0, 2 / (k^2 c_in)); rescale before use in a
        convex layer (e.g. :func:`optjax.deep.normalize`)."""
        if not (isinstance(k, int) and not isinstance(k, bool) and k > 0):
            raise ValueError(f"k must be a positive int, got {k!r}")
        std = math.sqrt(2.0 / (k * k * c_in))
        kernel = std * jax.random.normal(key, (k, k, c_in, c_out), dtype)
        return cls(kernel=kernel, spatial=spatial, stride=stride, padding=padding)

    # -- shapes ------------------------------------------------------------------------------
    @property
    def kernel_size(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def offset(self) -> int:
        """``p = (k - 1) // 2``: tap ``a`` reads input pixel ``s i + a - p``."""
        return (self.kernel_size - 1) // 2

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.spatial + (int(self.kernel.shape[2]),)

    @property
    def out_shape(self) -> tuple[int, ...]:
        s = self.stride
        return (self.spatial[0] // s, self.spatial[1] // s, int(self.kernel.shape[3]))

    # -- the map -----------------------------------------------------------------------------
    def apply(self, z: jax.Array) -> jax.Array:
        """``A z`` for one sample: ``(H, W, c_in) -> (H/s, W/s, c_out)``."""
        _check_sample("StridedConv2D", "apply", z, self.in_shape)
        k, p, s = self.kernel_size, self.offset, self.stride
        # the last output reads up to pixel H - s + k - 1 - p: pad that far, no further
        after = max(0, k - s - p)
        return _correlate(z, self.kernel, ((p, after), (p, after)), self.padding, s)

    def transpose(self, y: jax.Array) -> jax.Array:
        r""":math:`A^\top y` for one sample: ``(H/s, W/s, c_out) -> (H, W, c_in)``: the
        transposed convolution (class docstring), with the upsampling done by the convolution's
        input dilation. Circular: ``y`` is first extended periodically by whole coarse pixels,
        enough to cover every index the correlation reads."""
        _check_sample("StridedConv2D", "transpose", y, self.out_shape)
        k, p, s = self.kernel_size, self.offset, self.stride
        # the correlation reads the upsampled y at m + a' - (k - 1 - p), m < H, a' < k
        left = -(-(k - 1 - p) // s) if self.padding == "circular" else 0  # coarse pixels
        right = (s - 1 + p) // s if self.padding == "circular" else 0
        if left or right:
            y = jnp.pad(y, ((left, right), (left, right), (0, 0)), mode="wrap")
        pads = tuple((k - 1 - p - s * left, n - 1 + p - s * (n // s + right - 1))
                     for n in self.spatial)
        return _conv(y, _adjoint_kernel(self.kernel), pads, dilation=s)

    # -- norms -------------------------------------------------------------------------------
    def spectral_norm(self) -> jax.Array:
        r""":math:`\|A\|_2`: exact for ``"circular"`` (polyphase components + FFT); for
        ``"zeros"`` a certified upper bound, the exact norm of the circular strided convolution
        on the zero-padded torus that :math:`A` is a restriction of (class docstring)."""
        k, p, s = self.kernel_size, self.offset, self.stride
        if self.padding == "circular":
            grid = self.spatial
        else:
            grid = tuple(_zero_padded_grid(n, k, s, p) for n in self.spatial)
        kernel = jnp.asarray(self.kernel)
        coarse = (grid[0] // s, grid[1] // s)
        return circular_norm(kernel, coarse, s, p).astype(kernel.dtype)
