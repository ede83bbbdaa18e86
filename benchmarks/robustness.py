"""Certified and empirical robustness of the trained Fashion-MNIST models (benchmarks/RESULTS.md,
"Certified robustness"): for every row of the rows files whose run's final checkpoint is on this
machine, ``optjax eval --robustness`` on the first ``--samples`` test images.

    .venv/bin/python benchmarks/robustness.py --results benchmarks/results/fashion_mnist_sweep.json
    .venv/bin/python benchmarks/robustness.py --report                  # the table, from the rows
    .venv/bin/python benchmarks/robustness.py --report --figure docs/figures

Rows (one per run) go to ``benchmarks/results/fashion_mnist_robustness.json``: the run's key
(family, budget, augmentation, Lipschitz margin, seed), its Lipschitz bound, the median
certified radius, and per radius the certified and the L2 PGD robust accuracy. Radii are in
the units of the standardised images the models see (per-pixel mean 0, standard deviation 1;
a 28 x 28 image has norm about 28). DEQ rows get no certified figure: a DEQ has no bound.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from fashion_mnist_rows import clean, holds_the_rows_run, load_rows, rho  # benchmarks/ on path

OUT = "benchmarks/results/fashion_mnist_robustness.json"
OPTEQ_FAMILIES = ("opteq", "deep_opteq")  # the families whose layers rho bounds
KEY = ("family", "target", "augmented", "lipschitz_margin", "seed")


def key(row: dict) -> tuple:
    """A run's key: ``KEY``, then its norm bound rho (rows without one had the default)."""
    return tuple(row.get(k) or (0.0 if k == "lipschitz_margin" else row.get(k))
                 for k in KEY) + (rho(row),)


def run_dir(row: dict, out_root: pathlib.Path) -> pathlib.Path:
    if row.get("run_dir"):
        return pathlib.Path(row["run_dir"])
    setting = f"p{row['target']}_{'aug' if row['augmented'] else 'noaug'}"
    return out_root / "conv" / setting / f"{row['family']}_seed{row['seed']}"


def measure(rows_files, out_root, epsilons, samples, pgd_steps, results: pathlib.Path) -> int:
    from optjax.train.evaluate import evaluate_robustness

    done = {key(r): r for r in load_rows(results)}
    for path in rows_files:
        for row in load_rows(pathlib.Path(path)):
            if key(row) in done:
                continue
            directory = run_dir(row, out_root)
            if not (directory / "checkpoints").is_dir():
                print(f"[{key(row)}] no checkpoint in {directory}: skipped", flush=True)
                continue
            if not holds_the_rows_run(row, directory):
                print(f"[{key(row)}] {directory} holds another run than this row's (its metrics "
                      "log differs: another length, or still training): skipped", flush=True)
                continue
            report = evaluate_robustness(directory, epsilons, samples=samples,
                                         pgd_steps=pgd_steps)
            entry = {k: row.get(k) for k in KEY} | {
                "lipschitz_margin": row.get("lipschitz_margin") or 0.0, "rho": rho(row),
                "params": row["params"], "test_accuracy": row["test_accuracy"],
                "samples": report["samples"], "pgd_steps": pgd_steps,
                "clean": report["clean"], "lipschitz": report["lipschitz"],
                "radius_median": report["radius_median"],
                "certified": {f"{e:g}": v for e, v in report["certified"].items()},
                "pgd": {f"{e:g}": v for e, v in report["pgd"].items()}}
            done[key(row)] = entry
            results.write_text(json.dumps(clean(list(done.values())), indent=1) + "\n")
            print(f"[{key(row)}] {json.dumps(clean(entry))}", flush=True)
    return 0


