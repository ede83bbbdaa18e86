"""Benchmark: OptEq, DEQ, monDEQ and an explicit network of the same size trained on
Fashion-MNIST at matched parameter counts, with the same budget, side by side in one run.

    .venv/bin/python benchmarks/fashion_mnist.py     # dense, full data, 10 epochs (~3 min here)
    .venv/bin/python benchmarks/fashion_mnist.py --kind conv --train-subset 640 --test-subset 1000 --epochs 2
    .venv/bin/python benchmarks/fashion_mnist.py --quick   # smoke run: 512 images, 1 epoch (~30 s)

(the two runs recorded in RESULTS.md; the conv one took 23 minutes on 2 CPU cores, 20 of them
monDEQ's.)

Each family's width is the largest whose classifier has at most ``--target`` parameters
(:func:`optjax.nn.classifiers.matched_width`); the implicit families share the solver options
(tol, forward step cap, backward mode and cap). The runs' :class:`TrainConfig` differ only in
``family`` and ``width``: same data, epochs, batch, optimiser, schedule and seed. DEQ's
Anderson solver is built with ``--anderson-ridge`` (default 1e-2) instead of optjax's 1e-10,
which made DEQ training go NaN (``TrainConfig.anderson_ridge``): jaxopt's Anderson adds an
absolute ridge to the Gram matrix of the last residuals and solves the bordered system in
float32; when the history holds early residuals of norm ~30 (the injections reach norm ~400
during training) next to residuals near tol, that system is singular at float32 precision and
one sample's iterate comes out NaN. Measured on the dense DEQ, full data, lr 1e-2: NaN at step
797 with ridge 1e-10, step 852 with 1e-6, step 2280 with 1e-4; 1e-2 trained all 10 epochs.

Printed (and written to ``<out>/<kind>.json`` and ``<out>/<kind>.md``): family, width,
parameters, test accuracy after the last epoch, median epoch time (epochs after the first,
which includes compilation; the first epoch only when there is one), its ratio to OptEq's in
this run, forward solver steps on the test set (mean / max), the share of test samples whose
solve reached tol, and OptEq's largest certified bound ``F(z) - F* <= r^2 / 2 mu`` on the test
set. Times are wall-clock on whatever machine runs this: compare the ratios, never absolute
times across runs.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import statistics
import sys
import time

import jax

from optjax.nn.classifiers import matched_width
from optjax.train.config import TrainConfig
from optjax.train.loop import train
from optjax.train.model import layer_options

FAMILIES = ("opteq", "deq", "mondeq", "explicit")
INPUT_SHAPE, NUM_CLASSES = (28, 28, 1), 10


def _fmt(value, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


def _clean(value):
    """JSON-safe: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("dense", "conv"), default="dense")
    parser.add_argument("--target", type=int, default=120000, help="parameter budget per model")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-subset", type=int, default=60000,
                        help="first n training images (60000: all)")
    parser.add_argument("--test-subset", type=int, default=None,
                        help="first n test images (default: all 10000)")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help="comma-separated, from opteq,deq,mondeq,deep_opteq,explicit")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--warmup-epochs", type=float, default=0.2)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max-steps", type=int, default=50, help="forward solver step cap")
    parser.add_argument("--backward", default="gmres")
    parser.add_argument("--backward-steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--anderson-ridge", type=float, default=1e-2,
                        help="ridge of the Anderson solver (DEQ's default forward solver); "
                             "0: optjax's default 1e-10, which gives NaN in float32 (see the docstring)")
    parser.add_argument("--out", default="benchmarks/out/fashion_mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 512 train / 512 test images, 1 epoch")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_subset, args.test_subset, args.epochs = 512, 512, 1
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    return args


def base_config(args) -> TrainConfig:
    """Everything but family and width, shared by all runs."""
    return TrainConfig(
        dataset="fashion-mnist", data_dir=args.data_dir,
        train_subset=args.train_subset if args.train_subset < 60000 else None,
        test_subset=args.test_subset, kind=args.kind, tol=args.tol, max_steps=args.max_steps,
        backward=args.backward, backward_steps=args.backward_steps, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        warmup_epochs=min(args.warmup_epochs, float(args.epochs)), seed=args.seed,
        anderson_ridge=args.anderson_ridge or None, progress=False, plots=False)


