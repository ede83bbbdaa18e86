"""The solver x family table of docs/solvers.md: for every registered solver and every contract
problem of tests/engine/test_contract.py, the contract's cell (the guarantee, "no guarantee", or
"refused" with what is missing) and the steps measured on that problem (max over its batch).

    .venv/bin/python benchmarks/solver_contract.py            # prints the markdown tables

Float64, tolerance 1e-9 (Halpern 1e-3), the step caps of the contract test. Step counts are
deterministic on one machine; other CPUs may differ by a step or two.
"""

from __future__ import annotations

import pathlib
import sys

import jax

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the tests' problems

import numpy as np  # noqa: E402

import optjax  # noqa: E402
from optjax import solvers  # noqa: E402
from optjax.engine.properties import describe, refusal  # noqa: E402
from tests.engine.test_contract import CONTRACT_PROBLEMS, DEFAULT, SETTINGS  # noqa: E402


def cells():
    """{(solver, family): (kind, text, steps)}: kind 'refused', 'guaranteed' or 'accepted'."""
    out = {}
    for family, make in CONTRACT_PROBLEMS.items():
        problem, x = make()
        for name, solver_type in solvers.SOLVERS.items():
            why = refusal(solver_type, problem, solvers.SOLVERS.values())
            if why is not None:
                needs = " or ".join(describe(n) for n in solver_type.requires)
                out[name, family] = ("refused", f"refused: needs {needs}", None)
                continue
            settings = SETTINGS.get(name, DEFAULT)
            _, info = optjax.equilibrium(problem, x, solver=name, **settings)
            steps = int(np.max(np.asarray(info.steps)))
            converged = bool(np.all(np.asarray(info.converged)))
            promise = solver_type.guarantee(problem.map_properties)
            kind = "guaranteed" if promise is not None else "accepted"
            text = promise if promise is not None else "no guarantee"
            out[name, family] = (kind, text, steps if converged else f"{steps} (not converged)")
    return out


def main() -> int:
    table = cells()
    families = list(CONTRACT_PROBLEMS)
    names = list(solvers.SOLVERS)
    print("| solver | " + " | ".join(families) + " |")
    print("|---" * (len(families) + 1) + "|")
    for name in names:
        row = []
        for family in families:
            kind, _, steps = table[name, family]
            row.append({"refused": "refused", "guaranteed": f"yes, {steps}",
                        "accepted": f"no guarantee, {steps}"}[kind])
        print(f"| {name} | " + " | ".join(row) + " |")
    print("\nGuarantees and refusals, in words:\n")
    seen = set()
    for name in names:
        for family in families:
            kind, text, _ = table[name, family]
            if (name, text) not in seen:
                seen.add((name, text))
                fams = [f for f in families if table[name, f][1] == text]
                print(f"- `{name}` on {', '.join(fams)}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
