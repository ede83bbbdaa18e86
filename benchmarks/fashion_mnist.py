"""Benchmark: OptEq, deep OptEq, DEQ, monDEQ and an explicit network of about the same size
trained on Fashion-MNIST with the same data, optimiser, schedule and augmentation.

    .venv/bin/python benchmarks/fashion_mnist.py --kind conv            # full data, 10 epochs
    .venv/bin/python benchmarks/fashion_mnist.py --kind conv --resume   # continue / add rows
    .venv/bin/python benchmarks/fashion_mnist.py                        # dense (as recorded)
    .venv/bin/python benchmarks/fashion_mnist.py --quick                # smoke run (~30 s)
    .venv/bin/python benchmarks/fashion_mnist.py --kind conv --measure-backward  # see below

Widths: ``--kind conv`` takes, per family, the width whose classifier's parameter count is
closest to ``--target`` (default 100,000; :func:`optjax.nn.classifiers.matched_width` with
``closest=True``); dense takes the largest width at most ``--target`` (120,000). The runs'
:class:`TrainConfig` differ only in ``family``, ``width`` and ``seed``. The implicit families
share the solver options (tol, forward cap, backward mode, cap and tolerance); each uses its own
default forward solver (OptEq: safeguarded Anderson; deep OptEq: Gauss-Seidel sweeps; DEQ:
Anderson with a relative ridge; monDEQ: Peaceman-Rachford with the FFT resolvent for conv).
Conv deep OptEq is the multi-scale chain (``tier_strides="2"``: the second tier on 7 x 7,
:data:`SWEEP_CHAIN`) that every recorded sweep row was trained with; the library's default,
both tiers on 14 x 14, is the ``same_scale`` row of ``benchmarks/deep_opteq_design.py``.
``--anderson-ridge`` overrides DEQ's ridge (the dense rows in RESULTS.md were measured with
1e-2 on jaxopt's Anderson, which went NaN with an absolute ridge 1e-10).

Conv defaults (the settings of the recorded comparison): AdamW lr 3e-3, weight decay 1e-2,
cosine schedule with 0.5 epochs of warm-up, gradient clip 1.0, batch 64, random crops of the
image padded by 2 and horizontal flips, tol 1e-3, forward cap 50, backward tolerance 1e-2
capped at 20 steps; monDEQ's caps are 100 forward and 40 backward (``--mondeq-caps``): a
Peaceman-Rachford step costs one FFT resolvent (about a fifth of one product with W on this
machine), and with the shared caps it stopped at them in training (RESULTS.md).

Every finished run is written as a row to ``benchmarks/results/fashion_mnist_<kind>.json``
(``--results``): ``family, kind, width, params, seed, epochs, train_size, test_size,
test_accuracy`` (a fraction), ``epoch_seconds`` (median over epochs after the first, which
includes compilation), ``forward_steps_mean`` / ``forward_steps_max`` and
``converged_fraction`` on the test set, the training-set forward steps and converged share of
the last epoch, OptEq's certified bound, and the configuration. Rows with the same family, seed,
epochs and training size are replaced. With ``--resume`` a run that already has a row is
skipped, and an interrupted run continues from its last checkpoint (bit-exact: the data order
and augmentation depend only on (seed, step)). Also printed and written to
``<out>/<kind>.md``: the table of this invocation's rows with each epoch time's ratio to
OptEq's. Times are wall-clock on whatever machine runs this: compare ratios measured in one
run, never absolute times across runs.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import jax

from optjax.nn.classifiers import HEAD_UNITS, matched_size, matched_width
from optjax.train.config import TrainConfig, saved_options
from optjax.train.loop import train
from fashion_mnist_rows import (clean, holds_the_rows_run, load_rows, report,  # noqa: E402
                                result_row, same_run, save_row, seed_summary, table)
from optjax.train.model import design_options, layer_options

FAMILIES = {"dense": ("opteq", "deq", "mondeq", "explicit"),
            # the order of the issue: OptEq and the CNN first, then deep OptEq, then baselines
            "conv": ("opteq", "explicit", "deep_opteq", "deq", "mondeq")}
DEFAULTS = {  # per kind: target, learning rate, warm-up, crop, flip, backward tol / cap
    "dense": dict(target=120000, learning_rate=1e-2, warmup_epochs=0.2, augment_crop=0,
                  augment_flip=False, backward_tol=None, backward_steps=30, anderson_ridge=1e-2),
    "conv": dict(target=100000, learning_rate=3e-3, warmup_epochs=0.5, augment_crop=2,
                 augment_flip=True, backward_tol=1e-2, backward_steps=20, anderson_ridge=0.0),
}
INPUT_SHAPE, NUM_CLASSES = (28, 28, 1), 10
#: Per kind and family, the model options every sweep run of that family gets (before a run's
#: own ``design``): conv deep OptEq keeps the multi-scale chain its rows were trained with, the
#: default before the design study made the one-grid chain the default (``--resume`` and new
#: seeds must add rows of the same model).
SWEEP_CHAIN = {"conv": {"deep_opteq": dict(tier_strides="2")}}


def sweep_design(kind: str, family: str, design: dict | None = None) -> dict:
    """The TrainConfig overrides of a sweep run: :data:`SWEEP_CHAIN`'s, then ``design``'s."""
    return {**SWEEP_CHAIN.get(kind, {}).get(family, {}), **(design or {})}


EPOCHS = 10  # the length of the recorded runs and of the sweep's


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("dense", "conv"), default="dense")
    parser.add_argument("--target", type=int, default=None,
                        help="parameter budget per model (dense 120000, conv 100000)")
    parser.add_argument("--match-head", action="store_true",
                        help="conv: also tune the head's hidden units so that every family "
                             "lands within about 1%% of --target (matched_size; needed at small "
                             "budgets, where one channel moves the count by about 14%%)")
    parser.add_argument("--lipschitz-margin", type=float, default=0.0,
                        help="train for certified robustness at this L2 radius (TrainConfig."
                             "lipschitz_margin; 0: off, the recorded runs)")
    parser.add_argument("--rho", type=float, default=None,
                        help="the OptEq layers' norm bound ||W|| <= rho (TrainConfig.rho; default "
                             "0.95): a smaller rho, a larger strong-convexity modulus 1 - rho^2 "
                             "and a smaller Lipschitz bound")
    parser.add_argument("--jacobian-penalty", type=float, default=0.0,
                        help="DEQ: weight of the Hutchinson Jacobian penalty (TrainConfig."
                             "jacobian_penalty; 0: off, the recorded runs)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--train-subset", type=int, default=60000,
                        help="first n training images (60000: all)")
    parser.add_argument("--test-subset", type=int, default=None,
                        help="first n test images (default: all 10000)")
    parser.add_argument("--families", default=None,
                        help="comma-separated, from opteq,deq,mondeq,deep_opteq,explicit "
                             "(default: dense opteq,deq,mondeq,explicit; conv "
                             "opteq,explicit,deep_opteq,deq,mondeq)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--warmup-epochs", type=float, default=None)
    parser.add_argument("--augment-crop", type=int, default=None)
    parser.add_argument("--augment-flip", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max-steps", type=int, default=50, help="forward solver step cap")
    parser.add_argument("--backward", default=None,
                        help="backward mode (default: dense gmres, conv auto = cg for OptEq, "
                             "Peaceman-Rachford on the adjoint for monDEQ, gmres for the others)")
    parser.add_argument("--backward-steps", type=int, default=None)
    parser.add_argument("--backward-tol", type=float, default=None)
    parser.add_argument("--mondeq-caps", default=None,
                        help="monDEQ's forward,backward step caps (conv default 100,40; dense: "
                             "the shared caps); 'shared' uses --max-steps and --backward-steps")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--anderson-ridge", type=float, default=None,
                        help="ridge of DEQ's Anderson solver; 0: the solver's default")
    parser.add_argument("--resume", action="store_true",
                        help="skip runs that have a row, continue interrupted ones")
    parser.add_argument("--results", default=None,
                        help="rows file (default benchmarks/results/fashion_mnist_<kind>.json)")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: print the table of the rows in --results")
    parser.add_argument("--measure-backward", action="store_true",
                        help="train nothing: for rows recorded without backward statistics, "
                             "measure them at the run's final checkpoint (--measure-batches "
                             "training batches, no update) and add them to the row")
    parser.add_argument("--measure-batches", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/out/fashion_mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 512 train / 512 test images, 1 epoch")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_subset, args.test_subset, args.epochs = 512, 512, 1
    for key, value in DEFAULTS[args.kind].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    mondeq_caps = args.mondeq_caps or ("100,40" if args.kind == "conv" else "shared")
    if mondeq_caps == "shared":
        args.family_caps = {}
    else:
        forward, backward = (int(v) for v in mondeq_caps.split(","))
        args.family_caps = {"mondeq": dict(max_steps=forward, backward_steps=backward)}
    if args.backward is None:
        args.backward = "gmres" if args.kind == "dense" else "auto"
    families = args.families or ",".join(FAMILIES[args.kind])
    args.families = [f.strip() for f in families.split(",") if f.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.results is None:
        args.results = ("benchmarks/out/fashion_mnist_quick.json" if args.quick
                        else f"benchmarks/results/fashion_mnist_{args.kind}.json")
    return args


def base_config(args) -> TrainConfig:
    """Everything but family and width, shared by all runs."""
    return TrainConfig(
        dataset="fashion-mnist", data_dir=args.data_dir,
        train_subset=args.train_subset if args.train_subset < 60000 else None,
        test_subset=args.test_subset, kind=args.kind, tol=args.tol, max_steps=args.max_steps,
        backward=args.backward, backward_steps=args.backward_steps,
        backward_tol=args.backward_tol, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        warmup_epochs=min(args.warmup_epochs, float(args.epochs)),
        augment_crop=args.augment_crop, augment_flip=args.augment_flip,
        anderson_ridge=args.anderson_ridge or None, lipschitz_margin=args.lipschitz_margin,
        jacobian_penalty=args.jacobian_penalty, progress=False, plots=False,
        **({"rho": args.rho} if args.rho is not None else {}),
        **({"family": "deq"} if args.jacobian_penalty else {}))  # the penalty is DEQ's alone


def setting(base: TrainConfig, target: int) -> str:
    """The folder of a (budget, augmentation) setting under ``--out/<kind>/``: empty for the
    recorded conv comparison (100,000 parameters, augmented), else e.g. ``p15000_noaug``, and
    ``p15000_noaug_ep20`` for a full-data run of another length than 10 epochs (``--resume``
    may change the epochs: a 20-epoch run must not continue a 10-epoch run's checkpoint)."""
    augmented = bool(base.augment_crop or base.augment_flip)
    margin = f"_lm{base.lipschitz_margin:g}" if base.lipschitz_margin else ""
    margin += f"_jp{base.jacobian_penalty:g}" if base.jacobian_penalty else ""
    margin += f"_rho{base.rho:g}" if base.rho != TrainConfig.rho else ""
    if base.epochs != EPOCHS and base.train_subset is None:  # not a --quick smoke run
        margin += f"_ep{base.epochs}"
    if base.kind == "dense" or (target == DEFAULTS["conv"]["target"] and augmented and
                                not margin):
        return ""
    return f"p{target}_{'aug' if augmented else 'noaug'}{margin}"


def run_family(base: TrainConfig, family: str, seed: int, target: int, out: pathlib.Path,
               resume: bool = False, caps: dict | None = None, match_head: bool = False,
               design: dict | None = None, name: str | None = None) -> dict:
    """Train one family at the width (and, with ``match_head``, head) matched to ``target``.
    ``design``: TrainConfig overrides of the model's shape (stem, head grid, deep chain);
    ``name``: the run's folder name in place of the family's."""
    design = sweep_design(base.kind, family, design)
    config = base.replace(family=family, seed=seed,
                          out_dir=str(out / base.kind / setting(base, target)
                                      / f"{name or family}_seed{seed}"),
                          **(caps or {}).get(family, {}), **design)
    options = {**design_options(config), **layer_options(config)}
    if match_head:
        width, head, count = matched_size(family, base.kind, INPUT_SHAPE, NUM_CLASSES, target,
                                          **options)
    else:
        (width, count), head = matched_width(family, base.kind, INPUT_SHAPE, NUM_CLASSES, target,
                                             closest=base.kind == "conv",
                                             **options), HEAD_UNITS
    config = config.replace(width=width, head_units=head)
    t0 = time.perf_counter()
    started = (config.out_path / "checkpoints").is_dir() and any(
        (config.out_path / "checkpoints").iterdir())
    result = train(config, resume=resume and started, overwrite=not (resume and started))
    wall = time.perf_counter() - t0
    if result.run.num_params != count:  # matched_width and the trained model must agree
        print(f"warning: {family}: matched_width counted {count} parameters, the trained model "
              f"has {result.run.num_params}", file=sys.stderr)
    epochs = [r for r in result.records if r["event"] == "epoch"]
    times = [r["time"] for r in epochs]
    later = times[1:] or times  # epoch 1 includes compilation
    report = result.report
    return {
        "family": family, "kind": base.kind, "seed": seed, "epochs": base.epochs,
        "train_size": base.train_subset or 60000, "test_size": report.num_samples,
        "width": width, "head_units": head, "target": target,
        "augmented": bool(base.augment_crop or base.augment_flip),
        "lipschitz_margin": base.lipschitz_margin, "jacobian_penalty": base.jacobian_penalty,
        "rho": base.rho, "run_dir": str(config.out_path), "config": config.to_dict(),
        "params": result.run.num_params,
        "test_accuracy": report.accuracy, "test_loss": report.loss,
        "epoch_time": statistics.median(later), "epoch_time_includes_compile": len(times) == 1,
        "epoch_times": times, "wall_time": wall,
        "test_steps_mean": report.steps_mean, "test_steps_max": report.steps_max,
        "test_converged": report.converged, "test_residual_max": report.residual_max,
        "bound_max": report.bound_max, "bound_median": report.bound_median,
        "train_steps_last_epoch": epochs[-1]["steps"],
        "train_converged_last_epoch": epochs[-1]["converged"],
        "train_backward_steps_last_epoch": epochs[-1].get("backward_steps"),
        "train_backward_converged_last_epoch": epochs[-1].get("backward_converged"),
        "per_epoch": [{k: r.get(k) for k in (
            "epoch", "time", "loss", "accuracy", "steps", "steps_max", "converged",
            "backward_steps", "backward_steps_max", "backward_converged", "test_loss",
            "test_accuracy", "test_steps", "test_converged")} for r in epochs],
    }


def measure_backward(results: pathlib.Path, out: pathlib.Path, batches: int) -> int:
    """Backward statistics for rows trained before the training metrics had them: the run's
    final checkpoint, its training step (augmentation included) on the first ``batches``
    batches of epoch 0, the updates discarded. Written to the row as ``backward_at_end``."""
    from optjax.train.checkpoint import Checkpoints
    from optjax.train.loop import epoch_order, prepare

    rows = load_rows(results)
    for row in rows:
        if row["family"] == "explicit" or row.get("train_backward_steps_last_epoch") is not None \
                or row.get("backward_at_end") is not None:
            continue
        run_dir = out / row["kind"] / f"{row['family']}_seed{row['seed']}"
        config = TrainConfig.from_dict({**saved_options(row["config"]), "out_dir": str(run_dir)})
        checkpoints = Checkpoints(run_dir / "checkpoints", config)
        step = checkpoints.latest_step() if (run_dir / "checkpoints").is_dir() else None
        same = holds_the_rows_run(row, run_dir)
        if step is None or not same or \
                step != row["epochs"] * (row["train_size"] // config.batch_size):
            print(f"[{row['family']} seed {row['seed']}] {run_dir} does not hold this row's run "
                  "at its final checkpoint: skipped")
            continue
        run = prepare(config)
        state, _ = checkpoints.restore(run.state, step)
        order = epoch_order(config.seed, 0, run.data.num_train)
        stats = []
        for b in range(batches):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            _, metrics = run.train_step(state, run.data.x_train[idx], run.data.y_train[idx])
            stats.append({k: float(metrics[k]) for k in ("backward_steps", "backward_steps_max",
                                                        "backward_converged")})
        row["backward_at_end"] = dict(
            batches=batches, checkpoint_step=step,
            steps_mean=statistics.mean(s["backward_steps"] for s in stats),
            steps_max=max(s["backward_steps_max"] for s in stats),
            converged=statistics.mean(s["backward_converged"] for s in stats))
        print(f"[{row['family']} seed {row['seed']}] backward at step {step}: "
              f"{row['backward_at_end']}", flush=True)
        results.write_text(json.dumps(clean(rows), indent=1) + "\n")
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    if args.report:
        rows = load_rows(pathlib.Path(args.results))
        print(report(rows) + "\n\n" + seed_summary(rows))
        return 0
    if args.measure_backward:
        return measure_backward(pathlib.Path(args.results), pathlib.Path(args.out),
                                args.measure_batches)
    base = base_config(args)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = pathlib.Path(args.results)
    header = (
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({platform.node()}); "
        f"fashion-mnist {args.kind}, {args.train_subset} train / {args.test_subset or 10000} test "
        f"images, {args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.learning_rate:g} "
        f"(warm-up {base.warmup_epochs:g} epochs, cosine), augmentation crop {args.augment_crop} "
        f"flip {args.augment_flip}; params {'closest to' if args.kind == 'conv' else '<='} "
        f"{args.target:,}; tol {args.tol:g}, forward cap {args.max_steps}, backward "
        f"{args.backward} tol {args.backward_tol} capped at {args.backward_steps}; forward "
        f"solvers: each family's default"
        + (f" (Anderson ridge {args.anderson_ridge:g})" if args.anderson_ridge else "")
        + (f"; OptEq norm bound rho {base.rho:g}" if args.rho is not None else "")
        + "".join(f"; {f} caps {c['max_steps']} forward, {c['backward_steps']} backward"
                  for f, c in args.family_caps.items()))
    print(header, flush=True)
    t0 = time.perf_counter()
    rows = []
    for seed in args.seeds:
        for family in args.families:
            probe = {"family": family, "kind": args.kind, "seed": seed, "epochs": args.epochs,
                     "train_size": args.train_subset, "target": args.target,
                     "augmented": bool(base.augment_crop or base.augment_flip),
                     "lipschitz_margin": args.lipschitz_margin,
                     "jacobian_penalty": args.jacobian_penalty, "rho": base.rho}
            done = [r for r in load_rows(results) if same_run(r, probe)]
            if args.resume and done:
                print(f"[{family} seed {seed}] has a row in {results}: skipped", flush=True)
                continue
            r = run_family(base, family, seed, args.target, out, resume=args.resume,
                           caps=args.family_caps, match_head=args.match_head)
            rows.append(r)
            save_row(results, result_row(r, r["config"]))
            print(f"[{family} seed {seed}] width {r['width']}, {r['params']:,} parameters: test "
                  f"accuracy {100 * r['test_accuracy']:.2f}%, epoch times "
                  f"{', '.join(f'{t:.1f}' for t in r['epoch_times'])} s, wall "
                  f"{r['wall_time']:.0f} s; row written to {results}", flush=True)
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
    (out / f"{args.kind}.json").write_text(json.dumps(clean(summary), indent=1) + "\n")
    (out / f"{args.kind}.md").write_text(header + "\n\n" + text + f"\n\n{notes}; total wall "
                                         f"time {total:.0f} s\n")
    print(f"written: {results}, {out / (args.kind + '.json')}, {out / (args.kind + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
