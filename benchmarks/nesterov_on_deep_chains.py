"""Why the contract refuses Nesterov on the deep chain (docs/solvers.md): FISTA with restart run
directly on the Jacobi sweep (bypassing the refusal) of 10 random 3-tier chains (sizes 30/20/10,
input 16, batch 4, couplings normalised to rho = 0.9; relu, tanh, softsign or mixed tiers),
float64, tol 1e-10, 3000 steps.

    .venv/bin/python benchmarks/nesterov_on_deep_chains.py
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from optjax import deep, solvers  # noqa: E402

ACTIVATIONS = [("relu",) * 3, ("tanh",) * 3, ("softsign",) * 3, ("relu", "tanh", "softsign")]


def main() -> int:
    capped = 0
    print("| seed | activations | steps (max) | residual (max) |\n|---|---|---|---|")
    for seed in range(10):
        rng = np.random.default_rng(seed)
        acts = ACTIVATIONS[seed % 4]
        sizes = (30, 20, 10)
        couplings = deep.normalize([jnp.asarray(rng.normal(size=(m, n)))
                                    for n, m in zip(sizes[:-1], sizes[1:])], 0.9)
        problem = deep.DeepProblem(couplings, jnp.asarray(rng.normal(size=(30, 16))),
                                   [jnp.asarray(0.5 * rng.normal(size=n)) for n in sizes], acts,
                                   sweep="jacobi")
        x = jnp.asarray(rng.normal(size=(4, 16)))
        map_fn, params, data = problem.equilibrium_map(), problem.parameters(), \
            problem.sample_data(x)
        solve = jax.jit(lambda z0: solvers.Nesterov().solve_batch(
            lambda z, d: map_fn(z, params, d), z0, data, tol=1e-10, max_steps=3000))
        out = solve(jnp.zeros((4, problem.state_size)))
        steps, residual = int(out.steps.max()), float(out.residual.max())
        capped += steps == 3000
        print(f"| {seed} | {'/'.join(acts)} | {steps} | {residual:.3g} |")
    print(f"\n{capped} of 10 chains at the 3000-step cap")
    return 0


if __name__ == "__main__":
    sys.exit(main())
