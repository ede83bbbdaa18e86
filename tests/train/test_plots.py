"""The plots of a run are written as PNG files; the certificate plot needs finite bounds."""

import numpy as np

from optjax.train.plots import save_plots

PNG = b"\x89PNG\r\n\x1a\n"


def _records():
    steps = [dict(event="step", step=s, epoch=(s - 1) // 4, loss=1.0 / s) for s in range(1, 9)]
    epochs = [dict(event="epoch", epoch=e, step=4 * (e + 1), loss=0.5 / (e + 1), accuracy=0.5,
                   test_loss=0.6, test_accuracy=0.5, steps=10.0, steps_max=12.0, test_steps=9.0)
              for e in range(2)]
    return steps + epochs


def test_all_four_plots(tmp_path):
    bounds = np.abs(np.random.default_rng(0).normal(size=100)) * 1e-6
    paths = save_plots(_records(), bounds, tmp_path)
    assert [p.name for p in paths] == ["loss.png", "accuracy.png", "forward_steps.png",
                                       "certificate.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG


def test_no_certificate_plot_without_finite_bounds(tmp_path):
    paths = save_plots(_records(), np.full(10, np.nan), tmp_path)
    assert "certificate.png" not in [p.name for p in paths] and len(paths) == 3


def test_no_forward_steps_plot_without_solver_statistics(tmp_path):
    nan = float("nan")
    records = [dict(r, steps=nan, steps_max=nan, test_steps=nan) for r in _records()]
    paths = save_plots(records, np.full(10, nan), tmp_path)
    assert [p.name for p in paths] == ["loss.png", "accuracy.png"]
