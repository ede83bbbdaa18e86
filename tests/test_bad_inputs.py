"""A catalogue of bad inputs: each must be refused with a message that says what is wrong AND
what to do.

One table and one test function per area (the command line, the data, the checkpoints); a row
is ``(id, input, words the message must contain)``. To add an area (the library, the layers),
append a table of :class:`Case` and a test function that feeds each input and returns the
message, as below.
"""

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from optjax.data import DataError, Dataset, load, read_idx

from tests.train._runs import cli, run, tiny_config


@dataclasses.dataclass(frozen=True)
class Case:
    """A bad input and the words its message must contain (what is wrong, what to do)."""

    id: str
    input: Any
    words: tuple[str, ...]


def _params(cases):
    return [pytest.param(case, id=case.id) for case in cases]


def _assert_says(message: str, case: Case) -> None:
    flat = " ".join(message.split())
    for words in case.words:
        assert words in flat, f"{case.id}: {words!r} not in:\n{message}"


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


@pytest.mark.parametrize("case", _params(CLI))
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
    _assert_says(capsys.readouterr().err, case)


def test_distributed_without_a_cluster(tmp_path):
    # In a child process: jax.distributed must start before JAX does anything, and this
    # process's JAX has long started.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COORDINATOR", "SLURM_", "OMPI_", "PMI_"))}
    done = subprocess.run([sys.executable, "-m", "optjax", "train", "--distributed",
                           "--out-dir", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    _assert_says(done.stderr, Case("--distributed without a cluster", None, (
        "--distributed needs the coordinator's address",
        "--coordinator-address HOST:PORT --num-processes N --process-id I",
        "SLURM, Open MPI or on a TPU pod", "On a single machine, drop --distributed")))
    assert "Traceback" not in done.stderr


# --- the data ------------------------------------------------------------------------------------
# ``input``: a function of a fresh directory that feeds the bad data to optjax.


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _dataset(**changes):
    x = np.zeros((4, 2, 2, 1), np.float32)
    y = np.arange(4, dtype=np.int32) % 2
    fields = dict(name="toy", x_train=x, y_train=y, x_test=x, y_test=y, num_classes=2,
                  class_names=("a", "b"))
    return Dataset(**{**fields, **changes})


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def _empty_evaluation(tmp):
    from optjax.train.evaluate import evaluate_split
    evaluate_split(None, None, np.zeros((0, 2, 2, 1), np.float32), np.zeros(0, np.int32), 8,
                   mesh=type("Mesh", (), {"devices": np.empty(1)}))


DATA: list[Case] = [
    Case("unknown dataset", lambda tmp: load("imagenet"),
         ("unknown dataset 'imagenet'", "choose one of: digits, fashion-mnist, mnist, cifar10")),
    Case("data directory that is a file", lambda tmp: load("mnist", _write(tmp / "f", b"")),
         ("is not a directory", "pass the directory holding the files")),
    Case("missing IDX files", lambda tmp: load("fashion-mnist", tmp),
         ("missing train-images-idx3-ubyte", "apt-get install -y dataset-fashion-mnist")),
    Case("truncated IDX file", lambda tmp: read_idx(_write(
        tmp / "x", b"\x00\x00\x08\x01\x00\x00\x00\x09" + bytes(4))),
         ("is truncated", "declares shape (9,)", "download or install it again")),
    Case("not an IDX file", lambda tmp: read_idx(_write(tmp / "x", b"GIF89a..")),
         ("bad magic number", "download or install it again")),
    Case("a .gz that is not gzip", lambda tmp: read_idx(_write(tmp / "x.gz", b"\x00\x00")),
         ("is named .gz but is not gzip-compressed", "download or install it again")),
    Case("a CIFAR-10 pickle that runs code", lambda tmp: load("cifar10", _cifar_with(
        tmp, pickle.dumps(_Evil()))),
         ("refusing to unpickle it", "cs.toronto.edu")),
    Case("a damaged CIFAR-10 pickle", lambda tmp: load("cifar10", _cifar_with(tmp, b"\x80\x04")),
         ("cannot unpickle CIFAR-10 file", "extract it with")),
    Case("an empty subset", lambda tmp: _dataset().subset(0),
         ("num_train=0 is out of range", "pass a value in [1, 4] or None")),
    Case("images with NaN", lambda tmp: _dataset(x_test=np.full((4, 2, 2, 1), np.nan,
                                                                np.float32)),
         ("x_test contains NaN or infinite values", "corrupt")),
    Case("images without pixels", lambda tmp: _dataset(x_train=np.zeros((4, 0, 0, 1),
                                                                        np.float32)),
         ("holds images of shape (0, 0, 1)", "at least one row, column and channel")),
    Case("labels outside the classes", lambda tmp: _dataset(y_train=np.full(4, 5, np.int32)),
         ("labels in [5, 5]", "check num_classes")),
    Case("an evaluation of zero samples", _empty_evaluation,
         ("nothing to evaluate: 0 samples", "pass at least one sample")),
]


def _cifar_with(tmp, first_batch: bytes):
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch"):
        (tmp / name).write_bytes(first_batch)
    return tmp


@pytest.mark.parametrize("case", _params(DATA))
def test_the_data(case, tmp_path):
    with pytest.raises((DataError, ValueError)) as error:
        case.input(tmp_path)
    _assert_says(str(error.value), case)


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


@pytest.mark.parametrize("case", _params(CHECKPOINTS))
def test_the_checkpoints(case, stopped, tmp_path, capsys):
    damage, args = case.input
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    damage(out)
    assert cli(*[a.replace("{run}", str(out)) for a in args]) == 2
    _assert_says(capsys.readouterr().err, case)


# --- the library ---------------------------------------------------------------------------------
# ``input``: a function that makes the bad call. Small float64 problems (tests run with x64).

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import optjax  # noqa: E402
from optjax import deep, priors, solvers  # noqa: E402
from optjax.deq import DEQProblem  # noqa: E402


def _unit(norm=0.9, **kw):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 4))
    return optjax.OptEqProblem(jnp.asarray(norm * w / np.linalg.norm(w, 2)), "relu", **kw)


