"""TrainConfig: typed, frozen, unknown keys and bad values refused with their names."""

import dataclasses
import json

import pytest

from optjax.config import ConfigError
from optjax.train.config import TrainConfig, load_file


def test_defaults_are_the_documented_main_job():
    config = TrainConfig()
    assert (config.dataset, config.family, config.kind) == ("digits", "opteq", "conv")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) for TrainConfig: 'epoch', 'lr'"):
        TrainConfig.from_dict({"epoch": 3, "lr": 0.1})


@pytest.mark.parametrize("key,value,match", [
    ("epochs", "3", r"epochs must be int, got '3'"),
    ("epochs", 2.5, r"epochs must be int"),
    ("certify", 1, r"certify must be bool or None"),
    ("learning_rate", True, r"learning_rate must be float"),
    ("data_dir", 3, r"data_dir must be str or None"),
    ("family", "resnet", r"family must be one of"),
    ("dataset", "imagenet", r"dataset must be one of"),
    ("rho", 1.5, r"rho must be a number in \(0.0, 1.0\]"),
    ("batch_size", 0, r"batch_size must be an integer >= 1"),
    ("schedule", "step", r"schedule must be one of"),
])
def test_bad_values_are_refused_with_the_field_name(key, value, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict({key: value})


def test_ints_are_accepted_as_floats_and_conv_deep_is_accepted():
    assert TrainConfig(learning_rate=1).learning_rate == 1
    assert TrainConfig(family="deep_opteq", kind="conv").kind == "conv"


def test_json_and_toml_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"epochs": 3, "width": 8}))
    (tmp_path / "a.toml").write_text('epochs = 3\nwidth = 8\nkind = "dense"\n')
    assert TrainConfig.from_dict(load_file(tmp_path / "a.json")).width == 8
    assert TrainConfig.from_dict(load_file(tmp_path / "a.toml")).kind == "dense"
    (tmp_path / "bad.json").write_text("{epochs: 3")
    with pytest.raises(ConfigError, match="bad.json is not valid JSON"):
        load_file(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a table of options"):
        load_file(tmp_path / "list.json")
    with pytest.raises(ConfigError, match="does not exist"):
        load_file(tmp_path / "missing.toml")
    (tmp_path / "a.yaml").write_text("epochs: 3")
    with pytest.raises(ConfigError, match="use a .json or .toml file"):
        load_file(tmp_path / "a.yaml")


def test_the_deep_chain_design_is_read_from_comma_lists():
    config = TrainConfig(family="deep_opteq", tier_channels="0.5,1,2", tier_strides="1,2",
                         activation="relu, relu,softplus", sweep="jacobi")
    assert config.tier_channel_multipliers == (0.5, 1.0, 2.0)
    assert config.tier_stride_values == (1, 2)
    assert config.activations == ("relu", "relu", "softplus")
    assert TrainConfig().activations == "relu"


@pytest.mark.parametrize("options,match", [
    (dict(family="deep_opteq", tier_channels="1;2"), r"tier_channels must be comma-separated"),
    (dict(family="deep_opteq", tier_channels="1,1,1"), r"one stride per coupling"),
    (dict(family="opteq", tier_channels="1,2"), r"the opteq family has one layer"),
    (dict(family="opteq", activation="relu,tanh"), r"one activation per tier is for the "
                                                   r"deep_opteq family"),
    (dict(family="deep_opteq", activation="relu,tanh,relu"), r"names 3 activations for a chain "
                                                             r"of 2 tiers"),
    (dict(family="deep_opteq", activation="relu,gelu"), r"gelu is not a proximal operator"),
    (dict(family="opteq", sweep="jacobi"), r"sweep orders the deep OptEq chain"),
    (dict(family="deep_opteq", sweep="red_black"), r"sweep must be one of jacobi, gauss_seidel"),
    (dict(kind="dense", head_grid=3), r"the dense classifier has no pooling"),
    (dict(kind="dense", stem_stride=1), r"the dense classifier has none"),
])
def test_bad_designs_are_refused_by_the_config(options, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**options)


def test_the_design_is_fixed_on_resume():
    from optjax.train.config import resume_changes

    saved = TrainConfig(family="deep_opteq").to_dict()
    for change in (dict(tier_channels="0.5,1"), dict(stem_channels=16), dict(head_grid=3)):
        field = next(iter(change))
        with pytest.raises(ConfigError, match=f"{field} .*the parameter layout"):
            resume_changes(saved, TrainConfig(family="deep_opteq", **change))
    # the sweep computes the same fixed point: it may change
    assert resume_changes(saved, TrainConfig(family="deep_opteq", sweep="jacobi")) == [
        "sweep 'gauss_seidel' -> 'jacobi'"]
    # a checkpoint written before the design options existed ran with their defaults
    old = {k: v for k, v in saved.items() if k not in ("tier_channels", "stem_channels")}
    assert resume_changes(old, TrainConfig(family="deep_opteq")) == []


def test_a_saved_record_means_the_model_that_wrote_it():
    """tier_strides' default was "2" (deep OptEq's multi-scale chain) and is now "1": a record
    without it was written by the multi-scale chain (before the option existed), and the records
    of every other model, written while "2" was the default, still describe today's model."""
    from optjax.train.config import resume_changes, saved_options

    deep = TrainConfig(family="deep_opteq", kind="conv")
    old = {k: v for k, v in deep.to_dict().items() if k != "tier_strides"}
    assert TrainConfig.from_dict(saved_options(old)).tier_stride_values == (2,)
    with pytest.raises(ConfigError, match=r"tier_strides \(checkpoint '2', now '1'"):
        resume_changes(old, deep)  # never restored into the one-grid chain
    assert resume_changes(old, deep.replace(tier_strides="2")) == []
    assert saved_options(deep.to_dict()) == deep.to_dict()  # today's records: as written
    for family, kind in (("opteq", "conv"), ("deq", "conv"), ("deep_opteq", "dense")):
        now = TrainConfig(family=family, kind=kind)
        then = {**now.to_dict(), "tier_strides": "2"}  # the default of its day
        assert TrainConfig.from_dict(saved_options(then)) == now
        assert resume_changes(then, now) == []
    assert saved_options(None) is None  # left for from_dict to refuse
