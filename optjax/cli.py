"""The ``optjax`` command: ``optjax train`` and ``optjax eval``.

Options come from defaults, then a ``--config`` file (JSON or TOML), then flags; with
``--resume`` the run's own configuration (saved in its checkpoint) replaces the defaults.
Errors in the input (unknown options, bad values, missing data, damaged checkpoints) end with a
one-paragraph message and exit status 2; an interrupted run exits with 130 after saving a
checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from typing import Any, Sequence

__all__ = ["main", "train_config"]


def _field_type(name: str):
    from optjax.train.config import TrainConfig

    hint = typing.get_type_hints(TrainConfig)[name]
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    base = next(a for a in args if a is not type(None))
    return base, type(None) in args


def _parser_for(base, optional: bool, flag: str):
    def parse(text: str):
        if optional and text.lower() in ("none", "null", ""):
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} expects {base.__name__}" + (" or 'none'" if optional else "")
                + f", got {text!r}") from None
    return parse


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from optjax.train.config import TrainConfig

    defaults = TrainConfig()
    group = parser.add_argument_group("options (see TrainConfig; default in brackets)")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        base, optional = _field_type(field.name)
        default = getattr(defaults, field.name)
        if base is bool:
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=f"[{default}]")
        else:
            group.add_argument(flag, dest=field.name, type=_parser_for(base, optional, flag),
                               default=argparse.SUPPRESS, metavar=base.__name__.upper(),
                               help=f"[{default}]")


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
                       help="continue the run in --out-dir from its latest checkpoint, exactly")
    train.add_argument("--overwrite", action="store_true",
                       help="delete the checkpoints and metrics already in --out-dir")
    train.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() first (multi-host runs: start "
                       "the same command on every host)")
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
    return parser


def train_config(args: argparse.Namespace):
    """The :class:`TrainConfig` of ``optjax train`` arguments."""
    from optjax.train.checkpoint import Checkpoints
    from optjax.train.config import TrainConfig, load_file

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if hasattr(args, f.name)}
    from_file = load_file(args.config) if args.config else {}
    options: dict[str, Any] = {}
    if args.resume:
        out_dir = flags.get("out_dir", from_file.get("out_dir", TrainConfig().out_dir))
        probe = Checkpoints(f"{out_dir}/checkpoints", TrainConfig(out_dir=out_dir))
        latest = probe.latest_step()
        if latest is not None:
            options.update(probe.read_meta(latest).get("config", {}))
            options.pop("stop_after", None)  # where the last part stopped; not this part
    options.update(from_file)
    options.update(flags)
    return TrainConfig.from_dict(options)


def _run(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train":
        if args.distributed:
            import jax

            jax.distributed.initialize()  # cluster settings from the environment
        from optjax.train.loop import train

        config = train_config(args)
        if args.print_config:
            print(json.dumps(config.to_dict(), indent=1))
            return 0
        result = train(config, resume=args.resume, overwrite=args.overwrite)
        return 130 if result.ending == "interrupted" else 0
    from optjax.train.evaluate import evaluate

    report = evaluate(args.out_dir, step=args.step, split=args.split, data_dir=args.data_dir,
                      batch_size=args.batch_size)
    if args.json:
        from optjax.train.metrics import json_safe

        print(json.dumps(json_safe(report.to_dict()), indent=1))
    else:
        for line in report.lines():
            print(f"{args.split}: {line}")
    return 0


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
