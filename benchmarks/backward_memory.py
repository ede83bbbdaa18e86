"""The backward's memory against the number of forward steps: optjax's implicit backward (memory
independent of the forward iterations) against autodiff through the unrolled iteration
(``jax.grad`` through a ``lax.scan`` of T, which stores every step).

    .venv/bin/python benchmarks/backward_memory.py            # the table and figure of RESULTS.md
    .venv/bin/python benchmarks/backward_memory.py --quick    # small sizes (the test's smoke run)

Two cases, float32, forward steps k = 10, 30, 100, 300 exactly (plain iteration with
``tol=1e-30``, ``max_steps=k``; the implicit backward is conjugate gradients capped at 30 steps):

* **dense unit layer**: batch 128, d 256, n 512, relu, ||W|| = 0.9; the gradient of
  ``sum(target * z*)`` with respect to W;
* **conv classifier training step**: the Fashion-MNIST OptEq classifier of
  ``optjax.nn.classifiers`` (28 x 28 x 1 images, batch 64, the 100K-parameter width) and one
  AdamW step on its cross-entropy (gradient and update of every parameter). The unrolled
  variant is the same classifier with its equilibrium layer's solve replaced by k steps of the
  layer's own map T, differentiated by autodiff.

Each figure comes from a fresh process: XLA's compiled memory analysis
(``jit(f).lower(...).compile().memory_analysis()``: arguments + outputs + temporaries - aliased,
the buffers the program holds at once) and the process's peak resident memory after running f
once (``ru_maxrss``; it includes Python, XLA and the compiler, so its differences matter, not its
size). The implicit rows use plain iteration, the iteration that the unrolled rows differentiate;
two last lines give the implicit figure with the default solver (its Anderson history is a fixed
cost) and with the fixed-point backward instead of conjugate gradients (one state vector where CG
keeps four). The unit: the same program with the equilibrium replaced by **one** evaluation of T
(the dense case: the gradient of ``sum(target * T(0))``; the classifier: the training step with
one T as its layer), so "1.0" is what any training step through one T needs.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

STEPS = (10, 30, 100, 300)
MODES = ("implicit", "unrolled", "one T", "default solver", "fixed-point backward")
IMPLICIT = ("implicit", "default solver", "fixed-point backward")

FIGURE = pathlib.Path(__file__).resolve().parent / "results" / "backward_memory.png"


def _dense(quick: bool, steps: int, mode: str):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import optjax

    rng = np.random.default_rng(0)
    batch, d, n = (16, 32, 64) if quick else (128, 256, 512)
    w = rng.normal(size=(n, d))
    weight = jnp.asarray(0.9 * w / np.linalg.norm(w, 2), jnp.float32)
    c = jnp.asarray(rng.normal(size=(batch, n)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(batch, d)), jnp.float32)
    z0 = jnp.zeros_like(target)

    def t_batch(w, z):
        return optjax.operator(optjax.OptEqProblem(w, "relu"), z, c)

    def loss(w):
        if mode in IMPLICIT:
            z, _ = optjax.equilibrium(
                optjax.OptEqProblem(w, "relu"), c,
                solver=None if mode == "default solver" else "fixed_point", tol=1e-30,
                max_steps=steps, certify=False, backward=_backward(mode))
        elif mode == "unrolled":
            z, _ = jax.lax.scan(lambda z, _: (t_batch(w, z), None), z0, None, length=steps)
        else:
            z = t_batch(w, z0)
        return jnp.sum(target * z)

    return jax.grad(loss), (weight,)


def _classifier(quick: bool, steps: int, mode: str):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    import optjax
    from optjax.nn.classifiers import ImplicitClassifier, matched_width

    shape, batch = ((8, 8, 1), 8) if quick else ((28, 28, 1), 64)
    options = dict(tol=1e-30, max_steps=steps, backward=_backward(mode))
    if mode != "default solver":
        options["solver"] = "fixed_point"
    width = 4 if quick else matched_width("opteq", "conv", shape, 10, 100_000, closest=True,
                                           **options)[0]
    model = ImplicitClassifier("opteq", "conv", shape, 10, width, rngs=nnx.Rngs(0), **options)
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adamw(1e-3)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch,) + shape), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=batch))

    def logits(params):
        m = nnx.merge(graph, params, rest, copy=True)
        if mode in IMPLICIT:
            return m(x)
        layer = m.layer  # the same classifier, its layer's solve replaced by T itself
        weight = layer.used_weight()
        problem = optjax.OptEqProblem(weight, layer.activation)

        def equilibrium(h):
            c = layer.injection(h)
            z0 = jnp.zeros(c.shape[:1] + problem.state_shape, c.dtype)
            if mode == "one T":
                return optjax.operator(problem, z0, c)
            return jax.lax.scan(lambda z, _: (optjax.operator(problem, z, c), None), z0, None,
                                length=steps)[0]

        m.layer = _Replaced(equilibrium)
        return m(x)

    def train_step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
            logits(p), y).mean())(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step, (params, tx.init(params))


def _backward(mode: str):
    import optjax

    if mode == "fixed-point backward":  # one state vector instead of CG's four
        return optjax.backward.FixedPointBackward(max_steps=30, on_failure="ignore")
    return optjax.backward.ConjugateGradient(max_steps=30, on_failure="ignore")


class _Replaced:
    """A stand-in for the classifier's equilibrium layer: ``layer(h, return_info=True)``."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, h, *, return_info=False, backward_probe=None):
        z = self.fn(h)
        return (z, None) if return_info else z