X = jnp.ones((2, 6))

LIBRARY = [
    Case("input without a batch axis", lambda: optjax.equilibrium(_unit(), X[0]),
         ("x must have shape (batch,) + (6,)", "add a batch axis: x[None]")),
    Case("integer input", lambda: optjax.equilibrium(_unit(), X.astype(int)),
         ("floating dtype", "x.astype(float)")),
    Case("weights that break convexity", lambda: optjax.equilibrium(_unit(1.5), X),
         ("s_sigma * ||W||^2 = 2.25 > 1", "Rescale W")),
    Case("NaN in the weights", lambda: optjax.equilibrium(
        optjax.OptEqProblem(_unit().weight.at[0, 0].set(jnp.nan), "relu"), X),
         ("NaN or Inf in W", "check the weights")),
    Case("activation that is not a prox", lambda: _unit().__class__(_unit().weight, "gelu"),
         ("not a proximal operator", "Use a prox activation instead")),
    Case("a function as activation", lambda: optjax.OptEqProblem(_unit().weight, jax.nn.relu),
         ("activation must be an optjax Activation", "from_function")),
    Case("negative L1 weight", lambda: priors.L1(-0.1), ("lam >= 0", "got lam = -0.1")),
    Case("empty box", lambda: priors.Box(1.0, -1.0), ("lower <= upper", "box is empty")),
    Case("negative ball radius", lambda: priors.Ball(-1.0), ("radius >= 0", "ball is empty")),
    Case("negative quadratic weight", lambda: priors.Quadratic(-0.5), ("mu >= 0",)),
    Case("quadratic prior without its feature",
         lambda: optjax.equilibrium(_unit(prior=priors.Quadratic(0.5)), X),
         ("needs feature=u",)),
    Case("feature without a quadratic prior",
         lambda: optjax.equilibrium(_unit(), X, feature=jnp.zeros(4)),
         ("feature= is only used by the Quadratic prior",)),
    Case("unknown solver", lambda: optjax.equilibrium(_unit(), X, solver="newton"),
         ("unknown solver 'newton'", "choose one of")),
    Case("misspelt solver option",
         lambda: optjax.equilibrium(_unit(), X, solver="anderson", solver_options={"histroy": 3}),
         ("unknown option(s) for Anderson: 'histroy'", "valid options are")),
    Case("traced tolerance", lambda: jax.jit(lambda t: optjax.equilibrium(_unit(), X, tol=t))(1e-5),
         ("tol is a static setting", "static_argnames")),
    Case("negative tolerance", lambda: optjax.equilibrium(_unit(), X, tol=-1.0),
         ("tol must be a positive finite number",)),
    Case("conjugate gradients with a non-symmetric prior",
         lambda: optjax.equilibrium(_unit(prior=priors.L1(0.1)), X, backward="cg"),
         ("needs a symmetric system", "use backward='gmres'")),
    Case("anchor without Halpern", lambda: optjax.equilibrium(_unit(), X, anchor=jnp.zeros(4)),
         ("anchor= is used by the Halpern solver only", "solver='halpern'")),
    Case("init of the wrong shape", lambda: optjax.equilibrium(_unit(), X, init=jnp.zeros(5)),
         ("init must have shape (4,) or (2, 4)",)),
    Case("objective-based solver on a DEQ",
         lambda: optjax.equilibrium(DEQProblem(0.1 * jnp.eye(3), jnp.tanh), jnp.ones((2, 3)),
                                    solver=next(n for n, c in solvers.SOLVERS.items()
                                                if getattr(c, "needs_objective", False))),
         ("needs an explicit objective", "use 'anderson'")),
    Case("deep couplings that break convexity",
         lambda: deep.equilibrium(deep.DeepProblem([2 * jnp.eye(3)], None, None, "relu"),
                                  jnp.ones((2, 3))),
         ("convexity margin", "optjax.deep.normalize")),
    Case("deep coupling of the wrong shape",
         lambda: deep.DeepProblem([jnp.ones((3, 4)), jnp.ones((2, 5))], None),
         ("A_2 must have shape (n_3, n_2) with n_2 = 3",)),
    Case("check of a failed solve",
         lambda: optjax.check(optjax.equilibrium(_unit(), X, max_steps=1, tol=1e-12)[1]),
         ("did not reach an equilibrium", "raise max_steps")),
]


