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
from optjax.nn.classifiers import (ImplicitClassifier, build_matched, matched_size, matched_width,
                                   param_count)

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
    with pytest.raises(optjax.ConfigError, match="7 x 7 is not divisible by 2"):
        ImplicitClassifier("deep_opteq", "conv", (7, 7, 1), 10, 8, rngs=nnx.Rngs(0),
                           tier_strides=(2,))
    model = ImplicitClassifier("opteq", "dense", (8, 8, 1), 10, 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"expected images of shape \(batch,\) \+ \(8, 8, 1\)"):
        model(jnp.ones((2, 8, 8)))


# The parameter counts of width-8 classifiers recorded from the code before the design options
# existed (1867ea0): the defaults must build exactly the models they always built.
@pytest.mark.parametrize("family,kind,shape,count", [
    ("opteq", "conv", (28, 28, 1), 19002), ("deep_opteq", "conv", (28, 28, 1), 16122),
    ("explicit", "conv", (28, 28, 1), 16122), ("mondeq", "conv", (28, 28, 1), 16690),
    ("opteq", "conv", (30, 30, 3), 19578), ("deep_opteq", "conv", (8, 8, 1), 7674),
    ("deep_opteq", "dense", (8, 8, 1), 682),
])
def test_default_design_keeps_the_parameter_layout(family, kind, shape, count):
    model = nnx.eval_shape(lambda: ImplicitClassifier(family, kind, shape, 10, 8,
                                                      rngs=nnx.Rngs(0)))
    assert param_count(model) == count


def _deep(**design):
    return ImplicitClassifier("deep_opteq", "conv", (28, 28, 1), 10, 4, rngs=nnx.Rngs(0),
                              **design)


@pytest.mark.slow  # ~9 s of compilation; CI runs the slow set
def test_deep_tiers_follow_the_channel_multipliers_and_strides():
    images = jax.random.normal(jax.random.PRNGKey(1), (2, 28, 28, 1))
    three = _deep(tier_channels=(0.5, 1, 2), tier_strides=(1, 2))
    stem = nnx.relu(three.stem(images))
    states, info = three.layer.states(stem, return_info=True)
    assert [s.shape for s in states] == [(2, 14, 14, 2), (2, 14, 14, 4), (2, 7, 7, 8)]
    assert bool(info.converged.all())
    # the equilibrium equations of the chain, tier by tier (an independent restatement of
    # s_l = relu(A_(l-1) s_(l-1) + A_l^T s_(l+1) + b_l), the couplings as the solve used them)
    a1, a2 = (jax.vmap(a.apply) for a in three.layer.used_couplings())
    b = [three.layer.injection(stem)] + [bias.get_value() for bias in three.layer.biases]
    s1, s2, s3 = states
    feedback1 = jax.vjp(a1, s1)[1](s2)[0]  # A_1^T s_2 by autodiff, not the map's own adjoint
    feedback2 = jax.vjp(a2, s2)[1](s3)[0]
    residuals = [s1 - nnx.relu(b[0] + feedback1), s2 - nnx.relu(a1(s1) + b[1] + feedback2),
                 s3 - nnx.relu(a2(s2) + b[2])]
    scale = max(float(jnp.abs(s).max()) for s in states)
    assert max(float(jnp.abs(r).max()) for r in residuals) <= 1e-2 * scale
    assert three(images).shape == (2, 10) and three.pool == 1


@pytest.mark.parametrize("design,pool", [({}, 2), (dict(head_grid=3), 4)] + [
    pytest.param(*case, marks=pytest.mark.slow) for case in (  # a compilation each
        (dict(tier_strides=(2,)), 1),
        (dict(stem_stride=1, tier_channels=(0.5, 1, 2), tier_strides=(2, 2)), 1),
        (dict(stem_stride=1), 4), (dict(head_grid=1), 14))])
def test_the_head_sees_its_grid_whatever_the_stem_and_chain(design, pool):
    model = _deep(**design)
    side = design.get("head_grid", 7)
    assert model.pool == pool
    assert model.hidden.in_features == side * side * model.layer.channels[-1]
    assert model(jnp.zeros((1, 28, 28, 1))).shape == (1, 10)


@pytest.mark.slow  # ~9 s of compilation; CI runs the slow set
def test_the_stem_options_reach_every_conv_family():
    for family in ("opteq", "deq", "mondeq", "explicit"):
        model = ImplicitClassifier(family, "conv", (28, 28, 1), 10, 4, rngs=nnx.Rngs(0),
                                   stem_channels=8, stem_stride=1)
        assert model.stem.out_features == 8 and model.stem.strides == 1
        assert model.pool == 4  # 28 x 28 pooled to the head's 7 x 7
        assert model(jnp.zeros((1, 28, 28, 1))).shape == (1, 10)


@pytest.mark.parametrize("family,kind,design,match", [
    ("opteq", "conv", dict(tier_channels=(1, 2)), "the opteq family has one layer"),
    ("deep_opteq", "conv", dict(tier_channels=(1, 1, 1)), "one stride per coupling"),
    ("deep_opteq", "conv", dict(tier_strides=(4,)), "14 x 14 is not divisible by 4"),
    ("deep_opteq", "conv", dict(tier_channels=(1, -1)), "positive multipliers"),
    ("deep_opteq", "dense", dict(tier_strides=(2,)), "the dense deep OptEq chain has none"),
    ("opteq", "dense", dict(stem_channels=8), "the dense classifier has none"),
    ("opteq", "conv", dict(stem_stride=0), "stem_stride must be a positive int"),
    ("opteq", "conv", dict(head_grid=5), "cannot be pooled to the head's 5 x 5 grid"),
    ("opteq", "dense", dict(head_grid=2), "the dense classifier has no pooling"),
])
def test_designs_the_family_cannot_have_are_refused(family, kind, design, match):
    with pytest.raises(optjax.ConfigError, match=match):
        ImplicitClassifier(family, kind, (28, 28, 1), 10, 4, rngs=nnx.Rngs(0), **design)


@pytest.mark.parametrize("design", [dict(tier_channels=(0.5, 1, 2), tier_strides=(1, 2)),
                                    dict(head_grid=3), dict(stem_channels=16)])
def test_matched_size_matches_designed_chains_within_two_percent(design):
    width, head, count = matched_size("deep_opteq", "conv", (28, 28, 1), 10, 15000, **design)
    assert abs(count - 15000) <= 0.02 * 15000
    model = nnx.eval_shape(lambda: ImplicitClassifier(
        "deep_opteq", "conv", (28, 28, 1), 10, width, rngs=nnx.Rngs(0), head_units=head,
        **design))
    assert param_count(model) == count
