"""Data augmentation of training batches, on device inside the jitted step.

Sample ``i`` of the batch of step ``s`` (steps done before it, counted from 0) draws from the key
``fold_in(fold_in(key(seed), s), i)``:

* random crop (``crop = p > 0``): the image is padded with ``p`` zeros on each side of both
  spatial axes (zeros of the standardised image, i.e. the training set's mean) and the window
  of the original size at offset ``(dy, dx)``, each uniform in ``{0, ..., 2p}``, is kept:
  ``out[h, w] = padded[h + dy, w + dx]``;
* horizontal flip (``flip``): with probability 1/2, ``out[h, w] = in[h, W - 1 - w]`` (after the
  crop). Meant for natural images; it is wrong for digits and letters.

So the augmented batch is a function of ``(seed, step, batch)`` only: a resumed run draws the
same augmentation as an uninterrupted one, bit for bit, on any number of devices.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = ["Augmentation"]


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random crop with zero padding of ``crop`` pixels and/or horizontal ``flip``, drawn from
    ``(seed, step, position in the batch)``; see the module docstring."""

    seed: int
    crop: int = 0
    flip: bool = False

    @property
    def active(self) -> bool:
        return bool(self.crop or self.flip)

    def params(self, step: ArrayLike, batch: int) -> tuple[jax.Array, jax.Array]:
        """``(offsets, flips)`` of a batch of ``batch`` samples at ``step``: int32 crop offsets
        ``(batch, 2)`` in ``[0, 2 crop]`` (row, column; zeros without crop) and booleans
        ``(batch,)`` (all False without flip)."""
        base = jax.random.fold_in(jax.random.key(self.seed), step)

        def draw(i: jax.Array) -> tuple[jax.Array, jax.Array]:
            key_crop, key_flip = jax.random.split(jax.random.fold_in(base, i))
            offset = jax.random.randint(key_crop, (2,), 0, 2 * self.crop + 1, jnp.int32)
            flipped = jax.random.bernoulli(key_flip) if self.flip else jnp.zeros((), bool)
            return offset, flipped

        return jax.vmap(draw)(jnp.arange(batch))

    def __call__(self, x: jax.Array, step: ArrayLike) -> jax.Array:
        """The augmented batch ``x`` (``(B, H, W, C)``) of training step ``step``."""
        if not self.active:
            return x
        offsets, flips = self.params(step, x.shape[0])
        pad = self.crop

        def one(image: jax.Array, offset: jax.Array, flipped: jax.Array) -> jax.Array:
            if pad:
                padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
                start = (offset[0], offset[1], jnp.zeros((), offset.dtype))
                image = jax.lax.dynamic_slice(padded, start, image.shape)
            if self.flip:
                image = jnp.where(flipped, image[:, ::-1, :], image)
            return image

        return jax.vmap(one)(x, offsets, flips)
