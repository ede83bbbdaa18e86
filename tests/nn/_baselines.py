"""Shared by the tests of the baseline layers (tests/nn/test_deq.py, tests/nn/test_mondeq.py):
float64 settings, inputs, and a compiled call that returns the per-sample SolveInfo."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

F64 = dict(param_dtype=jnp.float64, tol=1e-12, max_steps=5000)


@nnx.jit
def call(layer, x, init=None):
    """``(z, info)``: the equilibria and the per-sample :class:`optjax.SolveInfo`."""
    return layer(x, init=init, return_info=True)


def normal(seed, shape, dtype=jnp.float64, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(seed), shape, dtype)


def f32(x):
    return jnp.asarray(np.asarray(x), np.float32)


def dense_input(batch=3, n=4, seed=1):
    return normal(seed, (batch, n), scale=0.5)


def conv_input(batch=2, hw=(4, 5), channels=2, seed=1):
    return normal(seed, (batch,) + hw + (channels,), scale=0.5)


def width(layer):
    return layer.features if hasattr(layer, "features") else layer.channels
