"""Check the accelerator path whenever a GPU or TPU is available: precision, steps, residual
floor, time per T, one training step. Run it as it is on the device:

    python benchmarks/accelerator_check.py            # full (about a minute on a GPU)
    python benchmarks/accelerator_check.py --quick    # a smoke run (the tests run it on CPU)

For each matmul precision of the unit layer (``OptEqProblem(precision=...)``: ``None`` asks for
full float32, ``"default"`` is the backend's default, TF32 or bfloat16 passes on recent GPUs and
TPUs) it prints: evaluations of T to tol, the residual floor (the smallest residual reached in
``--floor-steps`` steps, relative to ||z||), the time of one batched T, and the time of one
jit-compiled training step of an OptEq classifier, as ratios to the float32 T where a ratio is
meaningful. Every figure comes from this one run.
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
from optjax.nn import ImplicitClassifier
from _timing import timeit  # benchmarks/ is on sys.path when a script runs


def build(seed, batch, d, n, norm, precision):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, d))
    w *= norm / np.linalg.norm(w, 2)
    problem = optjax.OptEqProblem(jnp.asarray(w, jnp.float32), "relu", precision=precision,
                                  bias=jnp.asarray(0.1 * rng.normal(size=n), jnp.float32))
    x = jnp.asarray(rng.normal(size=(batch, n)), jnp.float32)
    return problem.with_norm(), x


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--floor-steps", type=int, default=None)
    args = parser.parse_args(argv)
    batch, d, n, reps = (16, 32, 64, 3) if args.quick else (512, 1024, 2048, 20)
    floor_steps = args.floor_steps or (50 if args.quick else 400)
    device = jax.devices()[0]
    print(f"optjax {optjax.__version__}, jax {jax.__version__}; device: {device.platform} "
          f"({device.device_kind}); batch {batch}, d {d}, n {n}, float32, relu, ||W|| = 0.9\n")
    print("| precision | T evals to tol 1e-5 | converged | residual floor / ||z|| | time of T "
          "| T / T(float32) |")
    print("|---|---|---|---|---|---|")
    reference = None
    for label, precision in (("float32 (None: highest)", None), ("backend default", "default")):
        problem, x = build(0, batch, d, n, 0.9, precision)
        c = optjax.injection(problem, x)
        z0 = jnp.zeros((batch, d), jnp.float32)
        k = 50
        loop = jax.jit(lambda p, z, c: jax.lax.fori_loop(
            0, k, lambda _, z: optjax.operator(p, z, c), z))
        t_eval = timeit(loop, problem, z0, c, reps=reps) / k
        reference = reference or t_eval
        solve = jax.jit(lambda p, x: optjax.equilibrium(p, x, tol=1e-5, max_steps=500))
        z, info = solve(problem, x)
        floor = jax.jit(lambda p, x: optjax.equilibrium(p, x, tol=1e-30, max_steps=floor_steps,
                                                        solver="fixed_point"))
        zf, info_f = floor(problem, x)
        rel = float(jnp.max(info_f.residual / jnp.maximum(jnp.linalg.norm(zf, axis=1), 1e-30)))
        print(f"| {label} | {int(jnp.max(info.evaluations))} | "
              f"{int(jnp.sum(info.converged))}/{batch} | {rel:.1e} | {t_eval * 1e3:.3f} ms | "
              f"{t_eval / reference:.2f} |")

    # One training step of a dense OptEq classifier (float32, batch of images).
    width, images = (16, 8) if args.quick else (256, 64)
    model = ImplicitClassifier("opteq", "dense", (28, 28, 1), 10, width,
                                         rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    rng = np.random.default_rng(1)
    xb = jnp.asarray(rng.normal(size=(images, 28, 28, 1)), jnp.float32)
    yb = jnp.asarray(rng.integers(0, 10, images))
    t_step = timeit(lambda: step(model, opt, xb, yb), reps=reps)
    print(f"\nTraining step (OptEq dense classifier, width {width}, batch {images}): "
          f"{t_step * 1e3:.2f} ms = {t_step / reference:.1f} T(float32, the layer above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