@pytest.mark.parametrize("case", _params(LIBRARY))
def test_the_library(case):
    with pytest.raises(Exception) as info:
        case.input()
    assert not isinstance(info.value, (AttributeError, KeyError, ZeroDivisionError,
                                       IndexError)), info.value
    _assert_says(str(info.value), case)


# --- the layers ----------------------------------------------------------------------------------

from flax import nnx  # noqa: E402

from optjax.nn import DeepOptEq, DEQDense, MonDEQDense, OptEqConv, OptEqDense  # noqa: E402


def _rngs():
    return nnx.Rngs(0)


LAYERS = [
    Case("negative width", lambda: OptEqDense(4, 3, hidden=-1, rngs=_rngs()),
         ("hidden must be a positive int, got -1",)),
    Case("zero features", lambda: OptEqDense(4, 0, rngs=_rngs()),
         ("features must be a positive int",)),
    Case("rho above one", lambda: OptEqDense(4, 3, rho=1.5, rngs=_rngs()),
         ("rho must be in (0, 1]",)),
    Case("even conv kernel", lambda: OptEqConv(1, 2, (4, 4), kernel_size=2, rngs=_rngs()),
         ("kernel_size must be odd",)),
    Case("anchor with a unique equilibrium", lambda: OptEqDense(4, 3, anchor="zero", rngs=_rngs()),
         ("needs rho=1", "drop the anchor")),
    Case("learned anchor", lambda: OptEqDense(4, 3, anchor="learned", rho=1.0, rngs=_rngs()),
         ("never get a gradient", "use 'zero' or 'injection'")),
    Case("activation that is not a prox", lambda: OptEqDense(4, 3, activation="gelu",
                                                             rngs=_rngs()),
         ("not a proximal operator",)),
    Case("input of the wrong width", lambda: OptEqDense(4, 3, rngs=_rngs())(jnp.ones((2, 5))),
         ("expects x of shape (batch, 4)",)),
    Case("conv input with the wrong channels",
         lambda: OptEqConv(3, 2, (4, 4), rngs=_rngs())(jnp.ones((1, 4, 4, 5))),
         ("5 input channels, the layer was built for 3",)),
    Case("conjugate gradients in a deep chain", lambda: DeepOptEq(4, (3, 2), backward="cg",
                                                                  rngs=_rngs()),
         ("needs a symmetric system", "use backward='gmres'")),
    Case("unknown DEQ activation", lambda: DEQDense(4, 3, activation="nope", rngs=_rngs()),
         ("unknown activation 'nope'",)),
    Case("non-positive monotonicity margin", lambda: MonDEQDense(4, 3, m=0.0, rngs=_rngs()),
         ("m must be a positive number",)),
]


@pytest.mark.parametrize("case", _params(LAYERS))
def test_the_layers(case):
    with pytest.raises(Exception) as info:
        case.input()
    assert not isinstance(info.value, (AttributeError, KeyError, ZeroDivisionError,
                                       IndexError)), info.value
    _assert_says(str(info.value), case)
