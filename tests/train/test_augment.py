"""Augmentation: a function of (seed, step, position) only; crops and flips checked pixel by
pixel against a numpy reference built from the drawn offsets and flips."""

import jax
import numpy as np
import pytest

from optjax.train.augment import Augmentation

BATCH, H, W, C = 64, 6, 5, 2


@pytest.fixture(scope="module")
def images():
    # Distinct, nonzero pixels: a crop offset or a flip cannot go unnoticed.
    return np.arange(1, BATCH * H * W * C + 1, dtype=np.float32).reshape(BATCH, H, W, C)


def _reference(x, offsets, flips, crop):
    """Pad with zeros, take the window at each offset, mirror the flipped ones, in numpy."""
    out = np.empty_like(x)
    padded = np.pad(x, ((0, 0), (crop, crop), (crop, crop), (0, 0)))
    for i, ((dy, dx), flipped) in enumerate(zip(offsets, flips)):
        window = padded[i, dy:dy + H, dx:dx + W]
        out[i] = window[:, ::-1] if flipped else window
    return out


def test_crop_and_flip_are_what_they_claim(images):
    augment = Augmentation(seed=3, crop=2, flip=True)
    got = np.asarray(jax.jit(augment)(images, 7))
    offsets, flips = map(np.asarray, augment.params(7, BATCH))
    np.testing.assert_array_equal(got, _reference(images, offsets, flips, 2))
    # offsets cover {0, ..., 4} on both axes, flips both ways: the draws are not degenerate
    assert set(offsets.ravel()) == set(range(5)) and 0 < flips.sum() < BATCH
    # zero padding shows where the window leaves the image
    shifted = np.flatnonzero((offsets != 2).any(axis=1))[0]
    assert (got[shifted] == 0).any() and not (images[shifted] == 0).any()


def test_flip_alone_and_crop_alone(images):
    flip_only = Augmentation(seed=0, flip=True)
    offsets, flips = map(np.asarray, flip_only.params(1, BATCH))
    assert not offsets.any()
    np.testing.assert_array_equal(np.asarray(flip_only(images, 1)),
                                  _reference(images, offsets, flips, 0))
    crop_only = Augmentation(seed=0, crop=1)
    offsets, flips = map(np.asarray, crop_only.params(1, BATCH))
    assert not flips.any()
    np.testing.assert_array_equal(np.asarray(crop_only(images, 1)),
                                  _reference(images, offsets, flips, 1))
    assert Augmentation(seed=0)(images, 1) is images  # off: the batch itself


def test_same_seed_and_step_same_batch_other_steps_or_seeds_differ(images):
    augment = Augmentation(seed=5, crop=1, flip=True)
    a = np.asarray(augment(images, 10))
    np.testing.assert_array_equal(a, np.asarray(augment(images, 10)))
    np.testing.assert_array_equal(a, np.asarray(jax.jit(augment)(images, np.int32(10))))
    assert not np.array_equal(a, np.asarray(augment(images, 11)))
    assert not np.array_equal(a, np.asarray(Augmentation(seed=6, crop=1, flip=True)(images, 10)))
    # a sample's draw depends on its position, not on the batch size
    first = [np.asarray(p) for p in augment.params(10, 8)]
    for whole, part in zip(augment.params(10, BATCH), first):
        np.testing.assert_array_equal(np.asarray(whole)[:8], part)
