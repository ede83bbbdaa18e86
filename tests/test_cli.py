"""The optjax command: train and eval end to end on a slice of digits, options from flags and
files, and clear errors (exit status 2) for bad input."""

import importlib.metadata
import json
import signal
import subprocess
import sys
import time

import jax
import pytest

from optjax.cli import main

SMALL = ["--kind", "dense", "--width", "16", "--train-subset", "256", "--test-subset", "64",
         "--batch-size", "32", "--epochs", "1", "--warmup-epochs", "0.25", "--no-progress"]


def cli(*args):
    with jax.enable_x64(False):
        return main(list(args))


def test_the_console_script_is_installed():
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("optjax") == "optjax.cli:main"


@pytest.mark.slow  # end to end, ~10-20 s: CI runs it with the slow checks
def test_train_then_eval_end_to_end(tmp_path, capsys):
    assert cli("train", *SMALL, "--out-dir", str(tmp_path)) == 0
    err = capsys.readouterr().err
    assert "training summary" in err and "test: accuracy" in err
    for name in ("loss.png", "accuracy.png", "forward_steps.png", "certificate.png"):
        path = tmp_path / name
        assert f"plot: {path}" in err
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"checkpoint: {tmp_path / 'checkpoints' / '8'}" in err
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["certified"] == 1.0 and saved["num_samples"] == 64

    assert cli("eval", "--out-dir", str(tmp_path), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    # evaluating the saved checkpoint reproduces the run's own final evaluation
    assert report["accuracy"] == pytest.approx(saved["accuracy"])
    assert report["bound_max"] == pytest.approx(saved["bound_max"], rel=1e-5)
    assert cli("eval", "--out-dir", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "test: accuracy" in out and "certificate F(z) - F* <=" in out


@pytest.mark.slow  # end to end, ~10-20 s: CI runs it with the slow checks
def test_resume_takes_the_run_options_from_its_checkpoint(tmp_path, capsys):
    assert cli("train", *SMALL, "--epochs", "2", "--stop-after", "3", "--no-plots",
               "--out-dir", str(tmp_path)) == 0
    assert "stopped at step 3 of 16" in capsys.readouterr().err
    # only --out-dir: width, subsets, epochs... come from the checkpoint
    assert cli("train", "--resume", "--out-dir", str(tmp_path), "--no-progress",
               "--no-plots") == 0
    err = capsys.readouterr().err
    assert "resuming at step 3" in err and "checkpoints/16" in err
    assert cli("train", "--resume", "--out-dir", str(tmp_path), "--width", "8") == 2
    assert "width (checkpoint 16, now 8: it fixes the parameter layout)" in \
        capsys.readouterr().err


def test_help_lists_the_allowed_values_of_every_choice_option(capsys):
    from optjax.convex import activations
    from optjax import solvers
    from optjax.engine.backward import BACKWARDS
    from optjax.data import DATASETS
    from optjax.nn.classifiers import FAMILIES

    with pytest.raises(SystemExit) as exit_:
        cli("train", "--help")
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    choices = {"--dataset": DATASETS, "--family": FAMILIES, "--kind": ("dense", "conv"),
               "--activation": activations.available(), "--solver": tuple(solvers.SOLVERS),
               "--backward": (*BACKWARDS, "auto"), "--schedule": ("cosine", "constant")}
    for flag, values in choices.items():
        help_text = text.split(f"{flag} STR ")[1].split(" --")[0]
        for value in values:
            assert value in help_text, (flag, value)
    assert "natural images" in text.split("--augment-flip")[-1]


def test_an_explicit_model_reports_that_it_solves_nothing(tmp_path, capsys):
    assert cli("train", *SMALL, "--family", "explicit", "--out-dir", str(tmp_path)) == 0
    err = capsys.readouterr().err
    assert "no equilibrium layer" in err and "forward steps mean" not in err
    assert "converged" not in err and "fwd" not in err
    plots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert plots == ["accuracy.png", "loss.png"]  # no forward steps, no certificate
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["steps_mean"] == "nan" and saved["converged"] == "nan"


def test_options_from_a_file_and_flags(tmp_path, capsys):
    (tmp_path / "run.toml").write_text('epochs = 3\nwidth = 8\nkind = "dense"\n')
    assert cli("train", "--config", str(tmp_path / "run.toml"), "--width", "12",
               "--print-config") == 0
    config = json.loads(capsys.readouterr().out)
    assert (config["epochs"], config["width"], config["kind"]) == (3, 12, "dense")


def test_unknown_options_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli("train", "--lr", "0.1")
    assert exit_.value.code == 2
    assert "unrecognized arguments: --lr" in capsys.readouterr().err
    (tmp_path / "run.json").write_text(json.dumps({"lr": 0.1, "epochs": 1}))
    assert cli("train", "--config", str(tmp_path / "run.json")) == 2
    assert "unknown option(s) for TrainConfig: 'lr'" in capsys.readouterr().err


def test_bad_values_are_refused(capsys):
    with pytest.raises(SystemExit):
        cli("train", "--epochs", "two")
    assert "--epochs expects int, got 'two'" in capsys.readouterr().err
    assert cli("train", "--rho", "1.5", "--print-config") == 2
    assert "rho must be a number in (0.0, 1.0]" in capsys.readouterr().err


def test_missing_data_files_are_named(tmp_path, capsys):
    assert cli("train", "--dataset", "mnist", "--data-dir", str(tmp_path),
               "--out-dir", str(tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and str(tmp_path) in err


def test_eval_without_a_run(tmp_path, capsys):
    assert cli("eval", "--out-dir", str(tmp_path)) == 2
    assert "holds no checkpoints" in capsys.readouterr().err


@pytest.mark.slow  # end to end, ~10-20 s: CI runs it with the slow checks
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "optjax", "train", *SMALL, "--epochs", "500", "--no-plots",
         "--out-dir", str(tmp_path)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count('"event": "step"') >= 3:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted at step" in err and f"optjax train --resume --out-dir {tmp_path}" in err
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    logged = sum(1 for line in metrics.read_text().splitlines() if '"event": "step"' in line)
    assert max(saved) >= 3 and max(saved) in (logged, logged + 1)


@pytest.mark.slow  # end to end, ~20 s: CI runs it with the slow checks
def test_eval_reports_certified_and_attacked_accuracy_per_radius(tmp_path, capsys):
    """``optjax eval --robustness``: per radius the certified accuracy (never above the PGD
    one), the PGD one (never above the clean one); a run trained with a Lipschitz margin (the
    loss charges each wrong logit eps * ||h_y - h_j|| * L) ends with a smaller Lipschitz bound
    than the same run without (same seed, data and schedule: 28.6 against 19.0 when
    written)."""
    bounds = {}
    for margin in ("0", "0.5"):
        out = tmp_path / margin
        assert cli("train", *SMALL, "--no-plots", "--lipschitz-margin", margin, "--out-dir",
                   str(out)) == 0
        capsys.readouterr()
        assert cli("eval", "--out-dir", str(out), "--robustness", "0.01,0.1",
                   "--robustness-samples", "32", "--pgd-steps", "5", "--json") == 0
        report = json.loads(capsys.readouterr().out)["robustness"]
        assert report["samples"] == 32 and report["lipschitz"] > 0
        for eps in ("0.01", "0.1"):
            assert report["certified"][eps] <= report["pgd"][eps] <= report["clean"]
        bounds[margin] = report["lipschitz"]
    assert bounds["0.5"] < 0.9 * bounds["0"]
    assert cli("eval", "--out-dir", str(tmp_path / "0"), "--robustness", "0.1",
               "--robustness-samples", "8", "--pgd-steps", "2") == 0
    text = capsys.readouterr().out
    assert "test robustness: opteq at step 8, 8 images" in text
    assert "eps 0.1: certified" in text and "PGD (2 steps)" in text
    assert cli("eval", "--out-dir", str(tmp_path / "0"), "--robustness", "big") == 2
    assert "--robustness takes comma-separated radii" in capsys.readouterr().err


def test_the_deep_chain_design_flags(capsys):
    assert cli("train", "--family", "deep_opteq", "--tier-channels", "0.5,1,2", "--tier-strides",
               "1,2", "--activation", "relu,relu,softplus", "--stem-stride", "1",
               "--print-config") == 0
    config = json.loads(capsys.readouterr().out)
    assert (config["tier_channels"], config["tier_strides"], config["stem_stride"]) == (
        "0.5,1,2", "1,2", 1)
    assert cli("train", "--family", "deep_opteq", "--tier-channels", "1,1,1",
               "--print-config") == 2
    assert "one stride per coupling" in capsys.readouterr().err
