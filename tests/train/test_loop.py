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


def test_resume_refuses_changed_options(full_run, tmp_path):
    run(tiny_config(tmp_path, stop_after=3))
    with pytest.raises(ConfigError, match=r"learning_rate: checkpoint 0.01, now 0.02"):
        run(tiny_config(tmp_path, learning_rate=0.02), resume=True)


def test_an_existing_run_is_not_overwritten_by_accident(tmp_path):
    run(tiny_config(tmp_path, stop_after=2))
    with pytest.raises(ConfigError, match="already holds checkpoints.*--resume.*--overwrite"):
        run(tiny_config(tmp_path, stop_after=2))
    again = run(tiny_config(tmp_path, stop_after=1), overwrite=True)
    assert int(again.state.step) == 1
    assert [r["step"] for r in again.records] == [1]


def test_the_data_order_depends_on_seed_and_epoch_only():
    a = epoch_order(0, 3, 100)
    np.testing.assert_array_equal(a, epoch_order(0, 3, 100))
    assert not np.array_equal(a, epoch_order(0, 4, 100))
    assert not np.array_equal(a, epoch_order(1, 3, 100))
    np.testing.assert_array_equal(np.sort(a), np.arange(100))


def test_an_interrupted_run_saves_and_resumes_exactly(full_run, tmp_path, monkeypatch):
    # Ctrl-C arrives during the 6th step: the state of step 5 is saved, and resuming from it
    # finishes with the uninterrupted run's state.
    import optjax.train.loop as loop

    make = loop.make_train_step

    def interrupting(*args, **kwargs):
        step, calls = make(*args, **kwargs), []

        def wrapped(state, x, y):
            calls.append(1)
            if len(calls) == 6:
                raise KeyboardInterrupt
            return step(state, x, y)
        return wrapped

    monkeypatch.setattr(loop, "make_train_step", interrupting)
    first = run(tiny_config(tmp_path))
    assert first.ending == "interrupted" and int(first.state.step) == 5
    assert first.paths["checkpoint"] == tmp_path / "checkpoints" / "5"
    monkeypatch.setattr(loop, "make_train_step", make)
    resumed = run(tiny_config(tmp_path), resume=True)
    for a, b in zip(_leaves(full_run.state), _leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_non_finite_loss_stops_the_run_with_the_last_good_state_saved(tmp_path, monkeypatch):
    import optjax.train.loop as loop

    make = loop.make_train_step

    def poisoned(*args, **kwargs):
        step, calls = make(*args, **kwargs), []

        def wrapped(state, x, y):
            calls.append(1)
            new, metrics = step(state, x, y)
            if len(calls) == 4:
                metrics = dict(metrics, loss=jnp.nan, residual=jnp.nan)
            return new, metrics
        return wrapped

    monkeypatch.setattr(loop, "make_train_step", poisoned)
    with pytest.raises(loop.TrainingDiverged, match=r"the loss became nan at step 4 .*"
                       r"checkpoints/3\. Lower the learning rate"):
        run(tiny_config(tmp_path))
    assert (tmp_path / "checkpoints" / "3").is_dir()
    steps = read_metrics(tmp_path / "metrics.jsonl", "step")
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and np.isnan(steps[-1]["loss"])


def test_epoch_maxima_keep_nan():
    from optjax.train.loop import _accumulate
    sums = {}
    for value in (1.0, float("nan"), 2.0):
        _accumulate(sums, "residual", value)
    assert np.isnan(sums["residual"])
