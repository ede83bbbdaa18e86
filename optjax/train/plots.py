"""PNG plots of a run: loss and accuracy curves, forward solver steps per epoch, and the
distribution of the suboptimality certificate over the test set. Needs matplotlib
(``pip install 'optjax[train]'``)."""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import numpy as np

__all__ = ["save_plots", "PLOTS"]

PLOTS = ("loss.png", "accuracy.png", "forward_steps.png", "certificate.png")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'optjax[train]' (or pass "
                          "--no-plots)") from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def save_plots(records: Sequence[dict[str, Any]], bounds: np.ndarray | None,
               out_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """Write the plots of :data:`PLOTS` into ``out_dir`` from metrics records (``"step"`` and
    ``"epoch"`` events) and the per-sample suboptimality bounds of the test set (``bounds``;
    the certificate plot is skipped when None or not finite anywhere, the forward-steps plot
    when the records have no solver statistics: a model without an equilibrium layer).
    Returns the paths."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = [r for r in records if r.get("event") == "step"]
    epochs = [r for r in records if r.get("event") == "epoch"]
    e = np.array([r["epoch"] + 1 for r in epochs])
    paths = []

    def finish(fig: Any, ax: Any, name: str, xlabel: str, ylabel: str, title: str) -> None:
        if xlabel == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)

    fig, ax = plt.subplots(figsize=(6, 4))
    if steps:
        spe = max(1, len(steps) // max(1, len(epochs)))
        ax.plot([r["step"] / spe for r in steps], [r["loss"] for r in steps], alpha=0.3,
                label="train (per step)")
    ax.plot(e, [r["loss"] for r in epochs], "o-", label="train (epoch mean)")
    ax.plot(e, [r.get("test_loss", np.nan) for r in epochs], "s-", label="test")
    ax.set_yscale("log")
    finish(fig, ax, "loss.png", "epoch", "cross-entropy", "loss")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(e, [100 * r["accuracy"] for r in epochs], "o-", label="train")
    ax.plot(e, [100 * r.get("test_accuracy", np.nan) for r in epochs], "s-", label="test")
    finish(fig, ax, "accuracy.png", "epoch", "accuracy (%)", "accuracy")

    forward = {key: np.array([r.get(key, np.nan) for r in epochs], float)
               for key in ("steps", "steps_max", "test_steps")}
    if any(np.isfinite(v).any() for v in forward.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(e, forward["steps"], "o-", label="mean (train)")
        ax.plot(e, forward["steps_max"], "^--", label="max (train)")
        ax.plot(e, forward["test_steps"], "s-", label="mean (test)")
        finish(fig, ax, "forward_steps.png", "epoch", "forward solver steps per sample",
               "forward steps per epoch")

    finite = None if bounds is None else np.asarray(bounds, float)
    if finite is not None:
        finite = finite[np.isfinite(finite)]
    if finite is not None and finite.size:
        fig, ax = plt.subplots(figsize=(6, 4))
        logs = np.log10(np.maximum(finite, np.finfo(float).tiny))
        ax.hist(logs, bins=40)
        ax.axvline(logs.max(), color="k", ls="--", label=f"largest {finite.max():.2e}")
        finish(fig, ax, "certificate.png", r"$\log_{10}$ bound on $F(z) - F^\star$",
               "test samples", "suboptimality certificate over the test set")
    return paths
