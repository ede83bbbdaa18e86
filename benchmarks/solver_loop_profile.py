"""Benchmark: where a solver step's time goes, XLA op by XLA op, against one evaluation of T.

``unit_layer.py --solver-loop-only`` measures each solver loop per step in units of T; this
script says where the difference goes. It compiles each solver loop on the conv unit layer of
``unit_layer.py`` (3 x 3, 36 -> 36 channels on 14 x 14, batch 64, relu, ||W|| = 0.9) or its dense
layer, runs it for a fixed number of steps (tol 0) under ``jax.profiler``, and sums XLA's own
per-op timings (``jax.profiler.ProfileData``) over the loop. Each op is attributed, by its HLO
metadata, to T (the per-sample map, under ``vmap``) or to the solver, and the solver's ops are
listed with their share of one T (T measured the same way, as a loop of T alone).

    taskset -c 0 .venv/bin/python benchmarks/solver_loop_profile.py            # conv, 20 steps
    taskset -c 0 .venv/bin/python benchmarks/solver_loop_profile.py --case dense --top 6

Each figure comes from one profiled run, not from paired timings: the totals move by up to
0.06 T between runs (benchmarks/RESULTS.md), the largest ops by less than 0.01; the split
between ops is what this script is for, ``unit_layer.py`` gives the per-step ratios.
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import sys
import tempfile

import jax
import jax.numpy as jnp

import optjax
from _unit_cases import build, conv_case  # benchmarks/ is on sys.path when a script runs
from unit_layer import unit_maps

SOLVERS = [
    ("fixed_point", optjax.solvers.FixedPoint()),
    ("anderson (m=5)", optjax.solvers.Anderson()),
    ("safeguarded_anderson, gradient test",
     optjax.solvers.SafeguardedAnderson(decrease_test="gradient")),
    ("safeguarded_anderson, F test", optjax.solvers.SafeguardedAnderson(decrease_test="objective")),
]
CONTAINERS = ("while", "conditional", "call", "tuple", "get-tuple-element", "parameter",
              "constant", "bitcast", "copy-start", "copy-done")


def dense_case(quick: bool):
    batch, d, n, p = (8, 16, 32, 8) if quick else (128, 256, 512, 64)
    problem, x, _ = build(0, batch, d, n, p, 0.9, "relu")
    title = f"dense relu, ||W|| = 0.9 ({n} x {d}, batch {batch})"
    return problem, optjax.injection(problem, x), title


def op_sources(compiled_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (opcode, the op_name of its metadata) of a compiled module."""
    sources = {}
    pattern = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+\s+([\w\-]+)\(")
    for line in compiled_text.splitlines():
        match = pattern.match(line)
        if match:
            op_name = re.search(r'op_name="([^"]*)"', line)
            sources[match.group(1)] = (match.group(2), op_name.group(1) if op_name else "")
    return sources


def profile(fn, args, reps: int) -> dict[str, tuple[float, str, str]]:
    """Per XLA op of ``fn``'s compiled module (containers excluded): seconds per call, its
    opcode and its source (the HLO op_name)."""
    compiled = jax.jit(fn).lower(*args).compile()
    sources = op_sources(compiled.as_text())
    jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            for _ in range(reps):
                jax.block_until_ready(compiled(*args))
        path = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[0]
        data = jax.profiler.ProfileData.from_file(path)
    totals: dict[str, float] = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                opcode = sources.get(event.name, ("", ""))[0]
                if event.name in sources and opcode not in CONTAINERS:
                    totals[event.name] += event.duration_ns * 1e-9 / reps
    return {name: (seconds, *sources[name]) for name, seconds in totals.items()}


def in_t(op_name: str) -> bool:
    # The solvers apply the per-sample map under vmap (optjax.solvers.base.batched).
    return "vmap(" in op_name


def short(op_name: str) -> str:
    parts = [p for p in op_name.split("/") if p not in ("while", "body", "cond")]
    return "/".join(parts[1:])[-70:] if len(parts) > 1 else op_name[-70:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("conv", "dense"), default="conv")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--top", type=int, default=8, help="solver ops listed per solver")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args(argv)

    problem, c, title = (conv_case if args.case == "conv" else dense_case)(args.quick)
    fn, value_and_map = unit_maps(problem)
    z0 = jnp.zeros((c.shape[0],) + tuple(problem.state_shape), c.dtype)
    apply = jax.vmap(fn)
    steps = args.steps

    def t_loop(z, c):
        return jax.lax.fori_loop(0, steps + 1, lambda _, z: apply(z, c), z)

    t_ops = profile(t_loop, (z0, c), args.reps)
    t_one = sum(s for s, _, _ in t_ops.values()) / (steps + 1)
    print(f"### {title}\n")
    print(f"One T: {t_one * 1e3:.3f} ms (a loop of {steps + 1} T, profiled). Each solver runs "
          f"{steps} steps after its first evaluation (tol 0), {args.reps} runs.\n")
    print("| solver | per step / T | T's ops / T | solver's ops / T | largest solver ops "
          "(/ T per step) |")
    print("|---|---|---|---|---|")
    details = []
    for label, solver in SOLVERS:
        def solve(z0, c, solver=solver):
            return solver.solve_batch(fn, z0, c, tol=0.0, max_steps=steps,
                                      value_and_map=value_and_map).point

        ops = profile(solve, (z0, c), args.reps)
        per_t = {name: s / (steps + 1) / t_one for name, (s, _, _) in ops.items()}
        t_part = sum(v for name, v in per_t.items() if in_t(ops[name][2]))
        solver_ops = sorted(((v, name) for name, v in per_t.items() if not in_t(ops[name][2])),
                            reverse=True)
        rest = sum(v for v, _ in solver_ops)
        top = ", ".join(f"{name} {v:.3f}" for v, name in solver_ops[:3])
        print(f"| {label} | {t_part + rest:.2f} | {t_part:.2f} | {rest:.2f} | {top} |")
        details.append((label, ops, solver_ops))
    for label, ops, solver_ops in details:
        print(f"\n{label}: the solver's ops, time per step / T\n")
        print("| op | opcode | / T | source |")
        print("|---|---|---|---|")
        for v, name in solver_ops[:args.top]:
            print(f"| {name} | {ops[name][1]} | {v:.3f} | {short(ops[name][2])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
