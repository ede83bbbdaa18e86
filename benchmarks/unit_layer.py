"""Benchmark: a dense OptEq unit layer, every solver and backward mode, against jaxopt called
directly and an unrolled loop, all measured side by side in one run.

    python benchmarks/unit_layer.py            # the full run recorded in RESULTS.md
    python benchmarks/unit_layer.py --quick    # a small smoke run
    python benchmarks/unit_layer.py --solver-loop-only   # only the per-step costs (~10 minutes)

Problem: batch 128, d = 256, n = 512, float32, ||W|| in {0.5, 0.9, 0.99}, relu and tanh,
per-sample tolerance 1e-5 on ||z - T(z)||. Times are medians over repetitions; every figure is
printed as a ratio to a reference measured in the same run (the machines are shared and noisy):
  * "T evals": evaluations of T (largest over the batch; the batched loop runs that many);
  * "fwd time / T": the whole ``optjax.equilibrium`` call over the time of one batched T
    evaluation (timed inside a compiled loop), in total and per evaluation; solvers run with
    certify=False;
  * the certificate's cost: the default call (certificate included) over the uncertified solve,
    called eagerly (the norm of the weight array is computed once and reused), under ``jit`` with
    the norm carried by the problem (``problem.with_norm()``), and under ``jit`` recomputing the
    exact norm on every call;
  * "solver loop per eval / T": the solver alone (``solve_batch`` on the per-sample map), over a
    compiled loop of as many batched T evaluations, run alternately (median of the ratios): the
    solver's own overhead per step, 1.00 meaning none;
  * "(F, S) / T": one evaluation of the fused objective and map (``value_and_map``, what the
    safeguarded solver's F test evaluates every step) over one of T, each in a loop of 20; and
    that solver's loop over as many (F, S): its overhead beyond its map;
  * "fwd+bwd / fwd": cost of the backward pass, per backward mode.
The run ends with a summary of evaluations and per-step costs over all cases.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import optjax
from optjax.linalg.lapack import single_threaded
from _timing import paired_ratio, timeit  # benchmarks/ is on sys.path when a script runs
from _unit_cases import build, conv_case

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"JAXopt is no longer maintained")
    import jaxopt


def with_weight(problem, w):
    return optjax.OptEqProblem(w, problem.activation, problem.input_weight, problem.bias)


def batched_t(problem, z, c):
    return problem.activation(z @ problem.weight.T + c) @ problem.weight


def value_loop(value_and_map, steps):
    """A compiled loop of ``steps`` batched (F, S) evaluations, F accumulated so that it is
    computed: the reference for a solver that evaluates (F, S) every step."""
    batched_vm = jax.vmap(value_and_map)

    def run(z, c):
        def body(_, state):
            value, image = batched_vm(state[0], c)
            return image, state[1] + value
        return jax.lax.fori_loop(0, steps, body, (z, jnp.zeros(z.shape[0], z.dtype)))

    return jax.jit(run)


def solver_loop_cells(solver, fn, value_and_map, z0, c, t_loop_of, args, steps):
    """The solver against as many T (and (F, S) if it evaluates F), paired: 5 figures."""
    solve = jax.jit(lambda z0, c: solver.solve_batch(
        fn, z0, c, tol=args.tol, max_steps=steps, value_and_map=value_and_map))
    run = solve(z0, c)
    inner = int(jnp.max(run.evaluations))
    ratio = paired_ratio(solve, (z0, c), *t_loop_of(inner), reps=args.pair_reps)
    ratio_fs = None
    if solver.needs_objective and solver.decrease_test == "objective":
        ratio_fs = paired_ratio(solve, (z0, c), value_loop(value_and_map, inner), (z0, c),
                                reps=args.pair_reps)
    converged = None if run.residual is None else int(jnp.sum(run.residual <= args.tol))
    return inner, float(jnp.mean(run.evaluations)), converged, ratio, ratio_fs


def value_and_map_cost(fn, value_and_map, z0, c, args):
    """(F, S) over T, both in compiled loops of 20 evaluations, paired."""
    t_loop = jax.jit(lambda z, c: jax.lax.fori_loop(0, 20, lambda _, z: jax.vmap(fn)(z, c), z))
    return paired_ratio(value_loop(value_and_map, 20), (z0, c), t_loop, (z0, c),
                        reps=args.pair_reps)


def unit_maps(problem):
    """The problem's own per-sample S(z, c) and (F(z), S(z)), as the engine hands them."""
    map_fn, params = problem.equilibrium_map(), problem.parameters()

    def fn(z, c):
        return map_fn(z, params, (c, None))

    def value_and_map(z, c):
        return map_fn.value_and_map(z, params, (c, None))

    return fn, value_and_map


