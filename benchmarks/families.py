"""Benchmark: the implicit families (OptEq, DEQ, monDEQ, deep OptEq), dense and convolutional,
as image classifiers at matched parameter counts, measured side by side in one run.

    python benchmarks/families.py            # the run recorded in RESULTS.md
    python benchmarks/families.py --quick    # a small smoke run

For each model: parameter count, forward steps (mean / max over the batch; each step is one
evaluation of the layer's map), converged share, backward steps, and forward and
forward+backward time per batch as ratios to the OptEq model of the same kind, measured in the
same run (medians over repetitions). Same tolerance and step caps for every family (forward
solver: each family's default; backward: GMRES capped at max_steps).
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optjax
from _timing import timeit  # benchmarks/ is on sys.path when a script runs
from optjax.nn.classifiers import build_matched, param_count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--params", type=int, default=60000, help="parameter budget per model")
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max-steps", type=int, default=100)
    args = parser.parse_args(argv)
    shape, batch = ((8, 8, 1), 16) if args.quick else ((28, 28, 1), 64)
    if args.quick:
        args.reps, args.params = 1, 5000
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(batch,) + shape), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=batch))
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; images {shape}, batch {batch}, "
          f"<= {args.params} parameters, tol {args.tol:g}, max_steps {args.max_steps}, "
          f"median of {args.reps} runs\n")
    print("| model | params | fwd steps (mean / max) | converged | fwd / OptEq fwd | "
          "fwd+bwd / OptEq fwd+bwd | fwd+bwd / own fwd |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("dense", "conv"):
        families = ("opteq", "deq", "mondeq") + (("deep_opteq",) if kind == "dense" else ())
        reference = None
        for family in families:
            model = build_matched(family, kind, shape, 10, args.params, rngs=nnx.Rngs(0),
                                  tol=args.tol, max_steps=args.max_steps,
                                  backward=optjax.backward.GMRES(max_steps=args.max_steps))
            graphdef, params, rest = nnx.split(model, nnx.Param, ...)

            @jax.jit
            def forward(params, rest, x):
                m = nnx.merge(graphdef, params, rest, copy=True)
                return m(x, return_info=True)

            @jax.jit
            def forward_backward(params, rest, x, y):
                def loss(params, rest):
                    m = nnx.merge(graphdef, params, rest, copy=True)
                    return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
                return jax.grad(loss)(params, rest)

            _, info = forward(params, rest, x)
            steps = np.asarray(info.steps)
            converged = np.asarray(info.converged)
            t_f = timeit(lambda p, r, x: forward(p, r, x)[0], params, rest, x, reps=args.reps)
            t_fb = timeit(forward_backward, params, rest, x, y, reps=args.reps)
            if reference is None:
                reference = (t_f, t_fb)
            print(f"| {family} {kind} | {param_count(model)} | {steps.mean():.1f} / {steps.max()} | "
                  f"{converged.mean():.0%} | {t_f / reference[0]:.2f} | {t_fb / reference[1]:.2f} | "
                  f"{t_fb / t_f:.2f} |")
        print(f"| (OptEq {kind}: {reference[0] * 1e3:.0f} ms fwd, {reference[1] * 1e3:.0f} ms fwd+bwd "
              "in this run) | | | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
