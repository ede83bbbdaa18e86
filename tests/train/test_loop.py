"""The training loop: it learns, logs what it promises, resumes exactly, refuses to clobber."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optjax.config import ConfigError
from optjax.train import read_metrics
from optjax.train.loop import epoch_order

from tests.train._runs import run, tiny_config


def _leaves(state):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state)]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """2 epochs of 8 steps, uninterrupted."""
    return run(tiny_config(tmp_path_factory.mktemp("full")))


def test_a_run_learns_and_logs_every_step_and_epoch(full_run):
    records = full_run.records
    steps = [r for r in records if r["event"] == "step"]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(1, 17))
    assert [r["epoch"] for r in epochs] == [0, 1]
    for key in ("loss", "accuracy", "steps", "residual", "converged", "test_accuracy"):
        assert np.isfinite(epochs[-1][key]), key
    # 16 small steps: clearly better than the start and than chance (10%)
    assert epochs[-1]["loss"] < 0.8 * epochs[0]["loss"]
    assert epochs[-1]["test_accuracy"] > 0.3
    assert full_run.ending == "finished"
    report = full_run.report
    assert report.num_samples == 64 and 0 <= report.accuracy <= 1
    # OptEq: every test sample certified; the bound is r^2 / (2 mu) with r <= tol
    assert report.certified == 1.0 and report.bound_max <= 1e-3**2 / (2 * 0.0975) * 1.01
    assert report.converged == 1.0 and report.residual_max <= 1e-3
    assert [r["event"] for r in read_metrics(full_run.paths["metrics"])][-1] == "eval"


def test_stopping_and_resuming_equals_the_uninterrupted_run(full_run, tmp_path):
    # Stop mid-epoch (step 5 of 8), resume to the end: the same state, bit for bit.
    first = run(tiny_config(tmp_path, stop_after=5))
    assert first.ending == "stopped" and int(first.state.step) == 5
    resumed = run(tiny_config(tmp_path), resume=True)
    assert int(resumed.state.step) == 16
    for a, b in zip(_leaves(full_run.state), _leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)
    # The log is the same as the uninterrupted run's (epoch 0 averages included steps 1-5).
    want = [r for r in full_run.records if r["event"] in ("step", "epoch")]
    got = [r for r in resumed.records if r["event"] in ("step", "epoch")]
    assert len(want) == len(got)
    for a, b in zip(want, got):
        for key in ("step", "loss", "accuracy", "steps", "test_accuracy"):
            if key in a:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-6, err_msg=key)


def test_resume_accepts_optimisation_and_solver_changes(full_run, tmp_path, capsys):
    run(tiny_config(tmp_path, stop_after=3))
    resumed = run(tiny_config(tmp_path, learning_rate=0.02, grad_clip=None, tol=5e-4,
                              stop_after=6), resume=True)
    assert int(resumed.state.step) == 6
    assert set(resumed.changed) == {"learning_rate 0.01 -> 0.02", "grad_clip 1.0 -> None",
                                    "tol 0.001 -> 0.0005"}
    assert "no longer identical to an uninterrupted one" in capsys.readouterr().err
    (logged,) = [r for r in resumed.records if r["event"] == "resume"]
    assert logged["step"] == 3 and set(logged["changed"]) == set(resumed.changed)
    # the new peak rate is in force from step 4 on: twice the uninterrupted run's schedule
    want = {r["step"]: 2 * r["learning_rate"] for r in full_run.records if r["event"] == "step"}
    for r in resumed.records:
        if r["event"] == "step" and r["step"] > 3:
            np.testing.assert_allclose(r["learning_rate"], want[r["step"]], rtol=1e-6)


@pytest.mark.parametrize("change,reason", [
    (dict(width=24), r"width \(checkpoint 16, now 24: it fixes the parameter layout\)"),
    (dict(batch_size=64), r"batch_size \(checkpoint 32, now 64: it fixes the number of steps "
                          r"per epoch"),
    (dict(activation="tanh"), r"activation \(checkpoint 'relu', now 'tanh'"),
])
def test_resume_refuses_options_that_fix_the_model_or_the_data_order(full_run, change, reason):
    # refused before anything is loaded or written
    with pytest.raises(ConfigError, match=reason + r".*Options that may change when resuming: "
                                                   r".*--learning-rate"):
        run(tiny_config(full_run.config.out_dir, **change), resume=True)


@pytest.mark.slow  # three runs, ~8 s
def test_an_existing_run_is_not_overwritten_by_accident(tmp_path):
    first = run(tiny_config(tmp_path, stop_after=2))
    with pytest.raises(ConfigError, match="already holds checkpoints.*--resume.*--overwrite"):
        run(tiny_config(tmp_path, stop_after=2))
    again = run(tiny_config(tmp_path, stop_after=1), overwrite=True)
    assert int(again.state.step) == 1
    assert [r["step"] for r in again.records if r["event"] == "step"] == [1]
    assert again.records[0]["run_id"] == again.run_id != first.run_id  # a new run


def test_the_data_order_depends_on_seed_and_epoch_only():
    a = epoch_order(0, 3, 100)
    np.testing.assert_array_equal(a, epoch_order(0, 3, 100))
    assert not np.array_equal(a, epoch_order(0, 4, 100))
    assert not np.array_equal(a, epoch_order(1, 3, 100))
    np.testing.assert_array_equal(np.sort(a), np.arange(100))


@pytest.mark.slow  # end to end, ~10-15 s: CI runs it with the slow checks
def test_an_interrupted_run_saves_and_resumes_exactly(full_run, tmp_path, monkeypatch):
    # Ctrl-C arrives during the 6th step: the state of step 5 is saved, and resuming from it
    # finishes with the uninterrupted run's state.
    import optjax.train.run as setup  # prepare() builds the steps there

    make = setup.make_train_step

    def interrupting(*args, **kwargs):
        step, calls = make(*args, **kwargs), []

        def wrapped(state, x, y):
            calls.append(1)
            if len(calls) == 6:
                raise KeyboardInterrupt
            return step(state, x, y)
        return wrapped

    monkeypatch.setattr(setup, "make_train_step", interrupting)
    first = run(tiny_config(tmp_path))
    assert first.ending == "interrupted" and int(first.state.step) == 5
    assert first.paths["checkpoint"] == tmp_path / "checkpoints" / "5"
    monkeypatch.setattr(setup, "make_train_step", make)
    resumed = run(tiny_config(tmp_path), resume=True)
    for a, b in zip(_leaves(full_run.state), _leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # end to end, ~10-15 s: CI runs it with the slow checks
def test_a_non_finite_loss_stops_the_run_and_the_advice_works(tmp_path, monkeypatch, capsys):
    import optjax.train.loop as loop
    import optjax.train.run as setup  # prepare() builds the steps there

    make = setup.make_train_step

    def poisoned(*args, **kwargs):
        step, calls = make(*args, **kwargs), []

        def wrapped(state, x, y):
            calls.append(1)
            new, metrics = step(state, x, y)
            if len(calls) == 4:
                metrics = dict(metrics, loss=jnp.nan, residual=jnp.nan)
            return new, metrics
        return wrapped

    monkeypatch.setattr(setup, "make_train_step", poisoned)
    with pytest.raises(loop.TrainingDiverged, match=r"the loss became nan at step 4 .*"
                       r"checkpoints/3\. Lower --learning-rate or --grad-clip") as diverged:
        run(tiny_config(tmp_path))
    assert (tmp_path / "checkpoints" / "3").is_dir()
    steps = read_metrics(tmp_path / "metrics.jsonl", "step")
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and np.isnan(steps[-1]["loss"])
    # The message names what --resume accepts, and resuming with the advice works.
    accepted, refused = str(diverged.value).split("--resume accepts new values of ")[1] \
        .split("not of ")
    for flag in ("--learning-rate", "--grad-clip", "--max-steps", "--solver", "--anderson-ridge",
                 "--tol", "--weight-decay", "--backward"):
        assert f"{flag} " in accepted
    assert refused.startswith("--dataset --family --kind --width --head-units --activation "
                              "--stem-channels --stem-stride --head-grid --tier-channels "
                              "--tier-strides --jacobian-penalty --train-subset --batch-size "
                              "--seed)")
    resumed = run(tiny_config(tmp_path, learning_rate=0.005, grad_clip=0.5, stop_after=5),
                  resume=True)
    assert int(resumed.state.step) == 5 and resumed.ending == "stopped"
    assert "learning_rate 0.01 -> 0.005" in resumed.changed
    assert [r["step"] for r in resumed.records if r["event"] == "step"] == [1, 2, 3, 4, 5]


@pytest.mark.slow  # ~14 s; the plain stop-and-resume test stays in the default suite
def test_stop_and_resume_with_augmentation_is_exact(full_run, tmp_path):
    # 5 steps (no epoch end, so no evaluation): in one go, and as 2 + 3 after a resume.
    augmented = dict(augment_crop=1, augment_flip=True)
    whole = run(tiny_config(tmp_path / "whole", stop_after=5, **augmented))
    first = run(tiny_config(tmp_path / "parts", stop_after=2, **augmented))
    assert first.ending == "stopped"
    resumed = run(tiny_config(tmp_path / "parts", stop_after=5, **augmented), resume=True)
    assert resumed.changed == () and int(resumed.state.step) == 5
    for a, b in zip(_leaves(whole.state), _leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)
    # the augmentation did change the inputs: same initialisation and batch, another loss
    loss = lambda result: [r["loss"] for r in result.records if r["event"] == "step"][0]  # noqa
    assert loss(whole) != loss(full_run)
    # and none at evaluation: the augmented run evaluates as a run without augmentation
    from optjax.train.evaluate import evaluate_split
    data = whole.run.data
    with jax.enable_x64(False):
        outputs = [evaluate_split(r.run.eval_step, whole.state, data.x_test, data.y_test, 64,
                                  r.run.mesh) for r in (whole, full_run)]
    for key in ("loss", "prediction"):
        np.testing.assert_array_equal(outputs[0][key], outputs[1][key])


def test_epoch_maxima_keep_nan():
    from optjax.train.loop import _accumulate
    sums = {}
    for value in (1.0, float("nan"), 2.0):
        _accumulate(sums, "residual", value)
    assert np.isnan(sums["residual"])