SAFE = optjax.solvers.SafeguardedAnderson  # the gradient test: OptEq's default without a prior
SOLVERS = [  # (label, solver, certify)
    ("fixed_point", optjax.solvers.FixedPoint(), False),
    ("nesterov (restart)", optjax.solvers.Nesterov(), False),
    ("anderson (m=5)", optjax.solvers.Anderson(), False),
    ("safeguarded_anderson (m=5), F test", SAFE(decrease_test="objective"), False),
    ("safeguarded_anderson (m=5), gradient test", SAFE(decrease_test="gradient"), False),
    ("halpern (capped)", optjax.solvers.Halpern(), False),
    ("jaxopt_fixed_point", optjax.solvers.JaxoptFixedPoint(), False),
    ("jaxopt_anderson (ridge 1e-10)", optjax.solvers.JaxoptAnderson(), False),
    ("jaxopt_anderson, jaxopt's ridge 1e-5", optjax.solvers.JaxoptAnderson(ridge=1e-5), False),
]


def run_case(activation, norm, args, out):
    problem, x, target = build(0, args.batch, args.d, args.n, args.p, norm, activation)
    c = optjax.injection(problem, x)
    z0 = jnp.zeros((args.batch, args.d), jnp.float32)
    reps = args.reps
    # One T evaluation, timed inside a compiled loop so that dispatch is not counted.
    k = 100
    loop = jax.jit(lambda p, z, c: jax.lax.fori_loop(0, k, lambda _, z: batched_t(p, z, c), z))
    t_eval = timeit(loop, problem, z0, c, reps=reps) / k
    t_norm = timeit(jax.jit(optjax.linear_map.spectral_norm), problem.weight, reps=reps)
    fn, value_and_map = unit_maps(problem)

    fs_over_t = value_and_map_cost(fn, value_and_map, z0, c, args)

    def t_loop_of(n):
        return jax.jit(lambda p, z, c: jax.lax.fori_loop(
            0, n, lambda _, z: batched_t(p, z, c), z)), (problem, z0, c)

    print(f"\n### {activation}, ||W|| = {norm}\n")
    print(f"One T evaluation: {t_eval * 1e3:.3f} ms (the unit below); exact ||W|| for the "
          f"certificate: {t_norm / t_eval:.1f} T; one (F, S) evaluation: {fs_over_t:.2f} T.\n")
    if args.solver_loop_only:
        print("| forward solver | evals in the timed loop (max / mean) | "
              "solver loop per eval / T | per eval / (F, S) |")
        print("|---|---|---|---|")
    else:
        print("| forward solver | T evals (max / mean) | converged | fwd time / T | "
              "fwd time per eval / T | solver loop per eval / T | per eval / (F, S) |")
        print("|---|---|---|---|---|---|---|")
    out.append(dict(case=(activation, norm), solver="(F, S)", loop=f"{fs_over_t:.2f}"))
    fwd_time = {}
    for label, solver, certify in SOLVERS:
        cap = args.halpern_cap if label.startswith("halpern") else args.max_steps
        loop_cell = fs_cell = "-"
        if not certify:
            # The solver alone (solve_batch), paired with a loop of as many batched T.
            # (Halpern never converges here: 100 steps measure its per-step cost.)
            m = 100 if label.startswith("halpern") else cap
            inner, mean, _, ratio, ratio_fs = solver_loop_cells(
                solver, fn, value_and_map, z0, c, t_loop_of, args, m)
            loop_cell = f"{ratio:.2f}"
            fs_cell = "-" if ratio_fs is None else f"{ratio_fs:.2f}"
        if args.solver_loop_only:
            print(f"| {label} | {inner} / {mean:.1f} | {loop_cell} | {fs_cell} |")
            out.append(dict(case=(activation, norm), solver=label, evals=inner, mean_evals=mean,
                            loop=loop_cell, fs=fs_cell))
            continue
        fwd = jax.jit(lambda p, x, s=solver, m=cap, cert=certify:
                      optjax.equilibrium(p, x, solver=s, tol=args.tol, max_steps=m, certify=cert))
        _, info = fwd(problem, x)
        t = timeit(fwd, problem, x, reps=reps)
        evals = int(jnp.max(info.evaluations))
        fwd_time[label] = (t, evals)
        print(f"| {label} | {evals} / {float(jnp.mean(info.evaluations)):.1f} | "
              f"{int(jnp.sum(info.converged))}/{args.batch} | {t / t_eval:.1f} | "
              f"{t / evals / t_eval:.2f} | {loop_cell} | {fs_cell} |")
        out.append(dict(case=(activation, norm), solver=label, evals=evals,
                        mean_evals=float(jnp.mean(info.evaluations)), loop=loop_cell,
                        fs=fs_cell))
    if args.solver_loop_only:
        return

    # The certificate's cost, default solver: certified / uncertified, three ways.
    plain = jax.jit(lambda p, x: optjax.equilibrium(p, x, tol=args.tol, certify=False))
    per_call = jax.jit(lambda p, x: optjax.equilibrium(p, x, tol=args.tol))
    t_plain_jit = timeit(plain, problem, x, reps=reps)
    t_carried = timeit(per_call, problem.with_norm(), x, reps=reps)
    t_recomputed = timeit(per_call, problem, x, reps=reps)
    eager = lambda p, x, c: optjax.equilibrium(p, x, tol=args.tol, certify=c)  # noqa: E731
    t_eager_plain = timeit(lambda p, x: eager(p, x, False), problem, x, reps=reps)
    t_eager = timeit(lambda p, x: eager(p, x, True), problem, x, reps=reps)
    print("\n| certificate (default solver) | certified / uncertified |")
    print("|---|---|")
    print(f"| default call, eager (the norm of this W computed once, reused) | "
          f"{t_eager / t_eager_plain:.2f} |")
    print(f"| under jit, norm carried (`problem.with_norm()`) | {t_carried / t_plain_jit:.2f} |")
    print(f"| under jit, exact norm recomputed every call | {t_recomputed / t_plain_jit:.2f} |")
    out.append(dict(case=(activation, norm), solver="certificate", evals=0, mean_evals=0.0,
                    loop="-", eager=t_eager / t_eager_plain, carried=t_carried / t_plain_jit,
                    recomputed=t_recomputed / t_plain_jit))

    # jaxopt called directly on the whole batch: one global stopping test on the batch's
    # Frobenius residual, its own implicit differentiation.
    def jaxopt_solve(kind):
        def solve(w, x):
            p = with_weight(problem, w)
            cc = optjax.injection(p, x)
            fp = lambda z, w, cc: p.activation(z @ w.T + cc) @ w  # noqa: E731
            # jaxopt stops on the batch's Frobenius residual: sqrt(batch) * tol is the same
            # tolerance on the root-mean-square per-sample residual (the largest one may stay
            # above tol: the table reports it).
            batch_tol = args.tol * float(np.sqrt(x.shape[0]))
            if kind == "fixed_point":
                solver = jaxopt.FixedPointIteration(fp, maxiter=args.max_steps, tol=batch_tol)
            else:
                solver = jaxopt.AndersonAcceleration(fp, history_size=5, maxiter=args.max_steps,
                                                     tol=batch_tol)
            return solver.run(z0, w, cc)
        return solve

    print("\n| same problem, other implementations | T evals | fwd time / T | "
          "fwd time / optjax same solver | largest per-sample residual / tol |")
    print("|---|---|---|---|---|")
    for kind, mine in (("fixed_point", "fixed_point"),
                       ("anderson", "jaxopt_anderson, jaxopt's ridge 1e-5")):
        solve = jax.jit(jaxopt_solve(kind))
        res = solve(problem.weight, x)
        t = timeit(lambda w, x: solve(w, x).params, problem.weight, x, reps=reps)
        steps = int(res.state.iter_num)
        worst = float(jnp.max(jnp.linalg.norm(
            res.params - batched_t(problem, res.params, c), axis=1))) / args.tol
        name = "FixedPointIteration" if kind == "fixed_point" else "AndersonAcceleration"
        print(f"| jaxopt.{name} (batch Frobenius tol sqrt(batch) x tol) | {steps} | "
              f"{t / t_eval:.1f} | {t / fwd_time[mine][0]:.2f} | {worst:.2f} |")
    k_unroll = fwd_time["fixed_point"][1]

    def unrolled(w, x):
        p = with_weight(problem, w)
        cc = optjax.injection(p, x)
        return jax.lax.fori_loop(0, k_unroll, lambda _, z: batched_t(p, z, cc), z0)

    t = timeit(jax.jit(unrolled), problem.weight, x, reps=reps)
    print(f"| unrolled loop, {k_unroll} steps | {k_unroll} | {t / t_eval:.1f} | "
          f"{t / fwd_time['fixed_point'][0]:.2f} |")

    # Backward modes: forward+backward against forward (default forward solver, no norm).
    print("\n| backward mode | fwd+bwd / fwd | bwd steps (max / mean) | bwd converged |")
    print("|---|---|---|---|")
    probe = optjax.backward_probe(args.batch)

    def loss(w, probe, mode):  # certify=False: the backward's cost, not the norm's
        z, _ = optjax.equilibrium(with_weight(problem, w), x, tol=args.tol,
                                  max_steps=args.max_steps, backward=mode, backward_probe=probe,
                                  certify=False)
        return jnp.sum(target * z)

    fwd = jax.jit(lambda w, probe: loss(w, probe, "cg"))
    t_fwd = timeit(fwd, problem.weight, probe, reps=reps)
    modes = [("cg", "cg"), ("gmres", "gmres"), ("fixed_point", "fixed_point"),
             ("phantom (5 steps)", optjax.backward.Phantom(steps=5, damping=0.5))]
    for label, mode in modes:
        g = jax.jit(jax.grad(lambda w, probe, m=mode: loss(w, probe, m), argnums=(0, 1)))
        _, stats = g(problem.weight, probe)
        t = timeit(g, problem.weight, probe, reps=reps)
        print(f"| {label} | {t / t_fwd:.2f} | {int(jnp.max(stats.steps))} / "
              f"{float(jnp.mean(stats.steps)):.1f} | "
              f"{int(jnp.sum(stats.converged))}/{args.batch} |")

    def jaxopt_loss(w, kind):
        return jnp.sum(target * jaxopt_solve(kind)(w, x).params)

    for kind in ("fixed_point", "anderson"):
        f = jax.jit(lambda w, k=kind: jaxopt_loss(w, k))
        g = jax.jit(jax.grad(lambda w, k=kind: jaxopt_loss(w, k)))
        ratio = timeit(g, problem.weight, reps=reps) / timeit(f, problem.weight, reps=reps)
        print(f"| jaxopt {kind}, its own implicit diff | {ratio:.2f} | - | - |")
    gu = jax.jit(jax.grad(lambda w: jnp.sum(target * unrolled(w, x))))
    t_unrolled = timeit(jax.jit(unrolled), problem.weight, x, reps=reps)
    ratio = timeit(gu, problem.weight, reps=reps) / t_unrolled
    print(f"| autodiff through the unrolled loop ({k_unroll} steps) | {ratio:.2f} | "
          f"{k_unroll} | - |")


