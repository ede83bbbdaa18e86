"""The demo and the benchmark scripts run end to end on small sizes (marked slow: they check the
scripts, not the library; CI runs them with the slow checks); the Fashion-MNIST report on rows
written here (quick)."""

import json
import pathlib
import subprocess
import sys

import pytest

from optjax import demo

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # end to end, ~10-20 s: CI runs it with the slow checks
def test_demo_checks_every_solver_against_the_independent_minimiser(capsys):
    assert demo.main(["--batch", "3", "--d", "12", "--n", "18"]) == 0
    out = capsys.readouterr().out
    for solver in demo.SOLVERS:
        assert out.count(solver) >= 3
    assert "FAILED" not in out
    assert "all equilibria agree" in out


def _script(name, *args, timeout=300):
    """Run ``benchmarks/<name>`` with ``args``; its stdout, after checking it exited with 0."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args],
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.slow
def test_benchmark_quick_run_prints_its_tables():
    stdout = _script("unit_layer.py", "--quick")
    for needle in ("forward solver", "jaxopt.FixedPointIteration", "unrolled loop", "backward mode",
                   "(F, S) evaluation", "per eval / (F, S)"):
        assert needle in stdout


@pytest.mark.slow
def test_solver_loop_profile_quick_run_splits_each_step_between_t_and_the_solver():
    """The op-level profile's smoke run: every solver has a row whose parts add up to its
    total, and Anderson's history products (XLA dots) are found among the solver's ops."""
    stdout = _script("solver_loop_profile.py", "--quick")
    rows = {line.split("|")[1].strip(): [float(c) for c in line.split("|")[2:5]]
            for line in stdout.splitlines() if line.startswith("| ") and "solver" not in line
            and line.count("|") == 6 and not line.startswith("| op")}
    assert len(rows) == 4, stdout
    for total, t_part, rest in rows.values():
        assert t_part > 0.5 and rest > 0 and abs(total - t_part - rest) <= 0.011, stdout
    anderson = stdout.split("anderson (m=5): the solver's ops")[1].split("\n\n")[1]
    assert "| dot" in anderson, stdout


@pytest.mark.slow
def test_backward_memory_quick_run_is_flat_where_unrolling_grows():
    """The memory benchmark's smoke run: the implicit backward's compiled memory does not grow
    from 3 to 10 forward steps, the unrolled one does (its tables' own numbers)."""
    stdout = _script("backward_memory.py", "--quick")
    rows = [line.split("|")[1:4] for line in stdout.splitlines()
            if line.startswith("| 3 |") or line.startswith("| 10 |")]
    assert len(rows) == 4, stdout
    for short, long in (rows[0:2], rows[2:4]):
        assert float(long[1]) == float(short[1]) and float(long[2]) > float(short[2]), stdout


@pytest.mark.slow
def test_families_benchmark_quick_run_prints_every_family():
    stdout = _script("families.py", "--quick")
    for needle in ("opteq dense", "deq dense", "mondeq dense", "deep_opteq dense", "opteq conv",
                   "deq conv", "mondeq conv"):
        assert needle in stdout


@pytest.mark.slow
def test_accelerator_check_quick_run_prints_both_precisions():
    stdout = _script("accelerator_check.py", "--quick")
    for needle in ("float32 (None: highest)", "backend default", "residual floor",
                   "Training step"):
        assert needle in stdout


@pytest.mark.slow
def test_fashion_mnist_benchmark_quick_run_writes_its_rows(tmp_path):
    if not pathlib.Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    results = tmp_path / "rows.json"
    out = tmp_path / "out"
    _script("fashion_mnist.py", "--kind", "conv", "--quick", "--families", "opteq,explicit,mondeq",
            "--results", str(results), "--out", str(out), timeout=900)
    rows = json.loads(results.read_text())
    assert [r["family"] for r in rows] == ["opteq", "explicit", "mondeq"]
    for row in rows:
        for key in ("family", "kind", "params", "seed", "epochs", "train_size",
                    "test_accuracy", "epoch_seconds", "forward_steps_mean", "converged_fraction"):
            assert key in row
        assert 0.0 <= row["test_accuracy"] <= 1.0
        implicit = row["family"] != "explicit"
        assert (row["train_backward_steps_last_epoch"] is not None) == implicit
    counts = [r["params"] for r in rows]
    assert (max(counts) - min(counts)) / max(counts) < 0.02  # matched within 2%
    # a row recorded without backward statistics gets them from its final checkpoint
    rows[0]["train_backward_steps_last_epoch"] = None
    results.write_text(json.dumps(rows))
    stdout = _script("fashion_mnist.py", "--kind", "conv", "--measure-backward",
                     "--measure-batches", "2", "--results", str(results), "--out", str(out))
    at_end = json.loads(results.read_text())[0]["backward_at_end"]
    assert at_end["batches"] == 2 and 1 <= at_end["steps_mean"] <= 20, stdout
    # monDEQ's solver designs side by side on the trained checkpoint
    stdout = _script("mondeq_solver.py", "--run", str(out / "conv" / "mondeq_seed0"),
                     "--batches", "1", "--reps", "1")
    for design in ("alpha=1, gmres", "default, splitting"):
        assert f"| {design} |" in stdout
    stdout = _script("mondeq_solver.py", "--run", str(out / "conv" / "mondeq_seed0"),
                     "--batches", "1", "--sweep", "default,1")
    assert "(default) |" in stdout and "| 1.000 |" in stdout, stdout


def _row(family, seed, accuracy, epochs=10):
    return dict(family=family, kind="conv", width=8, params=1000, seed=seed, epochs=epochs,
                train_size=60000, test_accuracy=accuracy, epoch_seconds=10.0,
                forward_steps_mean=None if family == "explicit" else 5.0,
                forward_steps_max=None if family == "explicit" else 7.0,
                converged_fraction=None if family == "explicit" else 1.0, bound_max=None)


def test_fashion_mnist_report_summarises_seeds_as_paired_differences(tmp_path):
    rows = [_row("opteq", 0, 0.90), _row("deq", 0, 0.91), _row("opteq", 1, 0.92),
            _row("deq", 1, 0.905), _row("opteq", 2, 0.91), _row("deq", 2, 0.88, epochs=1)]
    results = tmp_path / "rows.json"
    results.write_text(json.dumps(rows))
    stdout = _script("fashion_mnist.py", "--report", "--results", str(results))
    lines = {line.split(" | ")[0]: line for line in stdout.splitlines()
             if line.startswith("| opteq | 0, 1, 2") or line.startswith("| deq | 0, 1 |")}
    # opteq 90, 92, 91: mean 91, sample sd 1; deq (the 1-epoch row left out) 91, 90.5
    assert "| 90.00 / 92.00 / 91.00 | 91.00% | 1.00 |" in lines["| opteq"], stdout
    assert "| 91.00 / 90.50 | 90.75% | 0.35 | -1.00 (seed 0) / +1.50 (seed 1) | +0.25 |" \
        in lines["| deq"], stdout


def _sweep_row(family, target, seed, accuracy, steps):
    return dict(_row(family, seed, accuracy), target=target, augmented=False,
                params=target + 100 * seed, lipschitz_margin=0.0,
                per_epoch=[] if family == "explicit" else [{"steps": s} for s in steps])


def test_sweep_report_prints_paired_tables_per_budget_and_writes_both_figures(tmp_path):
    rows = [_sweep_row("opteq", 15000, 0, 0.91, (8.0, 6.0)),
            _sweep_row("opteq", 15000, 1, 0.92, (10.0, 7.0)),
            _sweep_row("deq", 15000, 0, 0.90, (9.0, 11.0)),
            _sweep_row("deq", 15000, 1, 0.925, (9.0, 12.0)),
            _sweep_row("explicit", 15000, 0, 0.915, ()),
            _sweep_row("opteq", 40000, 0, 0.93, (5.0, 5.0))]
    results = tmp_path / "sweep.json"
    results.write_text(json.dumps(rows))
    stdout = _script("sweep_report.py", "--results", str(results), "--figures",
                     str(tmp_path / "figures"))
    assert "### 15,000 parameters, no augmentation" in stdout, stdout
    assert "### 40,000 parameters, no augmentation" in stdout, stdout
    # deq 90.0 / 92.5 against opteq 91.0 / 92.0: differences +1.00 and -0.50, mean +0.25
    assert "| deq | 0, 1 | 90.00 / 92.50 | 91.25% | 1.77 | +1.00 (seed 0) / -0.50 (seed 1) | " \
        "+0.25 |" in stdout, stdout
    assert "| explicit | 0 | 91.50 | 91.50% | - | -0.50 (seed 0) | -0.50 |" in stdout, stdout
    # forward steps per epoch, the mean over seeds: opteq (8 + 10) / 2, (6 + 7) / 2
    assert "| opteq | 2 | 9.0 | 6.5 |" in stdout and "| deq | 2 | 9.0 | 11.5 |" in stdout, stdout
    assert "(no loss figures in these rows)" in stdout, stdout  # these rows have no losses
    for row, train, test in zip(rows[:2], (0.30, 0.20), (0.35, 0.40)):
        row["per_epoch"][-1]["loss"], row["test_loss"] = train, test
    results.write_text(json.dumps(rows))
    stdout = _script("sweep_report.py", "--results", str(results))
    # the last epoch's training loss and the test loss per seed; the gap's mean: (0.05 + 0.2) / 2
    assert "| opteq | 0, 1 | 0.3000 / 0.2000 | 0.3500 / 0.4000 | 0.2500 | 0.3750 | +0.1250 |" \
        in stdout, stdout
    for name in ("accuracy_per_parameter.png", "forward_steps_per_epoch.png"):
        assert (tmp_path / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # longer runs (--long): their own tables after the sweep's, and one more steps panel
    def width(name):  # from the PNG header (IHDR)
        return int.from_bytes((tmp_path / "figures" / name).read_bytes()[16:20], "big")

    narrow = width("forward_steps_per_epoch.png")
    long = tmp_path / "long.json"
    long.write_text(json.dumps([dict(_sweep_row("opteq", 15000, 0, 0.915, (8.0, 6.0, 6.5)),
                                     epochs=3)]))
    stdout = _script("sweep_report.py", "--results", str(results), "--long", str(long),
                     "--figures", str(tmp_path / "figures"))
    assert stdout.index("## Longer runs") > stdout.index("### 40,000 parameters"), stdout
    assert "| opteq | 1 | 8.0 | 6.0 | 6.5 |" in stdout.split("## Longer runs")[1], stdout
    assert width("forward_steps_per_epoch.png") == narrow * 3 // 2  # 3 panels, not 2


def test_robustness_report_shows_certified_and_attacked_accuracy_and_no_bound_for_deq(tmp_path):
    base = dict(target=15000, augmented=False, lipschitz_margin=0.0, seed=0, params=15000,
                samples=100, pgd_steps=10)
    rows = [dict(base, family="opteq", clean=0.9, lipschitz=4.0, radius_median=0.2,
                 certified={"0.1": 0.6, "0.5": 0.1}, pgd={"0.1": 0.8, "0.5": 0.5}),
            dict(base, family="deq", clean=0.92, lipschitz=None, radius_median=None,
                 certified={"0.1": None, "0.5": None}, pgd={"0.1": 0.85, "0.5": 0.4})]
    path = tmp_path / "robustness.json"
    path.write_text(json.dumps(rows))
    stdout = _script("robustness.py", "--report", "--rows", str(path), "--figure",
                     str(tmp_path / "figures"))
    assert "| deq | 15,000 | no | 0 | - | 0 | 92.0% | none | - | - / 85.0 | - / 40.0 |" in stdout, \
        stdout
    assert "| opteq | 15,000 | no | 0 | 0.95 | 0 | 90.0% | 4 | 0.2 | 60.0 / 80.0 | 10.0 / 50.0 |" \
        in stdout, stdout
    assert (tmp_path / "figures" / "certified_accuracy.png").is_file()


@pytest.mark.slow
def test_deep_opteq_design_quick_run_matches_every_variant_to_the_budget(tmp_path):
    if not pathlib.Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    results = tmp_path / "design.json"
    stdout = _script("deep_opteq_design.py", "--quick", "--variants",
                     "opteq,three_14_14_7,three_28_14_7", "--results", str(results), "--out",
                     str(tmp_path / "out"), timeout=900)
    rows = json.loads(results.read_text())
    assert [r["variant"] for r in rows] == ["opteq", "three_14_14_7", "three_28_14_7"]
    assert rows[1]["tiers"].count("@") == 3 and "28x28" in rows[2]["tiers"]
    assert rows[0]["run_dir"].endswith("opteq_e1_seed0")  # the folder names the schedule
    for row in rows:
        assert abs(row["params"] - 6000) <= 0.02 * 6000
    assert "| three_14_14_7 |" in stdout and "minus OptEq" in stdout


def _design_row(variant, seed, accuracy, epochs=2):
    return dict(variant=variant, what=f"{variant} design", tiers="4 @ 14x14", width=4,
                params=15000, seed=seed, epochs=epochs, train_size=60000, target=15000,
                test_accuracy=accuracy, epoch_seconds=20.0, forward_steps_mean=8.0)


def test_deep_opteq_design_report_gives_each_variant_its_difference_to_opteq(tmp_path):
    rows = [_design_row("opteq", 0, 0.90), _design_row("baseline", 0, 0.885),
            _design_row("jacobi", 0, 0.91), _design_row("opteq", 0, 0.92, epochs=10),
            _design_row("same_scale", 0, 0.93, epochs=10)]
    rows.append(_design_row("baseline", 1, 0.905, epochs=10))  # its reference: a sweep row
    results = tmp_path / "design.json"
    results.write_text(json.dumps(rows))
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps([{**_row("opteq", 1, 0.915), "target": 15000,
                                  "augmented": False, "lipschitz_margin": 0.0}]))
    stdout = _script("deep_opteq_design.py", "--report", "--results", str(results),
                     "--reference-rows", str(sweep))
    short, full = stdout.split("10 epochs")
    assert "| baseline |" in short and "| -1.50 |" in short and "| +1.00 |" in short
    assert "| same_scale |" in full and "| +1.00 |" in full
    assert "(sweep row) | 1 |" in full and "| -1.00 |" in full  # 90.5 against the sweep's 91.5


def _benchmark_module(name):
    """Import ``benchmarks/<name>.py`` (its siblings on the path, as when it runs)."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    return __import__(name)


def test_a_run_of_another_length_or_norm_bound_gets_its_own_folder():
    """A 20-epoch run must not --resume the 10-epoch run of the same family, seed and budget,
    nor a run with another norm bound rho continue the default one's."""
    bench = _benchmark_module("fashion_mnist")

    def folder(*argv):  # the setting's folder of a command line, as the script derives it
        args = bench.parse(["--kind", "conv", *argv])
        return bench.setting(bench.base_config(args), args.target)

    plain = ("--target", "15000", "--augment-crop", "0", "--no-augment-flip")
    assert folder(*plain) == "p15000_noaug"
    assert folder(*plain, "--epochs", "20") == "p15000_noaug_ep20"
    # another norm bound rho is another model: its own folder, and another row
    assert folder(*plain, "--lipschitz-margin", "0.25", "--rho", "0.5") == \
        "p15000_noaug_lm0.25_rho0.5"
    assert folder(*plain, "--rho", "0.95") == "p15000_noaug"  # the default
    rows = _benchmark_module("fashion_mnist_rows")
    row = dict(family="opteq", kind="conv", seed=1, epochs=10, train_size=60000, target=15000,
               augmented=False, lipschitz_margin=0.25, config={"rho": 0.95})
    assert rows.same_run(row, dict(row, config={}))  # rows written before --rho: the default
    assert not rows.same_run(row, dict(row, rho=0.5))
    # a --quick smoke run (a subset, one epoch) keeps the recorded comparison's folder
    assert folder("--quick") == ""


def test_the_sweeps_deep_opteq_stays_the_chain_its_rows_were_trained_with():
    """The sweep's conv deep OptEq rows are the multi-scale chain (tier_strides 2): new seeds and
    --resume must train that model, though the library's default is now the design study's
    same_scale chain; the design study's baseline and its variants build on the same chain."""
    from optjax.nn.classifiers import DEFAULT_TIER_STRIDES
    from optjax.train.config import TrainConfig

    bench = _benchmark_module("fashion_mnist")
    design = _benchmark_module("deep_opteq_design")
    assert bench.sweep_design("conv", "deep_opteq") == {"tier_strides": "2"}
    assert bench.sweep_design("dense", "deep_opteq") == {}
    assert bench.sweep_design("conv", "opteq") == {}
    def strides(variant):
        options = bench.sweep_design("conv", "deep_opteq", design.VARIANTS[variant][2])
        return TrainConfig(family="deep_opteq", kind="conv", **options).tier_stride_values

    assert strides("baseline") == strides("jacobi") == (2,)
    assert strides("same_scale") == DEFAULT_TIER_STRIDES == (1,)
    assert TrainConfig(family="deep_opteq", kind="conv").tier_stride_values == (1,)


def test_robustness_skips_a_folder_that_holds_another_run_than_the_rows(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    log = [{"event": "epoch", "epoch": e, "loss": 1.0 / (e + 1)} for e in range(3)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    row = dict(family="opteq", target=15000, augmented=False, lipschitz_margin=0.0, seed=0,
               params=15000, test_accuracy=0.9, run_dir=str(run),
               per_epoch=[{"loss": 1.0}, {"loss": 0.5}])  # two epochs: the folder's run has three
    rows, out = tmp_path / "rows.json", tmp_path / "robustness.json"
    rows.write_text(json.dumps([row]))
    stdout = _script("robustness.py", "--results", str(rows), "--rows", str(out))
    assert "holds another run than this row's" in stdout, stdout
    assert not out.exists()
    holds = _benchmark_module("fashion_mnist_rows").holds_the_rows_run
    assert not holds(row, run)
    assert holds(dict(row, per_epoch=[{"loss": 1.0}, {"loss": 0.5}, {"loss": 1 / 3}]), run)
