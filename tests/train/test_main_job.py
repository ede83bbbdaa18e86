"""The main job (`make run`): the default configuration reaches >= 97% test accuracy on digits.
About a minute on 2 cores: slow, run with --run-slow."""

import pytest

from optjax.train import TrainConfig

from tests.train._runs import run


@pytest.mark.slow
def test_the_default_run_reaches_97_percent_on_digits(tmp_path):
    result = run(TrainConfig(out_dir=str(tmp_path), progress=False, plots=False))
    assert result.ending == "finished"
    assert result.report.accuracy >= 0.97, result.report.lines()
    assert result.report.converged == 1.0 and result.report.certified == 1.0
