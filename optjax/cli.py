"""The ``optjax`` command: ``optjax train`` and ``optjax eval``.

Options come from defaults, then a ``--config`` file (JSON or TOML), then flags; with
``--resume`` the run's own configuration (saved in its checkpoint) replaces the defaults, and
flags may change the options that do not fix the model or the data order
(:func:`optjax.train.config.resume_changes`). Errors in the input (unknown options, bad values,
missing data, damaged or foreign checkpoints, no cluster for ``--distributed``) end with a
one-paragraph message and exit status 2, before any data or model is loaded where the input
alone shows the error; an interrupted run exits with 130 after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import sys
import types
import typing
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from optjax.train.config import TrainConfig

__all__ = ["main", "train_config"]


def _field_type(name: str) -> tuple[Any, bool]:
    from optjax.train.config import TrainConfig

    hint = typing.get_type_hints(TrainConfig)[name]
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    base = next(a for a in args if a is not type(None))
    return base, type(None) in args


def _parser_for(base: Any, optional: bool, flag: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null", ""):
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} expects {base.__name__}" + (" or 'none'" if optional else "")
                + f", got {text!r}") from None
    return parse


def _choices() -> dict[str, str]:
    """The allowed values of every choice option, in words, for ``--help``."""
    from optjax import solvers
    from optjax.data import DATASETS
    from optjax.nn.classifiers import FAMILIES
    from optjax.train.config import BACKWARD_CHOICES, KINDS, SCHEDULES, activation_choices

    by_choices: dict[str, list[str]] = {}
    for family in FAMILIES:
        by_choices.setdefault(activation_choices(family), []).append(family)
    activation = "; ".join(f"{', '.join(families)}: {text}"
                           for text, families in by_choices.items())
    return {
        "dataset": "one of " + ", ".join(DATASETS),
        "family": "one of " + ", ".join(FAMILIES),
        "kind": "one of " + ", ".join(KINDS),
        "solver": "one of " + ", ".join(solvers.SOLVERS) + ", or none (the layer's default)",
        "backward": "one of " + ", ".join(BACKWARD_CHOICES),
        "schedule": "one of " + ", ".join(SCHEDULES),
        "augment_crop": "random crop after padding every side with this many zero pixels, on "
        "training batches only (0: off)",
        "augment_flip": "random horizontal flip of training batches; for natural images "
        "(cifar10), wrong for digits and letters",
        "activation": "by family: " + activation + " (deep_opteq: one, or one per tier, "
        "comma-separated)",
        "stem_channels": "output channels of the conv stem",
        "stem_stride": "stride of the conv stem (none: 2 for images of 16 pixels or more, else 1)",
        "head_grid": "side of the grid the conv equilibrium is average-pooled to before the "
        "head (none: half of the default stem's grid)",
        "tier_channels": "deep_opteq: comma-separated multipliers of --width, one per tier "
        "(e.g. 0.5,1,2)",
        "tier_strides": "deep_opteq conv: comma-separated stride of each coupling between tiers "
        "(e.g. 1,2; 2 puts the second of two tiers on half the grid)",
        "sweep": "deep_opteq: gauss_seidel or jacobi (the same fixed point)",
    }


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from optjax.train.config import TrainConfig

    defaults = TrainConfig()
    choices = _choices()
    group = parser.add_argument_group("options (see TrainConfig; default in brackets)")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        base, optional = _field_type(field.name)
        default = getattr(defaults, field.name)
        text = f"[{default}]" + (f" {choices[field.name]}" if field.name in choices else "")
        if base is bool:
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=text)
        else:
            group.add_argument(flag, dest=field.name, type=_parser_for(base, optional, flag),
                               default=argparse.SUPPRESS, metavar=base.__name__.upper(),
                               help=text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optjax", description="Train and evaluate optimization-induced equilibrium "
        "networks (OptEq) and their baselines.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="train a classifier", description="Train a classifier; every option of "
        "TrainConfig is a flag, or a key of the --config file.")
    train.add_argument("--config", help="a JSON or TOML file of options (flags override it)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out-dir from its latest checkpoint; options "
                       "that fix the model or the data order cannot change, the others can "
                       "(the run is then no longer identical to an uninterrupted one)")
    train.add_argument("--overwrite", action="store_true",
                       help="delete the checkpoints and metrics already in --out-dir")
    cluster = train.add_argument_group(
        "several processes", "Start the same command in every process, with --distributed; "
        "each process feeds its rows of every global batch.")
    cluster.add_argument("--distributed", action="store_true",
                         help="call jax.distributed.initialize() first, with the options below "
                         "or, without them, the cluster's environment (SLURM, Open MPI, TPU "
                         "pods; JAX_COORDINATOR_ADDRESS)")
    cluster.add_argument("--coordinator-address", metavar="HOST:PORT",
                         help="where process 0 runs the coordinator (the same on every process)")
    cluster.add_argument("--num-processes", type=int, metavar="N", help="how many processes")
    cluster.add_argument("--process-id", type=int, metavar="I",
                         help="this process's index, 0 to N - 1")
    train.add_argument("--print-config", action="store_true",
                       help="print the resulting configuration as JSON and exit")
    _add_config_flags(train)
    ev = sub.add_parser("eval", help="evaluate a trained run",
                        description="Accuracy and certificate statistics of a run's checkpoint.")
    ev.add_argument("--out-dir", required=True, help="the run's output directory")
    ev.add_argument("--step", type=int, default=None, help="checkpoint step [latest]")
    ev.add_argument("--split", choices=("test", "train"), default="test")
    ev.add_argument("--data-dir", default=None, help="where the dataset files are, if moved")
    ev.add_argument("--batch-size", type=int, default=None, help="evaluation batch size")
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.add_argument("--robustness", metavar="EPS[,EPS...]", default=None,
                    help="also certified and L2 PGD robust accuracy at these radii (e.g. "
                         "0.1,0.25,0.5; images as standardised for training)")
    ev.add_argument("--robustness-samples", type=int, default=1000,
                    help="first N images of the split for --robustness [1000]")
    ev.add_argument("--pgd-steps", type=int, default=100, help="PGD steps for --robustness [100]")
    return parser


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of ``optjax train`` arguments."""
    from optjax.train.checkpoint import CheckpointError, Checkpoints
    from optjax.train.config import TrainConfig, load_file

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if hasattr(args, f.name)}
    from_file = load_file(args.config) if args.config else {}
    options: dict[str, Any] = {}
    if args.resume:
        out_dir = flags.get("out_dir", from_file.get("out_dir", TrainConfig().out_dir))
        ckpt_dir = pathlib.Path(out_dir) / "checkpoints"
        probe = Checkpoints(ckpt_dir, TrainConfig(out_dir=out_dir)) if ckpt_dir.is_dir() \
            else None
        latest = probe.latest_step() if probe is not None else None
        if probe is None or latest is None:
            raise CheckpointError(
                f"no checkpoint in {ckpt_dir}: train without --resume first, or point --out-dir "
                "at the run to continue")
        options.update(probe.read_meta(latest).get("config", {}))
        options.pop("stop_after", None)  # where the last part stopped; not this part
    options.update(from_file)
    options.update(flags)
    return TrainConfig.from_dict(options)


