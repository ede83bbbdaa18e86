"""Bad input to training and the command line (tests/_cases.py): each must be refused with a
message that says what is wrong AND what to do. The command line's arguments, flags and
config files, --distributed without a cluster, and damaged or mismatched checkpoints of a
stopped run (resumed, evaluated or trained over).
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests._cases import Case, assert_says, params
from tests.train._runs import cli, run, tiny_config

# --- the command line ----------------------------------------------------------------------------
# ``input``: the arguments of ``optjax``; "{tmp}" is a fresh directory. Training rows start from
# quick settings (SAFE), so that an input wrongly accepted trains for seconds, not minutes.

SAFE = ["--kind", "dense", "--width", "4", "--train-subset", "64", "--test-subset", "32",
        "--batch-size", "32", "--epochs", "1", "--no-plots", "--no-progress", "--out-dir",
        "{tmp}/run"]
DIGITS_SIZE = 1437

CLI = [
    Case("unknown flag", ["train", "--lr", "0.1"], ("unrecognized arguments: --lr",)),
    Case("wrong type", ["train", "--epochs", "two"], ("--epochs expects int, got 'two'",)),
    Case("number out of range", ["train", "--rho", "1.5"],
         ("rho must be a number in (0.0, 1.0], got 1.5",)),
    Case("unknown dataset", ["train", "--dataset", "imagenet"],
         ("dataset must be one of digits, fashion-mnist, mnist, cifar10", "'imagenet'")),
    Case("unknown family", ["train", "--family", "resnet"], ("family must be one of opteq",)),
    Case("activation that is not a prox", ["train", "--activation", "gelu"],
         ("gelu is not a proximal operator", "available for opteq: relu, leaky_relu",
          "--family deq")),
    Case("unknown activation", ["train", "--family", "deq", "--activation", "swishy"],
         ("'swishy' is unknown for family 'deq'", "any jax.nn function name")),
    Case("activation of a family that has none", ["train", "--family", "mondeq",
                                                   "--activation", "tanh"],
         ("family 'mondeq' has a fixed activation (relu)", "drop --activation")),
    Case("unknown solver", ["train", "--solver", "newton"],
         ("solver must be one of fixed_point, anderson", "got 'newton'")),
    Case("unknown backward", ["train", "--backward", "lbfgs"],
         ("backward must be one of", "gmres", "got 'lbfgs'")),
    Case("negative crop", ["train", "--augment-crop", "-1"],
         ("augment_crop must be an integer >= 0",)),
    Case("crop as large as the image", ["train", "--augment-crop", "8"],
         ("augment_crop 8 must be smaller than the 8 x 8 images", "a few pixels")),
    Case("config file that is a directory", ["train", "--config", "{tmp}"],
         ("is a directory", "pass a .json or .toml file")),
    Case("config file that does not exist", ["train", "--config", "{tmp}/run.toml"],
         ("run.toml does not exist", "check the path given to --config")),
    Case("config file of another format", ["train", "--config", "{tmp}/run.yaml"],
         ("use a .json or .toml file",)),
    Case("unknown key in a config file", ["train", "--config", "{tmp}/lr.json"],
         ("unknown option(s) for TrainConfig: 'lr'", "valid options are")),
    Case("invalid JSON", ["train", "--config", "{tmp}/bad.json"], ("is not valid JSON",)),
    Case("cluster flags without --distributed", ["train", "--num-processes", "2"],
         ("--num-processes applies only with --distributed", "drop them")),
    Case("--resume and --overwrite", ["train", "--resume", "--overwrite"],
         ("--resume and --overwrite contradict each other", "choose one")),
    Case("--resume of nothing", ["train", "--resume", "--out-dir", "{tmp}/nothing"],
         ("no checkpoint in", "train without --resume first")),
    Case("--out-dir that is a file", ["train", "--out-dir", "{tmp}/bad.json"],
         ("is a file", "pass a directory")),
    Case("batch larger than the data", ["train", "--train-subset", "16"],
         ("batch_size 32 is larger than the 16 training samples", "lower --batch-size")),
    Case("subset larger than the data", ["train", "--train-subset", "5000"],
         ("num_train=5000 is out of range", f"[1, {DIGITS_SIZE}]")),
    Case("missing data files", ["train", "--dataset", "mnist", "--data-dir", "{tmp}"],
         ("missing train-images-idx3-ubyte", "obtain the four IDX files", "--data-dir")),
    Case("MNIST without a data directory", ["train", "--dataset", "mnist"],
         ("needs --data-dir",)),
    Case("data directory that does not exist", ["train", "--dataset", "cifar10", "--data-dir",
                                                "{tmp}/nowhere"],
         ("does not exist", "pass --data-dir")),
    Case("eval of a directory without a run", ["eval", "--out-dir", "{tmp}"],
         ("holds no checkpoints", "train there first")),
    Case("eval batch size 0", ["eval", "--out-dir", "{tmp}", "--batch-size", "0"],
         ("batch size must be >= 1",)),
    Case("eval of an unknown split", ["eval", "--out-dir", "{tmp}", "--split", "val"],
         ("invalid choice: 'val'", "choose from 'test', 'train'")),
]
FILES = {"lr.json": json.dumps({"lr": 0.1}), "bad.json": "{epochs: 3", "run.yaml": "epochs: 3"}


@pytest.mark.parametrize("case", params(CLI))
def test_the_command_line(case, tmp_path, capsys):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    args = [a.replace("{tmp}", str(tmp_path)) for a in case.input]
    if args[0] == "train":
        args = ["train", *[a.replace("{tmp}", str(tmp_path)) for a in SAFE], *args[1:]]
    try:
        status = cli(*args)
    except SystemExit as exit_:  # argparse's own refusals
        status = exit_.code
    assert status == 2
    assert_says(capsys.readouterr().err, case)


def test_distributed_without_a_cluster(tmp_path):
    # In a child process: jax.distributed must start before JAX does anything, and this
    # process's JAX has long started.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COORDINATOR", "SLURM_", "OMPI_", "PMI_"))}
    done = subprocess.run([sys.executable, "-m", "optjax", "train", "--distributed",
                           "--out-dir", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert_says(done.stderr, Case("--distributed without a cluster", None, (
        "--distributed needs the coordinator's address",
        "--coordinator-address HOST:PORT --num-processes N --process-id I",
        "SLURM, Open MPI or on a TPU pod", "On a single machine, drop --distributed")))
    assert "Traceback" not in done.stderr


# --- the checkpoints -----------------------------------------------------------------------------
# ``input``: (damage, arguments of ``optjax``): ``damage(run_dir)`` changes a copy of a run
# stopped at step 3; "{run}" in the arguments is that copy.


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    out = tmp_path_factory.mktemp("stopped")
    run(tiny_config(out, stop_after=3))
    return out


def _step(out):
    return out / "checkpoints" / "3"


def _biggest_array_file(out):
    return max((p for p in (_step(out) / "state").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)


def _flip_bytes(out):
    path = _biggest_array_file(out)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(out):
    path = _biggest_array_file(out)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _rewrite_record(out, **changes):
    """Change the checkpoint's JSON record and its entry in files.json (so the change passes
    the file check, as a checkpoint of another run or version would)."""
    record = _step(out) / "meta" / "metadata"
    record.write_text(json.dumps({**json.loads(record.read_text()), **changes}))
    files = json.loads((_step(out) / "files.json").read_text())
    files["meta/metadata"] = [record.stat().st_size,
                              hashlib.sha256(record.read_bytes()).hexdigest()]
    (_step(out) / "files.json").write_text(json.dumps(files))


def _metrics_of_another_run(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[0] = json.dumps({"event": "run", "run_id": "f" * 32})
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _nothing(out):
    pass


RESUME = ["train", "--resume", "--out-dir", "{run}", "--stop-after", "3"]
CHECKPOINTS = [
    Case("damaged array file", (_flip_bytes, RESUME),
         ("checkpoints/3 is corrupt or incomplete: file state/", "changed since it was saved",
          "Nothing was loaded", "Delete that folder", "start afresh")),
    Case("truncated array file", (_truncate, ["eval", "--out-dir", "{run}"]),
         ("is truncated", "Delete that folder")),
    Case("missing record", (lambda out: (_step(out) / "meta" / "metadata").unlink(), RESUME),
         ("file meta/metadata is missing", "Delete that folder")),
    Case("unfinished save", (lambda out: (_step(out) / "files.json").unlink(), RESUME),
         ("files.json is missing (the save did not finish)", "Delete that folder")),
    Case("another run's checkpoint", (lambda out: _rewrite_record(out, run_id="f" * 32),
                                      RESUME),
         ("holds checkpoints of another run", "Nothing was loaded, pruned or rewritten",
          "move them out")),
    Case("another run's metrics", (_metrics_of_another_run, RESUME),
         ("holds the metrics of another run", "move it away")),
    Case("another version's checkpoint", (lambda out: _rewrite_record(out, format=1), RESUME),
         ("written by another version of optjax", "Start afresh")),
    Case("damaged run.json", (lambda out: (out / "run.json").write_text("{"), RESUME),
         ("run.json is damaged", "delete it")),
    Case("another model", (_nothing, [*RESUME, "--width", "24"]),
         ("width (checkpoint 16, now 24: it fixes the parameter layout)",
          "start a new run in another --out-dir")),
    Case("another data order", (_nothing, [*RESUME, "--seed", "1"]),
         ("seed (checkpoint 0, now 1: it fixes the data order", "Drop them")),
    Case("training over a run", (_nothing, ["train", "--out-dir", "{run}"]),
         ("already holds checkpoints", "pass --resume", "--overwrite", "another --out-dir")),
    Case("eval of a step that does not exist", (_nothing, ["eval", "--out-dir", "{run}",
                                                           "--step", "999"]),
         ("there is no checkpoint of step 999", "the saved steps are [3]")),
]


@pytest.mark.parametrize("case", params(CHECKPOINTS))
def test_the_checkpoints(case, stopped, tmp_path, capsys):
    damage, args = case.input
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    damage(out)
    assert cli(*[a.replace("{run}", str(out)) for a in args]) == 2
    assert_says(capsys.readouterr().err, case)