CASES = {"dense unit layer": _dense, "conv classifier training step": _classifier}


def measure_one(case: str, quick: bool, steps: int, mode: str) -> dict:
    """In a fresh process: the compiled program's bytes, then one run, then the peak RSS."""
    import resource

    import jax

    fn, args = CASES[case](quick, steps, mode)
    analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    nbytes = int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                 + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    jax.block_until_ready(jax.jit(fn)(*args))
    return {"bytes": nbytes, "temp_bytes": int(analysis.temp_size_in_bytes),
            "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def _figure(results: dict, steps_list, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4))
    for ax, (case, rows) in zip(axes, results.items()):
        unit = rows["one T"]["bytes"]
        for mode, style in (("implicit", "o-"), ("unrolled", "s--")):
            ax.loglog(steps_list, [rows[mode][k]["bytes"] / unit for k in steps_list], style,
                      label=f"{'optjax implicit' if mode == 'implicit' else 'unrolled autodiff'}")
        ax.axhline(1.0, color="k", lw=0.8, ls=":", label="one T (the unit)")
        ax.set(xlabel="forward steps", ylabel="compiled memory / one T", title=case)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--figure", default=None,
                        help=f"where to write the PNG (default: {FIGURE}, not with --quick)")
    parser.add_argument("--one", nargs=3, metavar=("CASE", "STEPS", "MODE"),
                        help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.one:
        case, steps, mode = args.one
        print(json.dumps(measure_one(case, args.quick, int(steps), mode)))
        return 0
    steps_list = (3, 10) if args.quick else STEPS

    def child(case, steps, mode):
        cmd = [sys.executable, __file__, "--one", case, str(steps), mode] + \
            (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{case}, {steps} steps, {mode}: the child failed\n{out.stderr}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    results = {}
    for case in CASES:
        unit = child(case, 1, "one T")
        rows = {"one T": unit, "implicit": {}, "unrolled": {}}
        print(f"\n### {case}: one T = {unit['bytes'] / 2**20:.2f} MiB compiled (process peak "
              f"{unit['rss_kib'] / 1024:.0f} MiB)\n")
        print("| forward steps | implicit: compiled / one T | unrolled: compiled / one T | "
              "implicit: process peak (MiB) | unrolled: process peak (MiB) |")
        print("|---|---|---|---|---|")
        for steps in steps_list:
            imp, unr = child(case, steps, "implicit"), child(case, steps, "unrolled")
            rows["implicit"][steps], rows["unrolled"][steps] = imp, unr
            print(f"| {steps} | {imp['bytes'] / unit['bytes']:.2f} | "
                  f"{unr['bytes'] / unit['bytes']:.2f} | {imp['rss_kib'] / 1024:.0f} | "
                  f"{unr['rss_kib'] / 1024:.0f} |", flush=True)
        default = child(case, steps_list[0], "default solver")
        print(f"\nWith the default solver (safeguarded Anderson, history 5) instead of plain "
              f"iteration, implicit: {default['bytes'] / unit['bytes']:.2f} x one T "
              f"({steps_list[0]} steps; the history is a fixed 2 x 5 states, whatever the steps).")
        fpb = [child(case, k, "fixed-point backward") for k in (steps_list[0], steps_list[-1])]
        print(f"With the fixed-point backward (u = J^T u + g, capped at 30 steps) instead of "
              f"conjugate gradients, implicit: {fpb[0]['bytes'] / unit['bytes']:.2f} x one T at "
              f"{steps_list[0]} steps, {fpb[1]['bytes'] / unit['bytes']:.2f} at {steps_list[-1]}.")
        results[case] = rows
    figure = args.figure or (None if args.quick else str(FIGURE))
    if figure:
        _figure(results, steps_list, pathlib.Path(figure))
        print(f"\nfigure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