def run_conv_case(args, out):
    """A convolutional unit layer (the Fashion-MNIST conv layer's shape: 3 x 3, 36 -> 36
    channels on 14 x 14, batch 64, relu, ||W|| = 0.9): evaluations and the solver loop per
    evaluation for every solver of ours, T being the layer's own map (two convolutions)."""
    problem, c, title = conv_case(args.quick)
    batch = c.shape[0]
    z0 = jnp.zeros_like(c)
    fn, value_and_map = unit_maps(problem)
    apply = jax.jit(lambda z, c: jax.vmap(fn)(z, c))
    fs_over_t = value_and_map_cost(fn, value_and_map, z0, c, args)

    def t_loop_of(n):
        loop = jax.jit(lambda z, c: jax.lax.fori_loop(0, n, lambda _, z: apply(z, c), z))
        return loop, (z0, c)

    print(f"\n### {title}\n")
    print(f"One (F, S) evaluation: {fs_over_t:.2f} T.\n")
    print("| forward solver | T evals (max / mean) | converged | solver loop per eval / T | "
          "per eval / (F, S) |")
    print("|---|---|---|---|---|")
    out.append(dict(case=("conv relu", 0.9), solver="(F, S)", loop=f"{fs_over_t:.2f}"))
    for label, solver, _ in SOLVERS:
        if label.startswith("jaxopt"):
            continue
        m = 100 if label.startswith("halpern") else args.max_steps
        inner, mean, converged, ratio, ratio_fs = solver_loop_cells(
            solver, fn, value_and_map, z0, c, t_loop_of, args, m)
        fs_cell = "-" if ratio_fs is None else f"{ratio_fs:.2f}"
        print(f"| {label} | {inner} / {mean:.1f} | {converged}/{batch} | {ratio:.2f} | "
              f"{fs_cell} |")
        out.append(dict(case=("conv relu", 0.9), solver=label, evals=inner, mean_evals=mean,
                        loop=f"{ratio:.2f}", fs=fs_cell))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one activation")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--halpern-cap", type=int, default=2000)
    parser.add_argument("--pair-reps", type=int, default=21,
                        help="alternating runs for the solver-loop ratios")
    parser.add_argument("--solver-loop-only", action="store_true",
                        help="only the per-step costs: the solver loops against T and (F, S)")
    args = parser.parse_args(argv)
    args.batch, args.d, args.n, args.p = (16, 32, 48, 16) if args.quick else (128, 256, 512, 64)
    norms = (0.9,) if args.quick else (0.5, 0.9, 0.99)
    acts = ("relu",) if args.quick else ("relu", "tanh")
    if args.quick:
        args.reps, args.halpern_cap, args.pair_reps = 2, 200, 3
    print(f"optjax {optjax.__version__}, jax {jax.__version__} on {jax.devices()[0].device_kind}; "
          f"batch {args.batch}, d {args.d}, n {args.n}, float32, tol {args.tol:g}, "
          f"median of {args.reps} runs")
    out = []
    # One LAPACK thread, as the optjax command uses (optjax/linalg/lapack.py): with two, the exact
    # norm took 800 ms instead of 4 whenever another process used a core.
    with single_threaded():
        for act in acts:
            for norm in norms:
                run_case(act, norm, args, out)
        run_conv_case(args, out)
    summary(out)
    return 0


