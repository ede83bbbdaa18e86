"""The rows of benchmarks/fashion_mnist.py: the committed rows file (one run a row), its tables,
and the summaries over seeds, budgets and augmentation (benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
import math
import pathlib
import statistics

__all__ = ["fmt", "clean", "table", "result_row", "rho", "key", "same_run", "load_rows", "save_row",
           "report", "seed_summary", "holds_the_rows_run", "RECORDED_TARGETS"]

# The budget of rows written before the sweep recorded one (the recorded comparisons).
RECORDED_TARGETS = {"dense": 120000, "conv": 100000}


def fmt(value, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


def clean(value):
    """JSON-safe: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def table(rows: list[dict]) -> str:
    reference = next((r["epoch_time"] for r in rows if r["family"] == "opteq"), None)
    lines = [("| family | seed | width | params | test acc | epoch time (s) | time / OptEq | "
              "fwd steps test (mean / max) | converged (test) | OptEq bound max |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        implicit = r["family"] != "explicit"
        ratio = r["epoch_time"] / reference if reference else None
        steps = f"{r['test_steps_mean']:.1f} / {r['test_steps_max']:.0f}" if implicit else "-"
        lines.append(
            f"| {r['family']} | {r['seed']} | {r['width']} | {r['params']:,} | {100 * r['test_accuracy']:.2f}% | "
            f"{r['epoch_time']:.1f}{'*' if r['epoch_time_includes_compile'] else ''} | "
            f"{fmt(ratio, '.2f')} | {steps} | "
            f"{fmt(100 * r['test_converged'] if implicit else None, '.1f')}"
            f"{'%' if implicit else ''} | {fmt(r['bound_max'], '.2e')} |")
    return "\n".join(lines)


def result_row(r: dict, config: dict) -> dict:
    """The committed row: the fields RESULTS.md and the issue name, then the details."""
    return {
        "family": r["family"], "kind": r["kind"], "width": r["width"],
        "head_units": r["head_units"], "target": r["target"], "augmented": r["augmented"],
        "lipschitz_margin": r["lipschitz_margin"],
        "jacobian_penalty": r.get("jacobian_penalty", 0.0), "rho": rho(r),
        "run_dir": r["run_dir"],
        "params": r["params"],
        "seed": r["seed"], "epochs": r["epochs"], "train_size": r["train_size"],
        "test_size": r["test_size"], "test_accuracy": r["test_accuracy"],
        "test_loss": r["test_loss"], "epoch_seconds": r["epoch_time"],
        "epoch_seconds_all": r["epoch_times"], "forward_steps_mean": r["test_steps_mean"],
        "forward_steps_max": r["test_steps_max"], "converged_fraction": r["test_converged"],
        "train_forward_steps_last_epoch": r["train_steps_last_epoch"],
        "train_converged_last_epoch": r["train_converged_last_epoch"],
        "train_backward_steps_last_epoch": r["train_backward_steps_last_epoch"],
        "train_backward_converged_last_epoch": r["train_backward_converged_last_epoch"],
        "bound_max": r["bound_max"], "bound_median": r["bound_median"],
        "per_epoch": r["per_epoch"], "config": config,
    }


def rho(row: dict) -> float:
    """The OptEq layers' norm bound ``||W|| <= rho`` of a row's run (rows before ``--rho``
    existed carry it in their config only; TrainConfig's default where neither has it)."""
    from optjax.train.config import TrainConfig

    return row.get("rho") or (row.get("config") or {}).get("rho") or TrainConfig.rho


def key(row: dict) -> tuple:
    """What makes two rows the same run; rows written before the sweep had no target and
    augmentation fields: they are the recorded comparison's (kind default, augmented conv)."""
    kind = row.get("kind")
    target = row.get("target") or RECORDED_TARGETS.get(kind)
    augmented = row.get("augmented", kind == "conv")
    return tuple(row.get(k) for k in ("family", "kind", "seed", "epochs", "train_size")) + (
        target, augmented, row.get("lipschitz_margin") or 0.0, row.get("jacobian_penalty") or 0.0,
        rho(row))


def same_run(a: dict, b: dict) -> bool:
    return key(a) == key(b)


def holds_the_rows_run(row: dict, run_dir: pathlib.Path) -> bool:
    """Whether ``run_dir`` holds the finished run that ``row`` records: its metrics log has the
    row's epochs with the row's last training loss. (A folder is reused by another run of the
    same family, seed and setting, e.g. one still training, or of another length before the
    folder names carried it.)"""
    from optjax.train.metrics import read_metrics

    log = run_dir / "metrics.jsonl"
    if not log.is_file() or not row.get("per_epoch"):
        return False
    logged = read_metrics(log, "epoch")
    return len(logged) == len(row["per_epoch"]) and \
        logged[-1]["loss"] == row["per_epoch"][-1]["loss"]


def load_rows(path: pathlib.Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def save_row(path: pathlib.Path, row: dict) -> None:
    rows = [r for r in load_rows(path) if not same_run(r, row)] + [row]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(rows), indent=1) + "\n")


def report(rows: list[dict]) -> str:
    """The committed rows as a table, by family (in order of first appearance) then seed; time
    ratios to OptEq of the same seed."""
    order = {f: i for i, f in enumerate(dict.fromkeys(r["family"] for r in rows))}
    rows = sorted(rows, key=lambda r: (order[r["family"]], r["seed"]))
    opteq = {r["seed"]: r["epoch_seconds"] for r in rows if r["family"] == "opteq"}
    lines = [("| family | seed | width | params | test acc | epoch time (s) | time / OptEq | "
              "fwd steps test (mean / max) | converged (test) | converged (train, last "
              "epoch) | bwd steps (train, last epoch) | bwd converged | OptEq bound max |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        implicit = r["family"] != "explicit"
        ratio = r["epoch_seconds"] / opteq[r["seed"]] if r["seed"] in opteq else None
        steps = (f"{r['forward_steps_mean']:.1f} / {r['forward_steps_max']:.0f}"
                 if implicit else "-")
        train_conv = r.get("train_converged_last_epoch")
        bwd, bwd_conv = (r.get("train_backward_steps_last_epoch"),
                         r.get("train_backward_converged_last_epoch"))
        at_end = r.get("backward_at_end")
        mark = ""
        if bwd is None and at_end is not None:  # measured afterwards (--measure-backward)
            bwd, bwd_conv, mark = at_end["steps_mean"], at_end["converged"], "*"
        lines.append(
            f"| {r['family']} | {r['seed']} | {r['width']} | {r['params']:,} | "
            f"{100 * r['test_accuracy']:.2f}% | {r['epoch_seconds']:.0f} | {fmt(ratio, '.2f')} | "
            f"{steps} | {fmt(100 * r['converged_fraction'] if implicit else None, '.1f')}"
            f"{'%' if implicit else ''} | "
            f"{fmt(100 * train_conv if implicit and train_conv is not None else None, '.1f')}"
            f"{'%' if implicit and train_conv is not None else ''} | "
            f"{fmt(bwd, '.1f')}{mark} | "
            f"{fmt(None if bwd_conv is None else 100 * bwd_conv, '.1f')}"
            f"{'' if bwd_conv is None else '%'}{mark} | {fmt(r['bound_max'], '.2e')} |")
    return "\n".join(lines)


def seed_summary(rows: list[dict]) -> str:
    """Test accuracy over seeds per family (rows of the same epochs and training size as the
    family's first), with the per-seed difference to OptEq on the seeds both have: a paired
    comparison, since a seed fixes the initialisation and the data order for every family."""
    by_family: dict[str, dict[int, float]] = {}
    first: dict[str, dict] = {}
    for r in rows:
        head = first.setdefault(r["family"], r)
        if (r["epochs"], r["train_size"]) == (head["epochs"], head["train_size"]):
            by_family.setdefault(r["family"], {})[r["seed"]] = 100 * r["test_accuracy"]
    opteq = by_family.get("opteq", {})
    lines = ["| family | seeds | test acc per seed | mean | sd | OptEq minus family, per seed | "
             "mean difference |", "|---|---|---|---|---|---|---|"]
    for family, accs in by_family.items():
        seeds = sorted(accs)
        values = [accs[s] for s in seeds]
        sd = f"{statistics.stdev(values):.2f}" if len(values) > 1 else "-"
        shared = [s for s in seeds if s in opteq] if family != "opteq" else []
        diffs = [opteq[s] - accs[s] for s in shared]
        lines.append(
            f"| {family} | {', '.join(map(str, seeds))} | "
            f"{' / '.join(f'{v:.2f}' for v in values)} | {statistics.mean(values):.2f}% | {sd} | "
            f"{' / '.join(f'{d:+.2f} (seed {s})' for d, s in zip(diffs, shared)) or '-'} | "
            f"{f'{statistics.mean(diffs):+.2f}' if diffs else '-'} |")
    return "\n".join(lines)
