"""The main job for now: solve a batch of OptEq problems with every solver and check them.

Run with ``make run`` (or ``python -m optjax.demo``). For each activation and solver it prints
the steps, evaluations of T, residual, objective and certificate; then it checks the equilibrium
against an independent minimiser of the explicit objective (scipy's L-BFGS) in float64.
Exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402

import optjax  # noqa: E402

SOLVERS = ("fixed_point", "anderson", "nesterov", "halpern")


def build(seed: int, d: int, n: int, p: int, batch: int, norm: float,
          activation: str) -> tuple[optjax.OptEqProblem, jax.Array]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, d))
    w *= norm / np.linalg.norm(w, 2)
    problem = optjax.OptEqProblem(
        weight=jnp.asarray(w),
        activation=activation,
        input_weight=jnp.asarray(rng.normal(size=(n, p)) / np.sqrt(p)),
        bias=jnp.asarray(0.5 * rng.normal(size=n)),
    )
    return problem, jnp.asarray(rng.normal(size=(batch, p)))


def reference_minimizer(problem: optjax.OptEqProblem, x: jax.Array) -> np.ndarray:
    """argmin G per sample by scipy's trust-region Newton method on G written from the
    potential, with autodiff gradient and Hessian: independent of T and of optjax's solvers."""
    c = optjax.injection(problem, x)

    def g(z: jax.Array, ci: jax.Array) -> jax.Array:
        return 0.5 * jnp.dot(z, z) - jnp.sum(problem.activation.potential(problem.weight @ z + ci))

    value_and_grad = jax.jit(jax.value_and_grad(g))
    hessian = jax.jit(jax.hessian(g))
    out = []
    for ci in c:
        res = scipy.optimize.minimize(
            lambda z: tuple(np.asarray(v, float) for v in value_and_grad(jnp.asarray(z), ci)),
            np.zeros(problem.state_shape), jac=True, method="trust-exact",
            hess=lambda z: np.asarray(hessian(jnp.asarray(z), ci)), options=dict(gtol=1e-13),
        )
        z = res.x
        for _ in range(3):  # trust-exact stops on rounding noise in G; polish with Newton steps
            _, grad = value_and_grad(jnp.asarray(z), ci)
            z = z - np.linalg.solve(np.asarray(hessian(jnp.asarray(z), ci)), np.asarray(grad))
        out.append(z)
    return np.stack(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--norm", type=float, default=0.95, help="||W||")
    parser.add_argument("--tol", type=float, default=1e-10)
    args = parser.parse_args(argv)

    print(f"optjax {optjax.__version__} on {jax.default_backend()}: batch {args.batch}, "
          f"d {args.d}, n {args.n}, ||W|| = {args.norm}, tol {args.tol:g} (float64)\n")
    header = (f"{'activation':<11}{'solver':<12}{'steps':>7}{'T evals':>9}{'max resid':>11}"
              f"{'mean G':>12}{'max bound':>11}{'max |z-z_ref|':>15}{'time ms':>9}")
    print(header)
    print("-" * len(header))
    failures = 0
    for activation in ("relu", "tanh", "softplus"):
        problem, x = build(0, args.d, args.n, args.d // 2, args.batch, args.norm, activation)
        z_ref = reference_minimizer(problem, x)
        for name in SOLVERS:
            # Halpern converges like 1/k: it is for choosing among equilibria, not for speed.
            max_steps = 200_000 if name == "halpern" else 20_000
            tol = max(args.tol, 1e-4) if name == "halpern" else args.tol
            solve = jax.jit(lambda p, x, name=name, tol=tol, m=max_steps:
                            optjax.equilibrium(p, x, solver=name, tol=tol, max_steps=m))
            jax.block_until_ready(solve(problem, x))
            t0 = time.perf_counter()
            z, info = jax.block_until_ready(solve(problem, x))
            ms = 1e3 * (time.perf_counter() - t0)
            err = float(np.max(np.abs(np.asarray(z) - z_ref)))
            bound = float(jnp.max(info.certificate.distance_bound))
            # The reference itself is accurate to about 1e-12.
            ok = bool(jnp.all(info.converged)) and err <= bound * (1 + 1e-6) + 1e-11
            failures += not ok
            print(f"{activation:<11}{name:<12}{int(jnp.max(info.steps)):>7}"
                  f"{int(jnp.max(info.evaluations)):>9}{float(jnp.max(info.residual)):>11.2e}"
                  f"{float(jnp.mean(info.objective)):>12.6f}"
                  f"{float(jnp.max(info.certificate.suboptimality_bound)):>11.1e}"
                  f"{err:>15.2e}{ms:>9.1f}{'' if ok else '  FAILED'}")
    print("\nsteps/T evals: the largest over the batch; bound: G(z) - G* <= r^2 / (2 mu);")
    print("|z - z_ref|: distance to an independent Newton minimiser of G, must be <= r / mu.")
    if failures:
        print(f"\n{failures} check(s) FAILED")
        return 1
    print("\nall equilibria agree with the independent minimiser within their certificates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
