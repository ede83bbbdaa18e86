"""Configuration objects are frozen, typed, and reject unknown fields by name."""

import dataclasses

import jax
import pytest

import optjax
from optjax.engine import backward
from optjax import solvers


def test_from_dict_names_unknown_keys_and_lists_valid_ones():
    with pytest.raises(optjax.ConfigError, match=r"'size'.*valid options are: trace, history, ridge, mixing"):
        solvers.Anderson.from_dict({"history": 3, "size": 2})
    assert solvers.Anderson.from_dict({"history": 3}) == solvers.Anderson(history=3)


def test_configs_are_frozen_and_hashable():
    cfg = backward.GMRES(restart=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.restart = 5
    assert hash(cfg) == hash(backward.GMRES(restart=10))
    assert jax.jit(lambda x, c: x * c.restart, static_argnums=1)(2.0, cfg) == 20.0


@pytest.mark.parametrize("factory,match", [
    (lambda: backward.Phantom(steps=0), "Phantom.steps must be an integer >= 1"),
    (lambda: backward.Phantom(damping=0.0), r"Phantom.damping must be a number in \(0.0, 1.0\]"),
    (lambda: backward.ConjugateGradient(tol=-1.0), "tol must be a positive number or None"),
    (lambda: backward.GMRES(restart=2.5), "GMRES.restart must be an integer"),
    (lambda: solvers.Nesterov(restart="yes"), "restart must be a bool"),
    (lambda: solvers.get("anderson", ridge=-1.0), "ridge must be"),
    (lambda: backward.get("cg", restart=3), r"unknown option\(s\) for ConjugateGradient: 'restart'"),
    (lambda: solvers.Anderson().replace(histry=3), "unknown option"),
])
def test_invalid_values_are_refused_with_a_message(factory, match):
    with pytest.raises(optjax.ConfigError, match=match):
        factory()