def table(rows: list[dict]) -> str:
    epsilons = sorted({e for r in rows for e in r["pgd"]}, key=float)
    head = ("| family | params | aug | margin | rho | seed | clean (subset) | Lipschitz bound | "
            "median radius | " + " | ".join(f"cert / PGD @ {e}" for e in epsilons) + " |")
    lines = [head, "|---" * (9 + len(epsilons)) + "|"]
    for r in sorted(rows, key=lambda r: (r["target"], r["family"], r["lipschitz_margin"],
                                         -rho(r), r["seed"])):
        cells = []
        for e in epsilons:
            cert = r["certified"].get(e)
            cells.append(f"{'-' if cert is None else f'{100 * cert:.1f}'} / "
                         f"{100 * r['pgd'][e]:.1f}")
        lip = "none" if r["lipschitz"] is None else f"{r['lipschitz']:.3g}"
        radius = "-" if r["radius_median"] is None else f"{r['radius_median']:.3g}"
        rho_cell = f"{rho(r):g}" if r["family"] in OPTEQ_FAMILIES else "-"
        lines.append(f"| {r['family']} | {r['params']:,} | {'yes' if r['augmented'] else 'no'} | "
                     f"{r['lipschitz_margin']:g} | {rho_cell} | {r['seed']} | "
                     f"{100 * r['clean']:.1f}% | {lip} | "
                     f"{radius} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(rows: list[dict], folder: pathlib.Path) -> pathlib.Path:
    """Certified accuracy against the radius (the clean accuracy at 0), one line per model that
    certifies something at one of the radii: colour by family, line style by Lipschitz margin,
    a circle at the default rho and a square at another. The models that certify nothing (every one trained as usual so far) are
    counted in the title, not drawn: their lines would all lie on 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    colours = {f: f"C{i}" for i, f in enumerate(sorted({r["family"] for r in rows}))}
    margins = sorted({r["lipschitz_margin"] for r in rows})
    styles = dict(zip(margins, ["-", "--", ":", "-."] * len(margins)))
    default_rho = rho({})  # TrainConfig's
    bounded = [r for r in rows if r["lipschitz"] is not None]
    drawn = [r for r in bounded if any(v for v in r["certified"].values())]
    for r in drawn:
        eps = sorted(r["certified"], key=float)
        ax.plot([0.0] + [float(e) for e in eps],
                [100 * r["clean"]] + [100 * r["certified"][e] for e in eps],
                color=colours[r["family"]], linestyle=styles[r["lipschitz_margin"]],
                marker="o" if rho(r) == default_rho else "s",
                label=f"{r['family']} {round(r['params'] / 1000)}K"
                      + (f", margin {r['lipschitz_margin']:g}" if r["lipschitz_margin"] else "")
                      + (f", rho {rho(r):g}" if rho(r) != default_rho else "")
                      + f", seed {r['seed']}")
    ax.set_xlabel("L2 radius (standardised images)")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_title("Fashion-MNIST test subset: certified accuracy\n"
                 f"({len(bounded) - len(drawn)} bounded models certify 0% at every radius: "
                 "not drawn)", fontsize=9)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path = folder / "certified_accuracy.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", nargs="*", default=["benchmarks/results/fashion_mnist_sweep.json"])
    parser.add_argument("--out-root", default="benchmarks/out/fashion_mnist",
                        help="where fashion_mnist.py wrote the runs (its --out)")
    parser.add_argument("--eps", default="0.1,0.25,0.5")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--pgd-steps", type=int, default=100)
    parser.add_argument("--rows", default=OUT, help="the robustness rows file")
    parser.add_argument("--report", action="store_true", help="measure nothing: print the table")
    parser.add_argument("--figure", default=None, help="with --report: write the PNG here")
    args = parser.parse_args(argv)
    rows_path = pathlib.Path(args.rows)
    if args.report:
        rows = load_rows(rows_path)
        print(table(rows))
        if args.figure:
            print(f"written: {figure(rows, pathlib.Path(args.figure))}")
        return 0
    epsilons = [float(e) for e in args.eps.split(",")]
    return measure(args.results, pathlib.Path(args.out_root), epsilons, args.samples,
                   args.pgd_steps, rows_path)


if __name__ == "__main__":
    sys.exit(main())
