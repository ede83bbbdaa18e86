"""The unit layers the solver benchmarks time: a dense OptEq layer with an input injection and
the convolutional layer of the Fashion-MNIST classifier (``unit_layer.py``,
``solver_loop_profile.py``)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import optjax
from optjax.linalg.convolution import Conv2D


def build(seed, batch, d, n, p, norm, activation):
    """A dense OptEq layer (W of shape n x d scaled to spectral norm ``norm``, input weight n x p,
    bias), a batch of inputs x and of targets."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, d))
    w *= norm / np.linalg.norm(w, 2)
    problem = optjax.OptEqProblem(
        jnp.asarray(w, jnp.float32), activation,
        input_weight=jnp.asarray(rng.normal(size=(n, p)) / np.sqrt(p), jnp.float32),
        bias=jnp.asarray(0.1 * rng.normal(size=n), jnp.float32),
    )
    x = jnp.asarray(rng.normal(size=(batch, p)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(batch, d)), jnp.float32)
    return problem, x, target


def conv_case(quick: bool):
    """The conv unit layer (3 x 3, 36 -> 36 channels on 14 x 14, batch 64, relu, ||W|| = 0.9;
    8 channels on 6 x 6, batch 8 if ``quick``), a batch of injections c and a title."""
    spatial, channels, batch = ((6, 6), 8, 8) if quick else ((14, 14), 36, 64)
    conv = Conv2D.init(jax.random.PRNGKey(0), 3, channels, channels, spatial)
    norm = optjax.linear_map.spectral_norm(conv)
    conv = dataclasses.replace(conv, kernel=0.9 * conv.kernel / norm)
    problem = optjax.OptEqProblem(conv, "relu")
    c = jnp.asarray(np.random.default_rng(1).normal(size=(batch,) + spatial + (channels,)),
                    jnp.float32)
    title = (f"conv relu, ||W|| = 0.9 (3 x 3, {channels} -> {channels} channels on "
             f"{spatial[0]} x {spatial[1]}, batch {batch})")
    return problem, c, title
