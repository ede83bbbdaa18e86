r"""A 2-D convolution as the weight ``W`` of a unit layer (a linear map, see :mod:`optjax.linear_map`).

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

**Spectral norm (circular).** A circular convolution is block-circulant, so the 2-D DFT
block-diagonalises it (Sedghi, Gupta & Long, *The singular values of convolutional layers*,
ICLR 2019): with :math:`h[d] = \sum_{a - p \equiv d} K[a]` the kernel wrapped onto the
:math:`H \times W` torus, :math:`\widehat{Wz}[f] = M_f\,\hat z[f]` with
:math:`M_f = \sum_d h[d]^\top e^{+2\pi i \langle f, d\rangle / (H, W)}`, a
:math:`c_{out} \times c_{in}` complex matrix. The DFT is unitary (up to a scale that cancels), so
the singular values of :math:`W` are those of all the :math:`M_f`, and
:math:`\|W\| = \max_f \|M_f\|_2` exactly. (:math:`M_f` is the DFT of :math:`h` at :math:`-f`; the
maximum over all frequencies is the same.)

**Spectral norm (zeros).** Embed :math:`z` in the grid :math:`(H + k - 1) \times (W + k - 1)`
padded with zeros (an isometry :math:`E`), apply the circular convolution :math:`C` on that grid
and crop back (a coordinate projection :math:`P`): no wrapped index reaches the embedded data, so
:math:`W = P C E` and :math:`\|W\| \le \|C\|`, which is computed exactly as above: a certified
upper bound, tight up to boundary effects (it tends to :math:`\|W\|` as the image grows).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Conv2D"]

_PADDINGS = ("zeros", "circular")
_DIMS = ("NHWC", "HWIO", "NHWC")


@functools.partial(jax.jit, static_argnums=1)
def _circular_norm(kernel: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Exact ||C|| of the circular 'same' cross-correlation with ``kernel`` on a ``grid`` torus."""
    k = kernel.shape[0]
    p = (k - 1) // 2
    rows = np.mod(np.arange(k) - p, grid[0])
    cols = np.mod(np.arange(k) - p, grid[1])
    # Wrap the taps onto the torus; ``add`` sums taps that alias when k exceeds the grid.
    h = jnp.zeros(grid + kernel.shape[2:], kernel.dtype).at[rows[:, None], cols[None, :]].add(kernel)
    blocks = jnp.fft.fft2(h, axes=(0, 1))  # (gH, gW, c_in, c_out): M_{-f}^T at every frequency
    return jnp.max(jnp.linalg.svd(blocks, compute_uv=False))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Conv2D:
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
    spatial: tuple[int, int] = dataclasses.field(metadata=dict(static=True))
    padding: str = dataclasses.field(default="zeros", metadata=dict(static=True))

    def __post_init__(self):
        try:
            spatial = tuple(operator.index(s) for s in self.spatial)
        except TypeError:
            spatial = None
        if spatial is None or len(spatial) != 2 or min(spatial) < 1:
            raise ValueError(f"spatial must be a pair of positive ints (H, W), got {self.spatial!r}")
        object.__setattr__(self, "spatial", spatial)
        if self.padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS}, got {self.padding!r}")
        # Pytree unflattening rebuilds the object with arbitrary leaves (None, ints, specs):
        # only array-like kernels are checked.
        shape = getattr(self.kernel, "shape", None)
        if shape is None:
            return
        shape = tuple(shape)
        if len(shape) != 4:
            raise ValueError(
                f"kernel must be 4-D (k, k, c_in, c_out) in HWIO layout, got shape {shape}"
            )
        if shape[0] != shape[1] or shape[0] % 2 == 0:
            raise ValueError(
                f"kernel must have an odd square spatial size (k, k) with k odd, got {shape[:2]} "
                f"(full shape {shape})"
            )
        dtype = getattr(self.kernel, "dtype", None)
        if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"kernel must have a floating dtype, got {dtype}")

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def init(cls, key, k: int, c_in: int, c_out: int, spatial, padding: str = "zeros",
             dtype=jnp.float32) -> "Conv2D":
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
    def in_shape(self) -> tuple[int, int, int]:
        return self.spatial + (int(self.kernel.shape[2]),)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return self.spatial + (int(self.kernel.shape[3]),)

    def _check(self, name: str, x, want: tuple[int, ...]) -> None:
        got = tuple(jnp.shape(x))
        if got != want:
            hint = (
                " (apply/transpose take ONE sample; use jax.vmap for a batch)"
                if got[1:] == want
                else ""
            )
            raise ValueError(
                f"Conv2D.{name} expects one sample of shape {want} (H, W, channels), got {got}{hint}"
            )

    # -- the map -----------------------------------------------------------------------------
    def _correlate(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        dtype = jnp.result_type(x, kernel)
        x = jnp.asarray(x, dtype)[None]
        kernel = jnp.asarray(kernel, dtype)
        if self.padding == "circular":
            p = (kernel.shape[0] - 1) // 2
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="wrap")
            pad = "VALID"
        else:
            pad = "SAME"
        out = jax.lax.conv_general_dilated(
            x, kernel, window_strides=(1, 1), padding=pad, dimension_numbers=_DIMS,
            precision=jax.lax.Precision.HIGHEST,
        )
        return out[0]

    def apply(self, z: jax.Array) -> jax.Array:
        """``W z`` for one sample: ``(H, W, c_in) -> (H, W, c_out)``."""
        self._check("apply", z, self.in_shape)
        return self._correlate(z, self.kernel)

    def transpose(self, s: jax.Array) -> jax.Array:
        r""":math:`W^\top s` for one sample: ``(H, W, c_out) -> (H, W, c_in)``; the same
        convolution with the kernel flipped in space and its channel axes swapped."""
        self._check("transpose", s, self.out_shape)
        flipped = jnp.swapaxes(self.kernel[::-1, ::-1], 2, 3)
        return self._correlate(s, flipped)

    # -- norms -------------------------------------------------------------------------------
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
        return _circular_norm(kernel, grid).astype(kernel.dtype)

    def power_iteration(self, num_steps: int = 100, key=None) -> jax.Array:
        r"""A lower bound on :math:`\|W\|`: :math:`\|W v\|` for the unit vector ``v`` reached by
        ``num_steps`` steps of power iteration on :math:`W^\top W` from a random start
        (``key``, default ``PRNGKey(0)``). It converges to :math:`\|W\|` from below, at a rate
        set by the gap between the two largest distinct singular values."""
        if key is None:
            key = jax.random.PRNGKey(0)
        dtype = jnp.asarray(self.kernel).dtype
        v = jax.random.normal(key, self.in_shape, dtype)
        v = v / jnp.linalg.norm(v)

        def step(_, v):
            w = self.transpose(self.apply(v))
            return w / jnp.linalg.norm(w)

        v = jax.lax.fori_loop(0, int(num_steps), step, v)
        return jnp.linalg.norm(self.apply(v))
