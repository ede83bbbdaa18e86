"""The main job (`make run`): the default configuration reaches >= 97% test accuracy on digits.
About a minute on 2 cores: slow, run with --run-slow."""

import warnings

import pytest

import optjax
from optjax.train import TrainConfig

from tests.train._runs import run


@pytest.mark.slow
def test_the_default_run_reaches_97_percent_on_digits(tmp_path):
    with warnings.catch_warnings():
        # the gradients are exact too: no backward solve stops above its tolerance, including
        # those of samples whose loss gradient is ~1e-20 once they are learnt
        warnings.simplefilter("error", optjax.EquilibriumWarning)
        result = run(TrainConfig(out_dir=str(tmp_path), progress=False, plots=False))
    assert result.ending == "finished"
    assert result.report.accuracy >= 0.97, result.report.lines()
    assert result.report.converged == 1.0 and result.report.certified == 1.0
    steps = [r for r in result.records if r.get("event") == "step"]
    assert len(steps) == 440 and all(r["backward_converged"] == 1.0 for r in steps)
