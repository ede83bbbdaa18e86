"""Image classifiers for every family: matched parameter counts, and 30 training steps on the
digits data (scikit-learn's 8 x 8 digits) lower the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn.datasets import load_digits

import optjax
from optjax.nn.classifiers import ImplicitClassifier, build_matched, matched_width, param_count

CASES = [("opteq", "dense"), ("opteq", "conv"), ("deq", "dense"), ("deq", "conv"),
         ("mondeq", "dense"), ("mondeq", "conv"), ("deep_opteq", "dense"), ("deep_opteq", "conv"),
         ("explicit", "dense"), ("explicit", "conv")]
IMPLICIT_CASES = [case for case in CASES if case[0] != "explicit"]


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    return jnp.asarray(x), jnp.asarray(data.target)


# OptEq dense and the explicit models by default; the other implicit ones with --run-slow
# (compilation costs 7-10 s each; their gradients and train steps are checked elsewhere).
TRAIN_CASES = [pytest.param(*case, marks=() if case[0] == "explicit" or case == ("opteq", "dense")
                            else pytest.mark.slow) for case in CASES]


@pytest.mark.parametrize("family,kind", TRAIN_CASES)
def test_thirty_steps_on_digits_lower_the_loss(digits, family, kind):
    with jax.enable_x64(False):  # float32 training, as users run it
        _train(digits, family, kind)


def _train(digits, family, kind, steps=30):
    x_all, y_all = digits
    # A loose tolerance and step caps, forward and backward, as in training practice; the same
    # for every family.
    options = {} if family == "explicit" else dict(
        tol=1e-3, max_steps=50, backward=optjax.backward.GMRES(max_steps=30))
    model = build_matched(family, kind, (8, 8, 1), 10, 6000, rngs=nnx.Rngs(0), **options)
    count = param_count(model)
    assert 4500 <= count <= 6000
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    def loss_fn(model, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    @nnx.jit
    def step(model, opt, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        opt.update(model, grads)
        return loss

    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        idx = rng.choice(len(y_all), 64, replace=False)
        losses.append(float(step(model, opt, x_all[idx], y_all[idx])))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert (model.stats is None) == (family == "explicit")
    if model.stats is not None:  # the last training batch, summarised
        assert int(model.stats.samples[...]) == 64


def test_matched_counts_are_close_and_below_the_target():
    counts = [matched_width(f, k, (8, 8, 1), 10, 20000)[1] for f, k in CASES]
    assert max(counts) <= 20000
    assert min(counts) >= 0.9 * 20000


def test_bad_family_kind_and_input_are_refused():
    with pytest.raises(optjax.ConfigError, match="unknown family"):
        ImplicitClassifier("resnet", "dense", (8, 8, 1), 10, 8, rngs=nnx.Rngs(0))
    with pytest.raises(optjax.ConfigError, match="no solver options"):
        ImplicitClassifier("explicit", "conv", (8, 8, 1), 10, 8, rngs=nnx.Rngs(0), tol=1e-3)
    with pytest.raises(optjax.ConfigError, match="halves the grid .* must be even"):
        ImplicitClassifier("deep_opteq", "conv", (7, 7, 1), 10, 8, rngs=nnx.Rngs(0))
    model = ImplicitClassifier("opteq", "dense", (8, 8, 1), 10, 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"expected images of shape \(batch,\) \+ \(8, 8, 1\)"):
        model(jnp.ones((2, 8, 8)))
