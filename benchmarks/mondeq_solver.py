"""monDEQ's Peaceman-Rachford solve on a trained conv layer: the step alpha and the backward mode.

Loads a trained monDEQ conv classifier (a checkpoint of ``benchmarks/fashion_mnist.py``) and, on
test batches of Fashion-MNIST, measures side by side for each (alpha, backward) design: forward
steps to tol and the share converged, backward steps and the share converged, and the time of
one training gradient (forward + backward + parameter VJP), the designs interleaved in every
repetition so that the ratios share the machine's state::

    .venv/bin/python benchmarks/fashion_mnist.py --kind conv --families mondeq --epochs 1 \\
        --out benchmarks/out/fashion_mnist_1epoch          # the checkpoint (once; ~20 min)
    .venv/bin/python benchmarks/mondeq_solver.py \\
        --run benchmarks/out/fashion_mnist_1epoch/conv/mondeq_seed0
    .venv/bin/python benchmarks/mondeq_solver.py --sweep default,1,0.5,0.35  # forward only

Designs: ``alpha=1`` is the monDEQ authors' constant, ``default`` the library's
``1 / sqrt(m ||I - W||)``; ``gmres`` the generic backward, ``splitting`` Peaceman-Rachford on the
adjoint problem (:class:`optjax.engine.backward.Splitting`). The solver settings are the benchmark's
(tol 1e-3, backward tol 1e-2; caps ``--max-steps`` 50 and ``--backward-max-steps`` 20 by
default, the conv benchmark's monDEQ runs use 100 and 40).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import optjax  # noqa: E402
from optjax.train import sharding  # noqa: E402
from optjax.train.checkpoint import Checkpoints  # noqa: E402
from optjax.train.config import TrainConfig, saved_options  # noqa: E402
from optjax.train.loop import prepare  # noqa: E402

DESIGNS = {  # name: (alpha, backward)
    "alpha=1, gmres": (1.0, "gmres"),
    "alpha=1, splitting": (1.0, "splitting"),
    "default, gmres": (None, "gmres"),
    "default, splitting": (None, "splitting"),
}


def load(run_dir: pathlib.Path):
    probe = Checkpoints(run_dir / "checkpoints", TrainConfig(out_dir=str(run_dir)))
    step = probe.latest_step()
    if step is None:
        raise SystemExit(f"no checkpoint in {run_dir / 'checkpoints'}: run the benchmark first "
                         "(see this file's docstring)")
    meta = probe.read_meta(step)
    config = TrainConfig.from_dict(saved_options(meta["config"])).replace(
        out_dir=str(run_dir), progress=False)
    if config.family != "mondeq" or config.kind != "conv":
        raise SystemExit(f"{run_dir} holds a {config.family} {config.kind} run; this needs monDEQ "
                         "conv")
    run = prepare(config)
    state, _ = Checkpoints(run_dir / "checkpoints", config, run_id=meta.get("run_id")).restore(
        run.state, step, sharding=sharding.replicated(run.mesh))
    return run, state, step


def make_gradient(run, state, alpha, backward, max_steps=50, backward_max_steps=20):
    model = run.model(state, training=True)
    model.layer.alpha = alpha
    model.layer.backward = optjax.backward.get(backward, tol=1e-2, max_steps=backward_max_steps)
    model.layer.max_steps, model.layer.tol = max_steps, 1e-3

    @nnx.jit
    def gradient(model, x, y, probe):
        def loss(model, probe):
            logits, info = model(x, return_info=True, backward_probe=probe)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return losses.mean(), info

        (_, info), (grads, stats) = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
            model, probe)
        return grads, info, stats

    return model, gradient


def sweep(run, state, batches, alphas: str, max_steps: int) -> int:
    """Forward steps to tol 1e-3 for each alpha (step counts: deterministic, no timing)."""
    model = run.model(state, training=False)
    model.layer.max_steps, model.layer.tol = max_steps, 1e-3
    forward = nnx.jit(lambda model, x: model(x, return_info=True)[1])
    print("| alpha | fwd steps mean / max | converged |")
    print("|---|---|---|")
    for text in alphas.split(","):
        model.layer.alpha = None if text.strip() == "default" else float(text)
        infos = [forward(model, x) for x, _ in batches]
        steps = jnp.concatenate([i.steps for i in infos])
        ok = jnp.concatenate([i.converged for i in infos])
        alpha = float(model.layer.step_size((14, 14)))
        print(f"| {alpha:.3f}{' (default)' if model.layer.alpha is None else ''} | "
              f"{float(steps.mean()):.1f} / {int(steps.max())} | {100 * float(ok.mean()):.1f}% |")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="benchmarks/out/fashion_mnist_1epoch/conv/mondeq_seed0")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=50, help="forward cap")
    parser.add_argument("--backward-max-steps", type=int, default=20, help="backward cap")
    parser.add_argument("--sweep", default="", metavar="ALPHAS",
                        help="comma-separated alphas: print forward steps to tol for each "
                             "('default' = 1/sqrt(m ||I - W||)) and stop")
    args = parser.parse_args(argv)
    run, state, step = load(pathlib.Path(args.run))
    x_all, y_all = run.data.x_test, run.data.y_test
    batches = [(jnp.asarray(x_all[i * 64:(i + 1) * 64]), jnp.asarray(y_all[i * 64:(i + 1) * 64]))
               for i in range(args.batches)]
    print(f"jax {jax.__version__}; monDEQ conv checkpoint step {step} of {args.run}; "
          f"{args.batches} test batches of 64, {args.reps} repetitions; tol 1e-3, forward cap "
          f"{args.max_steps}, backward tol 1e-2 capped at {args.backward_max_steps}")
    if args.sweep:
        return sweep(run, state, batches, args.sweep, args.max_steps)
    built = {name: make_gradient(run, state, *design, args.max_steps, args.backward_max_steps)
             for name, design in DESIGNS.items()}
    times = {name: [] for name in DESIGNS}
    counts = {}
    for rep in range(args.reps + 1):  # rep 0 compiles and counts
        for name, (model, gradient) in built.items():
            t0 = time.perf_counter()
            for x, y in batches:
                out = gradient(model, x, y, optjax.backward_probe(x.shape[0]))
                jax.block_until_ready(out)
                if rep == 0:
                    counts.setdefault(name, []).append(out[1:])
            if rep:
                times[name].append((time.perf_counter() - t0) / len(batches))
    base = statistics.median(times["alpha=1, gmres"])
    print("| design | alpha | fwd steps mean / max | fwd converged | bwd steps mean / max | "
          "bwd converged | gradient (ms / batch) | time / (alpha=1, gmres) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (model, _) in built.items():
        infos, stats = zip(*counts[name])
        fwd = jnp.concatenate([i.steps for i in infos])
        fwd_ok = jnp.concatenate([i.converged for i in infos])
        bwd = jnp.concatenate([s.steps for s in stats])
        bwd_ok = jnp.concatenate([s.converged for s in stats])
        spatial = (14, 14)
        alpha = float(model.layer.step_size(spatial))
        t = statistics.median(times[name])
        print(f"| {name} | {alpha:.3f} | {float(fwd.mean()):.1f} / {int(fwd.max())} | "
              f"{100 * float(fwd_ok.mean()):.1f}% | {float(bwd.mean()):.1f} / {int(bwd.max())} | "
              f"{100 * float(bwd_ok.mean()):.1f}% | {1e3 * t:.0f} | {t / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
