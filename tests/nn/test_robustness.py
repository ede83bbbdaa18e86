"""Certified robustness (optjax.nn.robustness, docs/maths.md section 9), checked against things
the bound does not compute:

* every equilibrium layer's bound is at least the exact Jacobian norm of x -> z*(x) (autodiff
  through the implicit solve, at several inputs), and a DEQ has none;
* a classifier's bound is at least every finite-difference ratio over random pairs of images;
* no attack changes a prediction within its certified radius: L2 PGD at 0.999 times each image's
  radius, and random perturbations on that sphere, leave every prediction as it was;
* certified accuracy <= PGD robust accuracy <= clean accuracy at every epsilon.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from optjax.nn import robustness
from optjax.nn.classifiers import ImplicitClassifier

SHAPE = (8, 8, 1)
CASES = [(f, k) for f in ("opteq", "deep_opteq", "mondeq", "explicit") for k in ("dense", "conv")]
SOLVE = dict(tol=1e-5, max_steps=500)


def _model(family, kind, width=6, seed=0):
    options = {} if family == "explicit" else SOLVE
    model = ImplicitClassifier(family, kind, SHAPE, 10, width, rngs=nnx.Rngs(seed), **options)
    model.eval()
    return model


def _images(n, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n,) + SHAPE), jnp.float32)


def _function(module):
    """module(x) as a pure function (a fresh copy per trace: its statistics may change)."""
    graphdef, state = nnx.split(module)
    return lambda x: nnx.merge(graphdef, state, copy=True)(x)


def _layer_input(model, x):
    if model.kind == "dense":
        return x.reshape(x.shape[0], -1)
    return nnx.relu(model.stem(x))


# The conv bounds are checked with the slow set (CI runs it): each exact Jacobian is a few
# hundred implicit backward solves (10-16 s each); the dense ones stay in the default suite.
_SLOW_CONV = {("deep_opteq", "conv"), ("mondeq", "conv"), ("opteq", "conv")}


@pytest.mark.parametrize("family,kind", [
    pytest.param(*c, marks=pytest.mark.slow) if c in _SLOW_CONV else c
    for c in CASES if c[0] != "explicit"])
def test_layer_bounds_cover_the_exact_jacobian(family, kind):
    model = _model(family, kind)
    inputs = _layer_input(model, _images(2))
    if family == "mondeq" and kind == "conv":
        bound = float(model.layer.input_lipschitz(inputs.shape[1:3]))
    else:
        bound = float(model.layer.input_lipschitz())
    layer = _function(model.layer)
    for v in inputs:
        jac = jax.jacrev(lambda u: layer(u[None])[0])(v)
        exact = float(np.linalg.norm(np.asarray(jac).reshape(jac.size // v.size, v.size), 2))
        assert 0 < exact <= bound * (1 + 1e-4), (exact, bound)


def test_a_deq_has_no_bound():
    model = _model("deq", "conv")
    assert robustness.lipschitz_bound(model) is None
    assert np.all(np.isnan(np.asarray(robustness.certified_radius(model, _images(4),
                                                                   jnp.zeros(4, jnp.int32)))))


@pytest.mark.parametrize("family,kind", CASES)
def test_the_classifier_bound_covers_finite_difference_ratios(family, kind):
    model = _model(family, kind)
    bound = float(robustness.lipschitz_bound(model))
    f = _function(model)
    rng = np.random.default_rng(2)
    x = _images(16, seed=3)
    for scale in (1e-1, 1.0, 3.0):
        delta = jnp.asarray(scale * rng.normal(size=x.shape), jnp.float32)
        ratio = np.linalg.norm(np.asarray(f(x + delta) - f(x)), axis=1) / \
            np.linalg.norm(np.asarray(delta).reshape(16, -1), axis=1)
        assert np.all(ratio <= bound * (1 + 1e-4)), (ratio.max(), bound)


@pytest.mark.parametrize("family", ["opteq", pytest.param("mondeq", marks=pytest.mark.slow)])
def test_no_attack_changes_a_prediction_within_its_certified_radius(family):
    # Images near the decision boundary have tiny radii; the check holds for every one.
    model = _model(family, "conv", width=4)
    x = 0.05 * _images(24, seed=4)  # small inputs: margins comparable to the bound's scale
    f = _function(model)
    y = jnp.argmax(f(x), axis=1)
    radius = robustness.certified_radius(model, x, y)
    assert np.all(np.asarray(radius) > 0)
    attacked = robustness.pgd_l2(model, x, y, 0.999 * radius, steps=100)
    moved = np.linalg.norm(np.asarray(attacked - x).reshape(24, -1), axis=1)
    assert np.all(moved <= np.asarray(radius) * (1 + 1e-5))
    np.testing.assert_array_equal(np.asarray(jnp.argmax(f(attacked), axis=1)), np.asarray(y))
    rng = np.random.default_rng(5)
    for _ in range(5):
        d = rng.normal(size=x.shape)
        d = d / np.linalg.norm(d.reshape(24, -1), axis=1).reshape(-1, 1, 1, 1)
        shifted = x + jnp.asarray(0.999 * np.asarray(radius).reshape(-1, 1, 1, 1) * d, x.dtype)
        np.testing.assert_array_equal(np.asarray(jnp.argmax(f(shifted), axis=1)), np.asarray(y))


@pytest.mark.slow  # ~10-17 s; the per-sample radius and attack tests stay in the default suite
def test_certified_accuracy_is_below_the_attacked_one_and_both_below_the_clean_one():
    model = _model("opteq", "conv", width=4)
    x = 0.05 * _images(32, seed=6)
    y = jnp.argmax(_function(model)(x), axis=1).at[:4].set(0)  # a few wrong labels
    out = robustness.robust_accuracy(model, x, y, [0.0, 1e-2], pgd_steps=5, batch_size=32)
    assert out["lipschitz"] > 0 and out["clean"] < 1
    for eps in (0.0, 1e-2):
        assert out["certified"][eps] <= out["pgd"][eps] <= out["clean"]
    assert out["certified"][0.0] == out["clean"]  # a correct prediction has radius >= 0
    deq = robustness.robust_accuracy(_model("deq", "conv", width=4), x, y, [1e-2], pgd_steps=1,
                                     batch_size=32)
    assert deq["certified"][1e-2] is None and deq["lipschitz"] is None


def test_the_explicit_cnn_gets_a_bound_and_the_same_report():
    # It has no mode-dependent layer, which nnx.view(use_running_average=...) refused.
    model = _model("explicit", "conv", width=4)
    x = 0.05 * _images(16, seed=7)
    y = jnp.argmax(_function(model)(x), axis=1)
    out = robustness.robust_accuracy(model, x, y, [0.0, 1e-2], pgd_steps=2, batch_size=16)
    assert out["clean"] == 1.0 and out["lipschitz"] > 0 and out["certified"][0.0] == 1.0
    assert out["certified"][1e-2] <= out["pgd"][1e-2] <= out["clean"]
