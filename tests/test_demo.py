"""The main job (`make run`) and the benchmark script run end to end on small sizes."""

import pathlib
import subprocess
import sys

from optjax import demo

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_checks_every_solver_against_the_independent_minimiser(capsys):
    assert demo.main(["--batch", "3", "--d", "12", "--n", "18"]) == 0
    out = capsys.readouterr().out
    for solver in demo.SOLVERS:
        assert out.count(solver) >= 3
    assert "FAILED" not in out
    assert "all equilibria agree" in out


def test_benchmark_quick_run_prints_its_tables():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "unit_layer.py"), "--quick"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    for needle in ("forward solver", "jaxopt.FixedPointIteration", "unrolled loop", "backward mode"):
        assert needle in out.stdout


def test_families_benchmark_quick_run_prints_every_family():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "families.py"), "--quick"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    for needle in ("opteq dense", "deq dense", "mondeq dense", "deep_opteq dense", "opteq conv",
                   "deq conv", "mondeq conv"):
        assert needle in out.stdout


def test_accelerator_check_quick_run_prints_both_precisions():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "accelerator_check.py"), "--quick"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    for needle in ("float32 (None: highest)", "backend default", "residual floor",
                   "Training step"):
        assert needle in out.stdout