_NO_CLUSTER = (
    "--distributed needs the coordinator's address, the number of processes and this "
    "process's id: pass --coordinator-address HOST:PORT --num-processes N --process-id I (the "
    "same address and N in every process; process 0 runs the coordinator), or run under SLURM, "
    "Open MPI or on a TPU pod, where JAX reads them from the environment (or set "
    "JAX_COORDINATOR_ADDRESS). On a single machine, drop --distributed: the run uses all its "
    "local devices")


def _start_distributed(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize`` with the flags' settings; a clear error without a
    cluster."""
    import jax

    from optjax.config import ConfigError

    settings = {k: getattr(args, k) for k in ("coordinator_address", "num_processes",
                                              "process_id") if getattr(args, k) is not None}
    try:
        jax.distributed.initialize(**settings)
    except Exception as err:  # jax raises ValueError, RuntimeError or its own errors
        raise ConfigError(f"{_NO_CLUSTER}. (jax.distributed.initialize: "
                          f"{' '.join(str(err).split())[:300]})") from None


def _check_train_args(args: argparse.Namespace) -> None:
    from optjax.config import ConfigError

    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other (--resume continues "
                          "the run in --out-dir, --overwrite deletes it); choose one")
    cluster = [f"--{k.replace('_', '-')}" for k in ("coordinator_address", "num_processes",
                                                     "process_id") if getattr(args, k) is not None]
    if cluster and not args.distributed:
        raise ConfigError(f"{', '.join(cluster)} {'apply' if len(cluster) > 1 else 'applies'} "
                          "only with --distributed: add it, or drop them for a single-process "
                          "run")


def _check_plots(config: TrainConfig) -> None:
    from optjax.config import ConfigError

    if config.plots and importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("the plots need matplotlib, which is not installed: pip install "
                          "'optjax[train]', or pass --no-plots")


def _run(argv: Sequence[str] | None) -> int:
    from optjax.linalg.lapack import single_threaded

    with single_threaded():  # LAPACK threads only contend with XLA's on a CPU (see _lapack)
        return _run_command(argv)


def _run_command(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train":
        _check_train_args(args)
        if args.distributed:  # before anything touches a JAX backend
            _start_distributed(args)
        config = train_config(args)
        if args.print_config:
            print(json.dumps(config.to_dict(), indent=1))
            return 0
        _check_plots(config)
        from optjax.train.loop import train

        result = train(config, resume=args.resume, overwrite=args.overwrite)
        return 130 if result.ending == "interrupted" else 0
    from optjax.train.evaluate import evaluate

    report = evaluate(args.out_dir, step=args.step, split=args.split, data_dir=args.data_dir,
                      batch_size=args.batch_size)
    robust = None
    if args.robustness is not None:
        from optjax.train.evaluate import evaluate_robustness, robustness_lines

        epsilons = _radii(args.robustness)
        robust = evaluate_robustness(args.out_dir, epsilons, step=args.step, split=args.split,
                                     samples=args.robustness_samples, pgd_steps=args.pgd_steps,
                                     data_dir=args.data_dir, batch_size=args.batch_size)
    if args.json:
        from optjax.train.metrics import json_safe

        out = report.to_dict()
        if robust is not None:
            out["robustness"] = {k: ({str(e): a for e, a in v.items()} if isinstance(v, dict)
                                     else v) for k, v in robust.items()}
        print(json.dumps(json_safe(out), indent=1))
    else:
        for line in report.lines():
            print(f"{args.split}: {line}")
        for line in robustness_lines(robust) if robust is not None else ():
            print(f"{args.split} robustness: {line}")
    return 0


def _radii(text: str) -> list[float]:
    from optjax.config import ConfigError

    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--robustness takes comma-separated radii, e.g. 0.1,0.25,0.5; got "
                          f"{text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``optjax`` console script; returns the exit status."""
    from optjax.config import ConfigError
    from optjax.data import DataError
    from optjax.train.checkpoint import CheckpointError
    from optjax.train.loop import TrainingDiverged

    try:
        return _run(argv)
    except (ConfigError, DataError, CheckpointError, TrainingDiverged) as err:
        print(f"optjax: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
