"""Module-level gradients: ``nnx.grad`` of every OptEq module equals central finite differences
(float64), with the norm control active (raw weights scaled far above ``rho``), at
initialisation and after optimiser steps. The finite differences see the whole module call
(normalisation, solve, output), so a gradient stopped anywhere on the path shows up here."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from optjax.nn import DeepOptEq, DeepOptEqConv, OptEqConv, OptEqDense

TIGHT = dict(tol=1e-12, max_steps=5000, param_dtype=jnp.float64)

MODULES = {
    "opteq_dense": (lambda: OptEqDense(5, 6, activation="softplus", rngs=nnx.Rngs(0), **TIGHT),
                    (3, 5)),
    "opteq_conv": (lambda: OptEqConv(2, 3, (5, 4), activation="softplus", rngs=nnx.Rngs(0),
                                     **TIGHT), (2, 5, 4, 2)),
    "deep_dense": (lambda: DeepOptEq(4, (6, 5), activation="tanh", rngs=nnx.Rngs(0), **TIGHT),
                   (3, 4)),
    "deep_conv": (lambda: DeepOptEqConv(2, (3, 4), (6, 4), (2,), activation="tanh",
                                        rngs=nnx.Rngs(0), **TIGHT), (2, 6, 4, 2)),
}


def _loss(module, x):
    out = module(x)
    return jnp.sum(jnp.sin(out)) + 0.1 * jnp.sum(out ** 2)


def _settle(module):
    """Evaluation mode holds the OptEq layers' power-iteration vector fixed (in training mode
    every call moves it), so the module is a function of its parameters alone, as finite
    differences need; the vector is left unconverged on purpose: the certified correction then
    differs from 1 and its gradient counts."""
    module.eval()


def _directional(graphdef, x):
    """``(value, value_and_grad)`` of the loss as functions of ``(params, rest)``, compiled once
    per module and reused at every point."""
    def loss(p, rest):
        return _loss(nnx.merge(graphdef, p, rest, copy=True), x)

    return jax.jit(loss), jax.jit(jax.grad(loss))


def _check(module, fns, h=1e-5):
    loss, grad = fns
    _, params, rest = nnx.split(module, nnx.Param, ...)
    grads = grad(params, rest)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    direction = jax.tree.unflatten(
        treedef, [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)])
    shifted = lambda s: jax.tree.map(lambda p, d: p + s * h * d, params, direction)  # noqa: E731
    numeric = (loss(shifted(1), rest) - loss(shifted(-1), rest)) / (2 * h)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads),
                                                  jax.tree.leaves(direction)))
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6)
    assert abs(float(analytic)) > 1e-3


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n in ("opteq_conv", "deep_conv") else n
                                  for n in MODULES])  # conv: ~10 s each, CI runs them
def test_gradients_match_finite_differences_with_the_norm_control_active(name):
    make, shape = MODULES[name]
    module = make()
    x = jax.random.normal(jax.random.PRNGKey(1), shape, jnp.float64)
    # Raw weights 3x larger: their norms exceed rho, so the normalisation rescales them.
    params = nnx.state(module, nnx.Param)
    nnx.update(module, jax.tree.map(lambda p: 3.0 * p, params))
    _settle(module)
    fns = _directional(nnx.graphdef(module), x)
    _check(module, fns)

    # After optimiser steps in training mode (the weights and the power-iteration vector move;
    # the normalisation stays active).
    optimizer = nnx.Optimizer(module, optax.adam(0.05), wrt=nnx.Param)
    module.train()

    @nnx.jit
    def step(module, optimizer):
        optimizer.update(module, nnx.grad(_loss)(module, x))

    for _ in range(3):
        step(module, optimizer)
    _settle(module)
    _check(module, fns)