def summary(out):
    cases = list(dict.fromkeys(row["case"] for row in out))
    labels = [label for label, _, certify in SOLVERS if not certify]
    cell = {(row["case"], row["solver"]): row for row in out}
    header = " | ".join(f"{act} {norm}" for act, norm in cases)

    def table(title, rows):  # rows: (label, function of a case's cell or None)
        print(f"\n### Summary: {title}\n\n| solver | {header} |\n"
              + "|---" * (len(cases) + 1) + "|")
        for label, key, text in rows:
            print(f"| {text or label} | " + " | ".join(
                key(cell[c, label]) if (c, label) in cell else "-" for c in cases) + " |")

    table("evaluations of T to the per-sample tolerance (max / mean over the batch; with "
          "--solver-loop-only, those of the timed loops, Halpern capped at 100)",
          [(label, lambda r: f"{r['evals']} / {r['mean_evals']:.1f}", None) for label in labels])
    if any(row["solver"] == "certificate" for row in out):
        table("default call (certificate included) / uncertified solve",
              [("certificate", lambda r, k=key: f"{r[k]:.2f}", text) for key, text in (
                  ("eager", "eager (norm cached per array)"), ("carried", "jit, norm carried"),
                  ("recomputed", "jit, norm recomputed"))])
    table("solver loop time per evaluation / T (first row: one (F, S) evaluation / T)",
          [("(F, S)", lambda r: r["loop"], "(F, S) evaluation")]
          + [(label, lambda r: r["loop"], None) for label in labels])
    table("solver loop time per evaluation / (F, S), for the solvers that evaluate (F, S)",
          [(label, lambda r: r["fs"], None) for label, s, c in SOLVERS
           if not c and s.needs_objective and s.decrease_test == "objective"])


if __name__ == "__main__":
    sys.exit(main())
