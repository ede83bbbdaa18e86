"""Building the model of a configuration; solve statistics in one form for every family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
import chex

import optjax
from optjax.train.config import TrainConfig
from optjax.train.model import build_model, layer_options, solve_stats


@pytest.mark.parametrize("family,kind", [("opteq", "dense"), ("deq", "dense"),
                                         ("mondeq", "dense"), ("deep_opteq", "dense"),
                                         ("explicit", "conv")])
def test_every_family_reports_per_sample_stats(family, kind):
    config = TrainConfig(family=family, kind=kind, width=4, max_steps=20, tol=1e-3)
    model = build_model(config, (8, 8, 1), 10)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 8, 1)), jnp.float32)
    model.eval()  # OptEq layers certify in evaluation mode (certify=None, the default)
    logits, info = model(x, return_info=True)
    assert logits.shape == (3, 10)
    stats = solve_stats(info, 3)
    assert set(stats) == {"steps", "residual", "converged", "suboptimality_bound"}
    assert all(v.shape == (3,) for v in stats.values())
    values = {k: np.asarray(v) for k, v in stats.items()}
    if family == "explicit":  # it solves nothing: no statistics at all
        assert all(np.isnan(v).all() for v in values.values())
        return
    assert np.isfinite(values["steps"]).all() and np.isfinite(values["residual"]).all()
    certified = bool(np.all(np.isfinite(values["suboptimality_bound"])))
    assert certified == (family in ("opteq", "deep_opteq"))  # DEQ, monotone DEQ: +inf
    if family == "opteq":
        # the bound is the certificate's r^2 / (2 mu)
        cert = info.certificate
        np.testing.assert_allclose(stats["suboptimality_bound"],
                                   cert.residual**2 / (2 * cert.modulus), rtol=1e-5)


def test_layer_options_follow_the_config():
    options = layer_options(TrainConfig(backward="cg", backward_steps=7, backward_tol=1e-6,
                                        solver="anderson", rho=0.8))
    assert options["backward"] == optjax.backward.ConjugateGradient(max_steps=7, tol=1e-6)
    assert (options["solver"], options["rho"], options["tol"]) == ("anderson", 0.8, 1e-3)
    assert layer_options(TrainConfig(family="explicit")) == {}
    assert layer_options(TrainConfig(backward="phantom", backward_steps=4))["backward"] == \
        optjax.backward.Phantom(steps=4)


def test_the_anderson_ridge_reaches_the_anderson_solver_only():
    ridged = layer_options(TrainConfig(family="deq", anderson_ridge=1e-2))["solver"]
    assert ridged == optjax.solvers.Anderson(ridge=1e-2)
    assert "solver" not in layer_options(TrainConfig(family="opteq", anderson_ridge=1e-2))
    ridged = layer_options(TrainConfig(solver="anderson", anderson_ridge=1e-3))["solver"]
    assert ridged.ridge == 1e-3


@pytest.mark.parametrize("family,backward", [("opteq", "phantom"), ("mondeq", "auto"),
                                             ("explicit", "auto")])
def test_the_train_step_reports_the_backward_solve(family, backward):
    """The backward statistics reach the training metrics through the model (an
    optjax.backward_probe): the phantom gradient's fixed step count exactly, monDEQ's adjoint
    splitting (what "auto" picks for it) converged within its cap, NaN without a solve."""
    from optjax.train import sharding
    from optjax.train.step import init_state, make_optimizer, make_train_step, split_model

    config = TrainConfig(family=family, kind="dense", width=4, max_steps=60, tol=1e-3,
                         backward=backward, backward_steps=3 if backward == "phantom" else 40)
    if family == "mondeq":
        assert isinstance(layer_options(config)["backward"], optjax.backward.Splitting)
    parts, params, rest = split_model(build_model(config, (8, 8, 1), 10))
    tx, schedule = make_optimizer(config, 10)
    step = make_train_step(parts, tx, schedule, sharding.data_mesh())
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=4))
    _, metrics = step(init_state(params, rest, tx), x, y)
    got = {k: float(metrics[k]) for k in ("backward_steps", "backward_steps_max",
                                          "backward_converged")}
    if family == "explicit":
        assert all(np.isnan(v) for v in got.values()), got
    elif backward == "phantom":
        assert got["backward_steps"] == got["backward_steps_max"] == 3.0, got
    else:
        assert 1 <= got["backward_steps"] <= got["backward_steps_max"] <= 40, got
        assert got["backward_converged"] == 1.0, got


def test_the_jacobian_penalty_enters_the_deq_training_loss_only():
    """TrainConfig.jacobian_penalty: refused for the families whose Jacobian is bounded by
    construction; for a DEQ the training loss exceeds the one without the penalty (same
    parameters, same batch) by the weight times the layer's sown estimate, and evaluation is
    unchanged."""
    from optjax.config import ConfigError
    from optjax.train import sharding
    from optjax.train.step import (_forward, init_state, make_optimizer, make_train_step,
                                   split_model)

    for family in ("opteq", "deep_opteq", "mondeq", "explicit"):
        with pytest.raises(ConfigError, match="bounded by construction"):
            TrainConfig(family=family, jacobian_penalty=1.0)
    with pytest.raises(ConfigError, match="jacobian_penalty must be a weight >= 0"):
        TrainConfig(family="deq", jacobian_penalty=-1.0)

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=4))
    config = TrainConfig(family="deq", kind="dense", width=4, max_steps=30, jacobian_penalty=2.0)
    parts, params, rest = split_model(build_model(config, (8, 8, 1), 10))
    with_penalty = _forward(parts, params, rest, x, y, True, jacobian_penalty=2.0)[0]
    plain = split_model(build_model(config.replace(jacobian_penalty=0.0), (8, 8, 1), 10))
    chex.assert_trees_all_equal(plain[1], params)  # the same initial parameters
    without = _forward(*plain, x, y, True)[0]
    gap = np.asarray(with_penalty - without)
    assert np.all(gap > 0)
    layer = parts.merge(params, rest, training=True).layer
    inputs = x.reshape(4, -1)
    _, sown = nnx.capture(layer, nnx.Intermediate)(inputs)
    np.testing.assert_allclose(gap, 2.0 * np.asarray(jax.tree.leaves(sown)[0]), rtol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(_forward(parts, params, rest, x, y, False, jacobian_penalty=2.0)[0]),
        np.asarray(_forward(parts, params, rest, x, y, False)[0]))
    tx, schedule = make_optimizer(config, 10)
    step = make_train_step(parts, tx, schedule, sharding.data_mesh(), jacobian_penalty=2.0)
    state, metrics = step(init_state(params, rest, tx), x, y)
    assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1


def test_the_design_reaches_the_classifier():
    from flax import nnx
    from optjax.train.model import build_model

    config = TrainConfig(family="deep_opteq", width=4, tier_channels="0.5,1,2",
                         tier_strides="1,2", activation="relu,relu,softplus", sweep="jacobi",
                         stem_channels=8, head_grid=3)
    model = nnx.eval_shape(lambda: build_model(config, (28, 28, 1), 10))
    assert model.layer.channels == (2, 4, 8) and model.layer.strides == (1, 2)
    assert [a.name for a in model.layer.activations] == ["relu", "relu", "softplus"]
    assert model.layer.sweep == "jacobi" and model.stem.out_features == 8
    assert model.hidden.in_features == 3 * 3 * 8
