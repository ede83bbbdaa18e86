"""Building the model of a configuration; solve statistics in one form for every family."""

import jax.numpy as jnp
import numpy as np
import pytest

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
