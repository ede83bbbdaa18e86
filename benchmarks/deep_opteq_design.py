"""Benchmark: the deep OptEq design study (benchmarks/RESULTS.md, "Deep OptEq design"). Variants
of the convolutional deep OptEq classifier, each matched to the same parameter budget
(:func:`optjax.nn.classifiers.matched_size`: width, then the head's units) and trained with the
same schedule on Fashion-MNIST (no augmentation, as the sweep); the single-scale OptEq
classifier trained alongside is the reference every variant must beat.

    .venv/bin/python benchmarks/deep_opteq_design.py --list                # the variants
    .venv/bin/python benchmarks/deep_opteq_design.py --epochs 2 --resume   # short runs (choose)
    .venv/bin/python benchmarks/deep_opteq_design.py --epochs 10 --variants opteq,three_14_14_7
    .venv/bin/python benchmarks/deep_opteq_design.py --report              # the table
    .venv/bin/python benchmarks/deep_opteq_design.py --quick               # smoke run

A variant is a set of :class:`optjax.train.config.TrainConfig` options (``tier_channels``,
``tier_strides``, ``stem_stride``, ``stem_channels``, ``head_grid``, ``sweep``, ``activation``,
``rho``, ``solver``): the number of scales and their resolution, the channel split across tiers,
where the parameters go (couplings, injection, head), the sweep, the activation per tier, the norm
margin and the forward solver, on top of the sweep's chain (``tier_strides="2"``, the multi-scale
chain the study started from: ``baseline``); ``same_scale`` is the library's default. Everything
else is the sweep's setting
(``benchmarks/fashion_mnist.py``: AdamW lr 3e-3, warm-up 0.5 epochs then cosine, batch 64, tol
1e-3, forward cap 50, backward tolerance 1e-2 capped at 20 steps). Rows go to
``benchmarks/results/deep_opteq_design.json`` (one per variant, seed, epochs, training size and
budget; ``--resume`` skips runs that have one and continues an interrupted run from its
checkpoint). Epoch times are wall-clock on whatever machine runs this: compare them within one
table only.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from flax import nnx

from optjax.train.config import TrainConfig
from optjax.train.model import build_model
from fashion_mnist import (INPUT_SHAPE, NUM_CLASSES, base_config,  # noqa: E402
                           parse as parse_sweep, run_family)
from fashion_mnist_rows import clean, fmt, load_rows, result_row  # noqa: E402

#: name -> (what it tries, family, TrainConfig options)
VARIANTS: dict[str, tuple[str, str, dict]] = {
    "opteq": ("reference: single-scale OptEq on the 14 x 14 grid", "opteq", {}),
    "baseline": ("two tiers of equal width, 14 x 14 -> 7 x 7 (the sweep's chain, the default "
                 "before this study)", "deep_opteq", {}),
    "same_scale": ("two tiers on 14 x 14 (stride 1), pooled to 7 x 7 as OptEq (the default "
                   "since this study)", "deep_opteq",
                   dict(tier_strides="1")),
    "split_1_2": ("two tiers, half the channels at 14 x 14, twice at 7 x 7", "deep_opteq",
                  dict(tier_channels="0.5,1")),
    "three_14_14_7": ("three tiers 14 -> 14 -> 7, channels 1/2/4 (monDEQ's multi-tier split)",
                      "deep_opteq", dict(tier_channels="0.5,1,2", tier_strides="1,2")),
    "three_28_14_7": ("three tiers 28 -> 14 -> 7 with a cheap first tier (stem stride 1)",
                      "deep_opteq", dict(stem_stride=1, tier_channels="0.25,0.5,1",
                                         tier_strides="2,2")),
    "three_14_7_7": ("three tiers 14 -> 7 -> 7, equal channels", "deep_opteq",
                     dict(tier_channels="1,1,1", tier_strides="2,1")),
    "jacobi": ("the baseline iterated with Jacobi sweeps", "deep_opteq", dict(sweep="jacobi")),
    "softplus_top": ("the baseline with softplus on the last tier (smooth output)",
                     "deep_opteq", dict(activation="relu,softplus")),
    "rho_0.8": ("the baseline with a wider norm margin, rho 0.8", "deep_opteq", dict(rho=0.8)),
    "rho_0.99": ("the baseline with a thinner norm margin, rho 0.99", "deep_opteq",
                 dict(rho=0.99)),
    "head_grid_3": ("parameters from the head into the chain: pooled to 3 x 3 before the head",
                    "deep_opteq", dict(head_grid=3)),
    "stem_16": ("parameters from the stem and injection into the chain: 16 stem channels",
                "deep_opteq", dict(stem_channels=16)),
    "unit_then_coarse": ("an OptEq unit layer on 14 x 14 (an identity tier of width channels "
                         "under a relu tier of twice as many: s_2 = relu(A A^T s_2 + ...)), "
                         "then a relu tier on 7 x 7", "deep_opteq",
                         dict(tier_channels="1,2,2", tier_strides="1,2",
                              activation="identity,relu,relu")),
    "units_two_scales": ("OptEq unit layers on 14 x 14 and on 7 x 7 (identity tiers under "
                         "relu tiers), chained", "deep_opteq",
                         dict(tier_channels="1,2,1,2", tier_strides="1,2,1",
                              activation="identity,relu,identity,relu")),
    "safeguarded_anderson": ("the baseline solved by safeguarded Anderson (the chain's "
                             "objective) in place of Gauss-Seidel sweeps", "deep_opteq",
                             dict(solver="safeguarded_anderson")),
}


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=None, help="comma-separated names [all]")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("--target", type=int, default=40000, help="parameter budget [40000]")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=60000)
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--results", default=None)
    parser.add_argument("--report", action="store_true", help="print the rows file's table")
    parser.add_argument("--reference-rows", default="benchmarks/results/fashion_mnist_sweep.json",
                        help="the sweep's rows: OptEq rows of the same setting serve as the "
                             "reference where this file has none")
    parser.add_argument("--out", default="benchmarks/out/deep_opteq_design")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 256 train / 256 test images, 1 epoch, 6,000 parameters")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_subset, args.test_subset, args.epochs, args.target = 256, 256, 1, 6000
    if args.results is None:
        args.results = ("benchmarks/out/deep_opteq_design_quick.json" if args.quick
                        else "benchmarks/results/deep_opteq_design.json")
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    args.variants = names
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    return args


def row_key(row: dict) -> tuple:
    return tuple(row.get(k) for k in ("variant", "seed", "epochs", "train_size", "target"))


def sweep_references(rows: list[dict]) -> list[dict]:
    """The sweep's OptEq rows (benchmarks/fashion_mnist_sweep.sh: the same setting, no
    augmentation) as design rows of the variant ``opteq``, so that full runs need not retrain
    the reference."""
    return [{**r, "variant": "opteq", "what": "reference: single-scale OptEq (sweep row)",
             "tiers": f"{r['width']} @ 14x14"}
            for r in rows if r["family"] == "opteq" and r["kind"] == "conv"
            and not r.get("augmented", True) and not r.get("lipschitz_margin")]


def report(rows: list[dict], references: list[dict] = ()) -> str:
    """Rows grouped by (budget, epochs, training size), each variant's accuracy and its
    difference to the OptEq reference of the same seed and group (a row of this file, else one
    of ``references``)."""
    out = []
    groups = sorted({(r["target"], r["epochs"], r["train_size"]) for r in rows})
    for target, epochs, size in groups:
        group = [r for r in rows if (r["target"], r["epochs"], r["train_size"]) == (
            target, epochs, size)]
        own = {r["seed"] for r in group if r["variant"] == "opteq"}
        group += [r for r in references if (r["target"], r["epochs"], r["train_size"]) == (
            target, epochs, size) and r["seed"] not in own
            and any(g["seed"] == r["seed"] for g in group)]
        ref = {r["seed"]: r for r in group if r["variant"] == "opteq"}
        out.append(f"budget {target:,} parameters, {epochs} epochs on {size:,} images:\n")
        out.append("| variant | what it tries | seed | width | tiers (channels @ grid) | params "
                   "| test acc | minus OptEq | epoch time (s) | time / OptEq | fwd steps test |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        order = list(VARIANTS)
        for r in sorted(group, key=lambda r: (order.index(r["variant"]) if r["variant"] in order
                                              else len(order), r["seed"])):
            base = ref.get(r["seed"])
            diff = None if base is None else 100 * (r["test_accuracy"] - base["test_accuracy"])
            ratio = None if base is None else r["epoch_seconds"] / base["epoch_seconds"]
            out.append(
                f"| {r['variant']} | {r['what']} | {r['seed']} | {r['width']} | {r['tiers']} | "
                f"{r['params']:,} | {100 * r['test_accuracy']:.2f}% | "
                f"{'-' if r['variant'] == 'opteq' else fmt(diff, '+.2f')} | "
                f"{r['epoch_seconds']:.0f} | {fmt(ratio, '.2f')} | "
                f"{fmt(r['forward_steps_mean'], '.1f')} |")
        out.append("")
    return "\n".join(out)


def tiers(model) -> str:
    """``c @ HxW`` per tier (one layer for OptEq)."""
    layer = model.layer
    if hasattr(layer, "grids"):
        return " / ".join(f"{c} @ {g[0]}x{g[1]}" for c, g in zip(layer.channels, layer.grids))
    return f"{layer.channels} @ {layer.spatial[0]}x{layer.spatial[1]}" if hasattr(
        layer, "spatial") else "-"


def main(argv=None) -> int:
    args = parse(argv)
    results = pathlib.Path(args.results)
    if args.list:
        for name, (what, family, options) in VARIANTS.items():
            print(f"{name:15s} {family:11s} {options}  {what}")
        return 0
    references = sweep_references(load_rows(pathlib.Path(args.reference_rows)))
    if args.report:
        print(report(load_rows(results), references))
        return 0
    sweep = parse_sweep(["--kind", "conv", "--augment-crop", "0", "--no-augment-flip",
                         "--epochs", str(args.epochs), "--train-subset", str(args.train_subset)]
                        + (["--test-subset", str(args.test_subset)] if args.test_subset else [])
                        + (["--data-dir", args.data_dir] if args.data_dir else []))
    base = base_config(sweep)
    out = pathlib.Path(args.out)
    for seed in args.seeds:
        for name in args.variants:
            what, family, design = VARIANTS[name]
            probe = dict(variant=name, seed=seed, epochs=args.epochs,
                         train_size=args.train_subset, target=args.target)
            if args.resume and any(row_key(r) == row_key(probe) for r in load_rows(results)):
                print(f"[{name} seed {seed}] has a row in {results}: skipped", flush=True)
                continue
            # the folder names the schedule: a 10-epoch run must not resume a 2-epoch one
            r = run_family(base, family, seed, args.target, out, resume=args.resume,
                           match_head=True, design=design, name=f"{name}_e{args.epochs}")
            config = TrainConfig.from_dict(r["config"])  # the model trained
            model = nnx.eval_shape(lambda: build_model(config, INPUT_SHAPE, NUM_CLASSES))
            row = {"variant": name, "what": what, "tiers": tiers(model),
                   **result_row(r, config.to_dict())}
            rows = [x for x in load_rows(results) if row_key(x) != row_key(row)] + [row]
            results.parent.mkdir(parents=True, exist_ok=True)
            results.write_text(json.dumps(clean(rows), indent=1) + "\n")
            print(f"[{name} seed {seed}] {row['tiers']}, {r['params']:,} parameters: test "
                  f"accuracy {100 * r['test_accuracy']:.2f}%, epoch times "
                  f"{', '.join(f'{t:.1f}' for t in r['epoch_times'])} s; row written to "
                  f"{results}", flush=True)
    print("\n" + report([r for r in load_rows(results) if r["variant"] in args.variants],
                        references))
    return 0


if __name__ == "__main__":
    sys.exit(main())
