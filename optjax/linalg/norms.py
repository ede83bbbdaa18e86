r"""Spectral norms of convolutions, computed exactly.

**Spectral norm (circular).** A circular convolution is block-circulant, so the 2-D DFT
block-diagonalises it (Sedghi, Gupta & Long, *The singular values of convolutional layers*,
ICLR 2019): with :math:`h[d] = \sum_{a - p \equiv d} K[a]` the kernel wrapped onto the
:math:`H \times W` torus, :math:`\widehat{Wz}[f] = M_f\,\hat z[f]` with
:math:`M_f = \sum_d h[d]^\top e^{+2\pi i \langle f, d\rangle / (H, W)}`, a
:math:`c_{out} \times c_{in}` complex matrix. The DFT is unitary (up to a scale that cancels), so
the singular values of :math:`W` are those of all the :math:`M_f`, and
:math:`\|W\| = \max_f \|M_f\|_2` exactly. (:math:`M_f` is the DFT of :math:`h` at :math:`-f`; the
maximum over all frequencies is the same.) A real kernel has :math:`M_{-f} = \overline{M_f}`, so
half the spectrum (``rfft2``) suffices, and :math:`\|M_f\|_2^2` is computed as the top eigenvalue
of the smaller Gram matrix (several times cheaper than an SVD on CPU, and so is its derivative).

**Spectral norm (zeros).** Embed :math:`z` in the grid :math:`(H + k - 1) \times (W + k - 1)`
padded with zeros (an isometry :math:`E`), apply the circular convolution :math:`C` on that grid
and crop back (a coordinate projection :math:`P`): no wrapped index reaches the embedded data, so
:math:`W = P C E` and :math:`\|W\| \le \|C\|`, which is computed exactly as above: a certified
upper bound, tight up to boundary effects (it tends to :math:`\|W\|` as the image grows).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["wrapped_taps", "circular_norm", "one_by_one", "top_singular_value"]


def wrapped_taps(kernel: jax.Array, grid: tuple[int, ...], stride: int,
                 offset: int) -> jax.Array:
    r"""The kernel as a stride-1 correlation on the ``grid`` torus of polyphase components.

    Tap :math:`a` reads input index :math:`s i + t` with :math:`t = a - p`; writing
    :math:`t = s d + r` (:math:`0 \le r < s`) it reads component :math:`r` at :math:`i + d`. Returns
    ``h`` of shape ``grid + (s * s * c_in, c_out)`` with ``h[d mod grid, (r1, r2, c)] += K[a]``
    (``add``: taps that alias on a small torus are summed)."""
    k, _, c_in, c_out = kernel.shape
    t = np.arange(k) - offset
    r, d = np.mod(t, stride), np.floor_divide(t, stride)
    rows, cols = np.mod(d, grid[0]), np.mod(d, grid[1])
    h = jnp.zeros(grid + (stride, stride, c_in, c_out), kernel.dtype)
    h = h.at[rows[:, None], cols[None, :], r[:, None], r[None, :]].add(kernel)
    return h.reshape(grid + (stride * stride * c_in, c_out))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def circular_norm(kernel: jax.Array, grid: tuple[int, ...], stride: int = 1,
                   offset: int | None = None) -> jax.Array:
    """Exact ||C|| of the circular correlation with ``kernel`` (stride ``stride``, tap ``a`` at
    offset ``a - offset``) on the torus of ``grid * stride`` input pixels."""
    if offset is None:
        offset = (kernel.shape[0] - 1) // 2
    h = wrapped_taps(kernel, grid, stride, offset)
    # (gH, gW // 2 + 1, s^2 c_in, c_out): M_{-f}^T on half the spectrum, enough since
    # M_{-f} = conj(M_f) has the same singular values
    blocks = jnp.fft.rfft2(h, axes=(0, 1))
    return top_singular_value(blocks)


def one_by_one(fn: Callable[[jax.Array], jax.Array], matrices: jax.Array) -> jax.Array:
    """``fn`` on every matrix of a batch ``(..., m, n)``, one LAPACK call each (``lax.map``).

    jaxlib 0.10's CPU kernels split a batched call over the intra-op thread pool and block
    until it is done; two such calls running at once on a 2-thread pool (a 2-core machine)
    deadlock: seen here with batched ``eigvalsh``, the process idle forever. One matrix per
    call never splits."""
    flat = matrices.reshape((-1,) + matrices.shape[-2:])
    out = jax.lax.map(fn, flat)
    return out.reshape(matrices.shape[:-2] + out.shape[1:])


def top_singular_value(blocks: jax.Array) -> jax.Array:
    r""":math:`\max_f \|M_f\|_2` over a batch of (complex) matrices ``(..., m, n)``: the top
    eigenvalue of the smaller Gram matrix, square-rooted (``eigvalsh`` is several times
    cheaper than an SVD on CPU, and so is its derivative; the top eigenvalue is computed to
    rounding relative to itself), one matrix per LAPACK call (see :func:`one_by_one`)."""
    if blocks.shape[-1] <= blocks.shape[-2]:
        gram = jnp.einsum("...ji,...jk->...ik", jnp.conj(blocks), blocks, precision="highest")
    else:
        gram = jnp.einsum("...ij,...kj->...ik", blocks, jnp.conj(blocks), precision="highest")
    top = jnp.max(one_by_one(lambda g: jnp.linalg.eigvalsh(g)[-1:], gram))
    return jnp.sqrt(jnp.maximum(top, 0.0))
