"""Report of the parameter sweep (benchmarks/fashion_mnist_sweep.sh): tables per budget and
figures, from the rows file alone (trains nothing).

    .venv/bin/python benchmarks/sweep_report.py                      # tables to stdout
    .venv/bin/python benchmarks/sweep_report.py --figures docs/figures
    .venv/bin/python benchmarks/sweep_report.py --long benchmarks/results/fashion_mnist_long.json

Tables: for every (budget, augmentation) setting, test accuracy per family over seeds (mean, sd)
with the paired difference to OptEq per seed (a seed fixes the initialisation and the data
order of every family), the training and test losses after the last epoch (does a family fit
less, or generalise less?), and forward solver steps per training epoch of the implicit
families.
Figures: ``accuracy_per_parameter.png`` (test accuracy against parameters, one line per family,
error bars the seeds' standard deviation; rows without augmentation) and
``forward_steps_per_epoch.png`` (training forward steps per epoch, one panel per budget, and
with ``--long`` one more per budget of the longer runs in that rows file: the same setting
trained for more epochs, to show the step counts past the sweep's 10).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

from fashion_mnist_rows import load_rows, seed_summary  # benchmarks/ is on sys.path

ORDER = ("opteq", "deep_opteq", "deq", "mondeq", "explicit")
DEFAULT_ROWS = "benchmarks/results/fashion_mnist_sweep.json"


def settings(rows: list[dict]) -> list[tuple[int, bool]]:
    """The (target, augmented) settings present, by budget."""
    return sorted({(r["target"], bool(r["augmented"])) for r in rows})


def rows_of(rows: list[dict], target: int, augmented: bool) -> list[dict]:
    picked = [r for r in rows if r["target"] == target and bool(r["augmented"]) == augmented]
    rank = {f: i for i, f in enumerate(ORDER)}
    return sorted(picked, key=lambda r: (rank.get(r["family"], len(ORDER)), r["seed"]))


def steps_table(rows: list[dict]) -> str:
    """Training forward steps per epoch (mean over the epoch's batches), mean over seeds."""
    implicit = [r for r in rows if r["family"] != "explicit"]
    if not implicit:
        return "(no implicit rows)"
    epochs = max(len(r["per_epoch"]) for r in implicit)
    lines = ["| family | seeds | " + " | ".join(f"ep {e + 1}" for e in range(epochs)) + " |",
             "|---" * (epochs + 2) + "|"]
    for family in dict.fromkeys(r["family"] for r in implicit):
        runs = [r for r in implicit if r["family"] == family]
        cells = []
        for e in range(epochs):
            values = [r["per_epoch"][e]["steps"] for r in runs if len(r["per_epoch"]) > e]
            cells.append(f"{statistics.mean(values):.1f}" if values else "-")
        lines.append(f"| {family} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def losses_table(rows: list[dict]) -> str:
    """Per family and seed: the last epoch's training loss (the mean over its batches, while
    the weights still change) and the test loss after it; means over seeds, and the gap."""
    measured = [r for r in rows if r.get("per_epoch") and "loss" in r["per_epoch"][-1]
                and r.get("test_loss") is not None]
    if not measured:
        return "(no loss figures in these rows)"
    lines = ["| family | seeds | train loss per seed | test loss per seed | mean train | "
             "mean test | test minus train |", "|---|---|---|---|---|---|---|"]
    for family in dict.fromkeys(r["family"] for r in measured):
        runs = [r for r in measured if r["family"] == family]
        train = [r["per_epoch"][-1]["loss"] for r in runs]
        test = [r["test_loss"] for r in runs]
        gap = statistics.mean(t - s for s, t in zip(train, test))
        lines.append(f"| {family} | {', '.join(str(r['seed']) for r in runs)} | "
                     + " / ".join(f"{v:.4f}" for v in train) + " | "
                     + " / ".join(f"{v:.4f}" for v in test)
                     + f" | {statistics.mean(train):.4f} | {statistics.mean(test):.4f} | "
                     f"{gap:+.4f} |")
    return "\n".join(lines)


def params_line(rows: list[dict]) -> str:
    counts = {r["family"]: r["params"] for r in rows}
    gap = (max(counts.values()) - min(counts.values())) / max(counts.values())
    return ("parameters: " + ", ".join(f"{f} {n:,}" for f, n in counts.items())
            + f" (largest gap {100 * gap:.1f}%)")


def text_report(rows: list[dict]) -> str:
    parts = []
    for target, augmented in settings(rows):
        picked = rows_of(rows, target, augmented)
        parts.append(f"### {target:,} parameters, {'with' if augmented else 'no'} augmentation\n")
        parts.append(params_line(picked) + "\n")
        parts.append(seed_summary(picked) + "\n")
        parts.append("Losses after the last epoch (training: the mean over that epoch's batches):\n")
        parts.append(losses_table(picked) + "\n")
        parts.append("Forward steps per training epoch (mean over batches and seeds):\n")
        parts.append(steps_table(picked) + "\n")
    return "\n".join(parts)


def figures(rows: list[dict], out: pathlib.Path,
            long_rows: list[dict] | None = None) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    plain = [r for r in rows if not r["augmented"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for family in [f for f in ORDER if any(r["family"] == f for r in plain)]:
        points = []
        for target in sorted({r["target"] for r in plain}):
            runs = [r for r in plain if r["family"] == family and r["target"] == target]
            if runs:
                acc = [100 * r["test_accuracy"] for r in runs]
                sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
                points.append((statistics.mean(r["params"] for r in runs),
                               statistics.mean(acc), sd, len(acc)))
        xs, ys, es, ns = zip(*points)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=f"C{ORDER.index(family)}",
                    label=f"{family} (seeds: {'/'.join(map(str, ns))})")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fashion-MNIST, 10 epochs, no augmentation")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    accuracy = out / "accuracy_per_parameter.png"
    fig.savefig(accuracy, dpi=120)
    plt.close(fig)

    panels = [(target, rows, f"{target:,} parameters")
              for target in sorted({r["target"] for r in rows})]
    long_rows = long_rows or []
    for target in sorted({r["target"] for r in long_rows}):
        epochs = max(r["epochs"] for r in long_rows if r["target"] == target)
        panels.append((target, long_rows, f"{target:,} parameters, {epochs} epochs"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5), squeeze=False)
    for ax, (target, source, title) in zip(axes[0], panels):
        for family in ORDER:
            runs = [r for r in source if r["family"] == family and r["target"] == target
                    and r["family"] != "explicit" and not r["augmented"]]
            if not runs:
                continue
            epochs = min(len(r["per_epoch"]) for r in runs)
            mean = [statistics.mean(r["per_epoch"][e]["steps"] for r in runs)
                    for e in range(epochs)]
            # one colour per family in every panel (a panel may lack a family)
            ax.plot(range(1, epochs + 1), mean, marker=".", label=family,
                    color=f"C{ORDER.index(family)}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("forward steps per batch (train)")
    fig.tight_layout()
    steps = out / "forward_steps_per_epoch.png"
    fig.savefig(steps, dpi=120)
    plt.close(fig)
    return [accuracy, steps]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=DEFAULT_ROWS)
    parser.add_argument("--figures", default=None, help="write the PNG figures into this folder")
    parser.add_argument("--long", default=None,
                        help="rows file of longer runs: their tables, and a steps panel each")
    args = parser.parse_args(argv)
    rows = load_rows(pathlib.Path(args.results))
    long_rows = load_rows(pathlib.Path(args.long)) if args.long else []
    if not rows or (args.long and not long_rows):
        print(f"no rows in {args.results if not rows else args.long}")
        return 1
    print(text_report(rows))
    if long_rows:
        print(f"## Longer runs ({args.long})\n\n" + text_report(long_rows))
    if args.figures:
        for path in figures(rows, pathlib.Path(args.figures), long_rows):
            print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
