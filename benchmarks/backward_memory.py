"""The backward's memory against the number of forward steps: optjax's implicit backward (memory
independent of the forward iterations) against autodiff through the unrolled iteration
(``jax.grad`` through a ``lax.scan`` of T, which stores every step).

    .venv/bin/python benchmarks/backward_memory.py            # the table of RESULTS.md
    .venv/bin/python benchmarks/backward_memory.py --quick    # small sizes

For a dense unit layer (batch 128, d 256, n 512) and a convolutional one (3 x 3, 36 -> 72
channels on 14 x 14, batch 64; the Fashion-MNIST layer's shape), relu, ||W|| = 0.9, float32, the
gradient of ``sum(target * z*)`` with respect to W after exactly k forward steps
(k = 10, 30, 100, 300: ``tol=1e-30``, ``max_steps=k``, plain iteration for both, CG backward
capped at 30 steps), measured from XLA's compiled memory analysis (``jit(...).lower(...)
.compile().memory_analysis()``: arguments + outputs + temporaries, the buffers the program
needs at once) and as the peak resident memory of a fresh process running the gradient once
(``ru_maxrss``; it includes the Python process and XLA itself, so its differences matter, not
its size). The unit: one evaluation of T compiled alone (same arguments and output).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

STEPS = (10, 30, 100, 300)


def _case(kind: str, quick: bool):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import optjax
    from optjax.linalg.convolution import Conv2D

    rng = np.random.default_rng(0)
    if kind == "dense":
        batch, d, n = (16, 32, 64) if quick else (128, 256, 512)
        w = rng.normal(size=(n, d))
        weight = jnp.asarray(0.9 * w / np.linalg.norm(w, 2), jnp.float32)
        c = jnp.asarray(rng.normal(size=(batch, n)), jnp.float32)
        target = jnp.asarray(rng.normal(size=(batch, d)), jnp.float32)
    else:
        batch, grid, cin, cout = (4, (6, 6), 4, 8) if quick else (64, (14, 14), 36, 72)
        conv = Conv2D.init(jax.random.PRNGKey(0), 3, cin, cout, grid)
        weight = dataclasses.replace(conv, kernel=0.9 * conv.kernel / conv.spectral_norm())
        c = jnp.asarray(rng.normal(size=(batch,) + grid + (cout,)), jnp.float32)
        target = jnp.asarray(rng.normal(size=(batch,) + grid + (cin,)), jnp.float32)
    return optjax, weight, c, target


def _functions(kind: str, quick: bool, steps: int):
    import jax
    import jax.numpy as jnp

    optjax, weight, c, target = _case(kind, quick)

    def problem(w):
        return optjax.OptEqProblem(w, "relu")

    def t_batch(w, z):
        return optjax.operator(problem(w), z, c)

    z0 = jnp.zeros_like(target)

    def implicit(w):
        z, _ = optjax.equilibrium(problem(w), c, solver="fixed_point", tol=1e-30,
                                  max_steps=steps, certify=False,
                                  backward=optjax.backward.ConjugateGradient(max_steps=30,
                                                                             on_failure="ignore"))
        return jnp.sum(target * z)

    def unrolled(w):
        z, _ = jax.lax.scan(lambda z, _: (t_batch(w, z), None), z0, None, length=steps)
        return jnp.sum(target * z)

    return {"implicit": jax.grad(implicit), "unrolled": jax.grad(unrolled),
            "one T": lambda w: t_batch(w, z0)}, weight


def compiled_bytes(fn, *args) -> int:
    import jax

    analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def measure_one(kind: str, quick: bool, steps: int, which: str) -> dict:
    """Run in a fresh process: compiled bytes, then the gradient once, then the peak RSS."""
    import resource

    import jax

    fns, weight = _functions(kind, quick, steps)
    fn = fns[which]
    nbytes = compiled_bytes(fn, weight)
    jax.block_until_ready(jax.jit(fn)(weight))
    return {"bytes": nbytes, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--one", nargs=3, metavar=("KIND", "STEPS", "WHICH"),
                        help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.one:
        kind, steps, which = args.one
        print(json.dumps(measure_one(kind, args.quick, int(steps), which)))
        return 0
    steps_list = (3, 10) if args.quick else STEPS

    def child(kind, steps, which):
        cmd = [sys.executable, __file__, "--one", kind, str(steps), which] + \
            (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    for kind in ("dense", "conv"):
        unit = child(kind, 1, "one T")
        print(f"\n### {kind} unit layer: one T = {unit['bytes'] / 2**20:.2f} MiB compiled "
              f"(process peak {unit['rss_kib'] / 1024:.0f} MiB)\n")
        print("| forward steps | implicit: compiled / one T | unrolled: compiled / one T | "
              "implicit: process peak (MiB) | unrolled: process peak (MiB) |")
        print("|---|---|---|---|---|")
        for steps in steps_list:
            imp, unr = child(kind, steps, "implicit"), child(kind, steps, "unrolled")
            print(f"| {steps} | {imp['bytes'] / unit['bytes']:.2f} | "
                  f"{unr['bytes'] / unit['bytes']:.2f} | {imp['rss_kib'] / 1024:.0f} | "
                  f"{unr['rss_kib'] / 1024:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