def run_family(base: TrainConfig, family: str, target: int, out: pathlib.Path) -> dict:
    config = base.replace(family=family, out_dir=str(out / base.kind / family))
    width, count = matched_width(family, base.kind, INPUT_SHAPE, NUM_CLASSES, target,
                                 **layer_options(config))
    config = config.replace(width=width)
    t0 = time.perf_counter()
    result = train(config, overwrite=True)
    wall = time.perf_counter() - t0
    if result.run.num_params != count:  # matched_width and the trained model must agree
        print(f"warning: {family}: matched_width counted {count} parameters, the trained model "
              f"has {result.run.num_params}", file=sys.stderr)
    epochs = [r for r in result.records if r["event"] == "epoch"]
    times = [r["time"] for r in epochs]
    later = times[1:] or times  # epoch 1 includes compilation
    report = result.report
    return {
        "family": family, "width": width, "params": result.run.num_params,
        "test_accuracy": report.accuracy, "test_loss": report.loss,
        "epoch_time": statistics.median(later), "epoch_time_includes_compile": len(times) == 1,
        "epoch_times": times, "wall_time": wall,
        "test_steps_mean": report.steps_mean, "test_steps_max": report.steps_max,
        "test_converged": report.converged, "test_residual_max": report.residual_max,
        "bound_max": report.bound_max, "bound_median": report.bound_median,
        "train_steps_last_epoch": epochs[-1]["steps"],
        "train_converged_last_epoch": epochs[-1]["converged"],
        "epochs": [{k: r[k] for k in ("epoch", "time", "loss", "accuracy", "steps", "steps_max",
                                      "converged", "test_loss", "test_accuracy", "test_steps",
                                      "test_converged")} for r in epochs],
    }


def table(rows: list[dict]) -> str:
    reference = next((r["epoch_time"] for r in rows if r["family"] == "opteq"), None)
    lines = [("| family | width | params | test acc | epoch time (s) | time / OptEq | "
              "fwd steps test (mean / max) | converged (test) | OptEq bound max |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        implicit = r["family"] != "explicit"
        ratio = r["epoch_time"] / reference if reference else None
        steps = f"{r['test_steps_mean']:.1f} / {r['test_steps_max']:.0f}" if implicit else "-"
        lines.append(
            f"| {r['family']} | {r['width']} | {r['params']:,} | {100 * r['test_accuracy']:.2f}% | "
            f"{r['epoch_time']:.1f}{'*' if r['epoch_time_includes_compile'] else ''} | "
            f"{_fmt(ratio, '.2f')} | {steps} | "
            f"{_fmt(100 * r['test_converged'] if implicit else None, '.1f')}"
            f"{'%' if implicit else ''} | {_fmt(r['bound_max'], '.2e')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    base = base_config(args)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = (
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({platform.node()}); "
        f"fashion-mnist {args.kind}, {args.train_subset} train / {args.test_subset or 10000} test "
        f"images, {args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.learning_rate:g} "
        f"(warm-up {base.warmup_epochs:g} epochs, cosine), seed {args.seed}; <= {args.target:,} "
        f"parameters; tol {args.tol:g}, forward cap {args.max_steps}, backward {args.backward} "
        f"capped at {args.backward_steps}; forward solvers: each family's default"
        + (f" (Anderson ridge {args.anderson_ridge:g})" if args.anderson_ridge else ""))
    print(header, flush=True)
    t0 = time.perf_counter()
    rows = []
    for family in args.families:
        rows.append(run_family(base, family, args.target, out))
        r = rows[-1]
        print(f"[{family}] width {r['width']}, {r['params']:,} parameters: test accuracy "
              f"{100 * r['test_accuracy']:.2f}%, epoch times "
              f"{', '.join(f'{t:.1f}' for t in r['epoch_times'])} s, wall {r['wall_time']:.0f} s",
              flush=True)
    total = time.perf_counter() - t0
    text = table(rows)
    notes = (f"epoch time: median over epochs 2..{args.epochs} (epoch 1 includes compilation)"
             if args.epochs > 1 else "epoch time*: the only epoch, compilation included")
    print("\n" + text + f"\n\n{notes}; total wall time {total:.0f} s")
    counts = [r["params"] for r in rows]
    summary = {"command": " ".join(sys.argv), "header": header, "args": vars(args),
               "config": base.to_dict(), "total_wall_time": total,
               "param_gap": (max(counts) - min(counts)) / max(counts) if counts else None,
               "rows": rows}
    (out / f"{args.kind}.json").write_text(json.dumps(_clean(summary), indent=1) + "\n")
    (out / f"{args.kind}.md").write_text(header + "\n\n" + text + f"\n\n{notes}; total wall "
                                         f"time {total:.0f} s\n")
    print(f"written: {out / (args.kind + '.json')}, {out / (args.kind + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
