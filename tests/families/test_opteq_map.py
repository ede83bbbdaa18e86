"""The equilibrium map S = prox_R o T and its structured transposed Jacobian."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from optjax.convex import priors
from optjax.linalg.convolution import Conv2D
from optjax.families.opteq.map import EquilibriumMap, equilibrium_map
from tests._problems import random_problem


@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus", "sigmoid", "hardtanh"])
@pytest.mark.parametrize(
    "prior", [None, priors.L1(0.1), priors.Box(-0.2, 0.3), priors.Ball(0.5), priors.Quadratic(0.4)],
    ids=["none", "l1", "box", "ball", "quadratic"],
)
def test_structured_jacobian_transpose_equals_autodiff(activation, prior):
    problem, x = random_problem(0, activation=activation, prior=prior, bias_scale=1.0)
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=8))
    v = jnp.asarray(rng.normal(size=8))
    c = optjax.injection(problem, x)[0]
    feature = jnp.asarray(rng.normal(size=8))
    params, data = (problem.weight, problem.prior), (c, feature)
    s = EquilibriumMap(problem.activation)
    _, vjp = jax.vjp(lambda z: s(z, params, data), z)
    np.testing.assert_allclose(s.jacobian_transpose(z, params, data)(v), vjp(v)[0], atol=1e-13)


def test_structured_jacobian_transpose_for_a_convolution():
    rng = np.random.default_rng(2)
    weight = Conv2D(jnp.asarray(rng.normal(size=(3, 3, 2, 4)) * 0.2), (5, 6))
    act = optjax.activations.get("tanh")
    z, v = (jnp.asarray(rng.normal(size=(5, 6, 2))) for _ in range(2))
    c = jnp.asarray(rng.normal(size=(5, 6, 4)))
    params, data = (weight, None), (c, None)
    _, vjp = jax.vjp(lambda z: equilibrium_map(act, z, params, data), z)
    jt = EquilibriumMap(act).jacobian_transpose(z, params, data)
    np.testing.assert_allclose(jt(v), vjp(v)[0], atol=1e-13)


def test_operator_is_the_batched_map():
    problem, x = random_problem(3, prior=priors.L1(0.1))
    z = jnp.asarray(np.random.default_rng(4).normal(size=(x.shape[0], 8)))
    c = optjax.injection(problem, x)
    one = functools.partial(equilibrium_map, problem.activation)
    expected = jnp.stack([one(z[i], (problem.weight, problem.prior), (c[i], None))
                          for i in range(x.shape[0])])
    np.testing.assert_allclose(optjax.operator(problem, z, x), expected, atol=1e-14)
