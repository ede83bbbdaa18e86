"""The contract between forward solvers and problem families (optjax.engine.properties), checked
for every registered solver on every family, sweep and splitting:

* a pair whose needs are not met is refused before any work, with a message naming what is
  missing and which solvers fit;
* a pair whose contract promises convergence converges to the tolerance within its step budget,
  on every sample (the contract problems below meet each family's assumptions);
* a pair accepted without a promise reports honestly: CONVERGED exactly where the residual is
  at most the tolerance.

A new solver is covered by registering it in optjax.solvers.SOLVERS, a new family by adding its
problem to CONTRACT_PROBLEMS (test_every_family_has_a_contract_problem fails until it is).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from optjax import solvers
from optjax.engine.properties import MapProperty, refusal
from optjax.families import deep
from optjax.families.deq import DEQProblem
from optjax.families.mondeq import MonDEQProblem
from optjax.linalg.convolution import Conv2D, StridedConv2D
from tests._problems import random_problem

BATCH = 3


def _rng(seed):
    return np.random.default_rng(seed)


def _opteq(prior=None):
    problem, x = random_problem(0, norm=0.9, activation="tanh", prior=prior, batch=BATCH)
    return problem, x


def _deep_dense(sweep, activations="relu"):
    rng = _rng(1)
    sizes = (30, 20, 10)  # the chain of the issue: 3 tiers, input 16
    couplings = deep.normalize([jnp.asarray(rng.normal(size=(m, n)))
                                for n, m in zip(sizes[:-1], sizes[1:])], 0.9)
    u = jnp.asarray(rng.normal(size=(sizes[0], 16)) / 4)
    biases = [jnp.asarray(0.5 * rng.normal(size=n)) for n in sizes]
    problem = deep.DeepProblem(couplings, u, biases, activations, sweep=sweep)
    return problem, jnp.asarray(rng.normal(size=(BATCH, 16)))


def _deep_conv(sweep):
    rng = _rng(2)
    raw = (StridedConv2D(jnp.asarray(rng.normal(size=(3, 3, 2, 3))), (4, 4), 2),
           Conv2D(jnp.asarray(rng.normal(size=(3, 3, 3, 2))), (2, 2)))
    biases = tuple(jnp.asarray(0.5 * rng.normal(size=(c,))) for c in (2, 3, 2))
    problem = deep.DeepProblem(deep.normalize(raw, 0.9), None, biases, "tanh", sweep=sweep)
    return problem, jnp.asarray(rng.normal(size=(BATCH, 4, 4, 2)))


def _deq():
    rng = _rng(3)
    w = rng.normal(size=(8, 8))
    problem = DEQProblem(jnp.asarray(0.6 * w / np.linalg.norm(w, 2)), jnp.tanh,
                         input_weight=jnp.asarray(rng.normal(size=(8, 5))))
    return problem, jnp.asarray(rng.normal(size=(BATCH, 5)))


def _mondeq(splitting):
    rng = _rng(4)
    d = 12
    a, b = (jnp.asarray(0.5 * rng.normal(size=(d, d)) / np.sqrt(d)) for _ in range(2))
    problem = MonDEQProblem(a, b, 0.5, splitting=splitting)
    return problem, jnp.asarray(rng.normal(size=(BATCH, d)))


CONTRACT_PROBLEMS = {
    "opteq": lambda: _opteq(),
    "opteq_l1": lambda: _opteq(optjax.priors.L1(0.1)),
    "opteq_box": lambda: _opteq(optjax.priors.Box(-0.2, 0.3)),
    "deep_dense_jacobi": lambda: _deep_dense("jacobi"),
    "deep_dense_gauss_seidel": lambda: _deep_dense("gauss_seidel"),
    "deep_dense_mixed_jacobi": lambda: _deep_dense("jacobi", ("relu", "tanh", "softsign")),
    "deep_conv_jacobi": lambda: _deep_conv("jacobi"),
    "deep_conv_gauss_seidel": lambda: _deep_conv("gauss_seidel"),
    "deq": _deq,
    "mondeq_forward_backward": lambda: _mondeq("forward_backward"),
    "mondeq_peaceman_rachford": lambda: _mondeq("peaceman_rachford"),
}

# Step budgets of the promised rates on these problems (float64): linear-rate and accelerated
# solvers reach 1e-9; Halpern's O(1/k) reaches 1e-3.
SETTINGS = {"halpern": dict(tol=1e-3, max_steps=200_000)}
DEFAULT = dict(tol=1e-9, max_steps=3000)


def _cell(name, family):
    solver_type = solvers.SOLVERS[name]
    problem, x = CONTRACT_PROBLEMS[family]()
    return solver_type, problem, x


@pytest.mark.parametrize("family", sorted(CONTRACT_PROBLEMS))
@pytest.mark.parametrize("name", sorted(solvers.SOLVERS))
def test_every_pair_converges_or_is_refused_as_its_contract_says(name, family):
    solver_type, problem, x = _cell(name, family)
    why = refusal(solver_type, problem, solvers.SOLVERS.values())
    settings = SETTINGS.get(name, DEFAULT)
    if why is not None:
        with pytest.raises(optjax.ConfigError, match="needs .*Solvers that fit: ") as refused:
            optjax.equilibrium(problem, x, solver=name, **settings)
        fitting = str(refused.value).split("Solvers that fit: ")[1].split(", ")
        assert name not in fitting and fitting, refused.value
        for other in fitting:  # the fitting solvers are accepted
            assert refusal(solvers.SOLVERS[other], problem, ()) is None
        return
    _, info = optjax.equilibrium(problem, x, solver=name, **settings)
    residual = np.asarray(info.residual)
    converged = np.asarray(info.converged)
    # Honest in every case: CONVERGED exactly where the residual is at most tol.
    np.testing.assert_array_equal(converged, residual <= settings["tol"])
    if solver_type.guarantee(problem.map_properties) is not None:
        assert converged.all(), (name, family, info.steps, residual)


def test_the_refusals_of_the_issue():
    """Nesterov assumes a 1-smooth objective with step 1: refused for the deep chain (either
    sweep), DEQ and monDEQ; the safeguarded Anderson needs an objective: refused for DEQ and
    monDEQ; Halpern needs a nonexpansive map or a contraction: refused for DEQ."""
    refused = {(n, f) for n in solvers.SOLVERS for f in CONTRACT_PROBLEMS
               if refusal(solvers.SOLVERS[n], CONTRACT_PROBLEMS[f]()[0], ()) is not None}
    deep_families = {f for f in CONTRACT_PROBLEMS if f.startswith("deep")}
    assert {("nesterov", f) for f in deep_families | {"deq", "mondeq_forward_backward"}} <= refused
    assert {("safeguarded_anderson", "deq"), ("halpern", "deq"),
            ("safeguarded_anderson", "mondeq_peaceman_rachford")} <= refused
    opteq = {f for f in CONTRACT_PROBLEMS if f.startswith("opteq")}
    assert not {(n, f) for n, f in refused if f in opteq}


def test_every_family_has_a_contract_problem():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    covered = {type(CONTRACT_PROBLEMS[f]()[0]) for f in CONTRACT_PROBLEMS}
    families = {cls for cls in subclasses(optjax.EquilibriumProblem)
                if cls.__module__.startswith("optjax.families")}
    assert families <= covered, families - covered


def test_declared_properties_hold_on_the_contract_problems():
    """Each declared property, measured: the Lipschitz ratio of the iterated map over random
    pairs (NONEXPANSIVE: <= 1; CONTRACTION: < 1 in the Euclidean norm where that is the norm
    claimed, the max-over-layers norm for the Gauss-Seidel sweep), and the plain step's decrease
    of the objective (OBJECTIVE)."""
    for family, make in CONTRACT_PROBLEMS.items():
        problem, x = make()
        props = problem.map_properties
        fn, objective, lift = _iterated_map(problem, x)
        rng = _rng(7)
        shape = lift.shape
        pairs = [(lift + jnp.asarray(rng.normal(size=shape)), lift + jnp.asarray(
            rng.normal(size=shape))) for _ in range(5)]
        for a, b in pairs:
            fa, fb = fn(a), fn(b)
            if MapProperty.NONEXPANSIVE in props or (
                    MapProperty.CONTRACTION in props and not family.endswith("gauss_seidel")):
                num = np.linalg.norm(np.asarray(fa - fb).reshape(BATCH, -1), axis=1)
                den = np.linalg.norm(np.asarray(a - b).reshape(BATCH, -1), axis=1)
                bound = 1.0 if MapProperty.CONTRACTION not in props else 1.0 - 1e-3
                assert np.all(num <= bound * den + 1e-12), (family, num / den)
            if MapProperty.CONTRACTION in props and family.endswith("gauss_seidel"):
                sizes = problem.sizes

                def block_max(v):
                    parts = deep.split(sizes, np.asarray(v).reshape(BATCH, -1))
                    return np.max(np.stack([np.linalg.norm(p, axis=1) for p in parts]), axis=0)

                assert np.all(block_max(fa - fb) < block_max(a - b)), family
            if MapProperty.OBJECTIVE in props:
                y = jnp.abs(a) if family.startswith("deep") else a  # in the penalties' domains
                if family == "deep_conv_jacobi" or family == "deep_conv_gauss_seidel":
                    y = jnp.clip(a, -0.9, 0.9)  # tanh's penalty: |s| < 1
                if family == "deep_dense_mixed_jacobi":
                    y = jnp.clip(jnp.abs(a), 0, 0.9)
                assert np.all(np.asarray(objective(fn(y))) <= np.asarray(objective(y)) + 1e-12), \
                    family


def _iterated_map(problem, x):
    """The batched map the solvers iterate (a splitting's own, in its variable, where the map
    has one), the objective (None without one) and the lifted zero state."""
    import jax

    map_fn, params, data = problem.equilibrium_map(), problem.parameters(), problem.sample_data(x)
    zeros = jnp.zeros((x.shape[0],) + tuple(problem.state_shape), x.dtype)
    objective = None
    if getattr(map_fn, "objective", None) is not None:
        objective = jax.vmap(lambda z, d: map_fn.objective(z, params, d))
        objective = (lambda f: lambda z: f(z, data))(objective)
    if hasattr(map_fn, "solve_map"):
        fn = jax.vmap(lambda u, d: map_fn.solve_map(u, params, d))
        lift = jax.vmap(lambda z, d: map_fn.solve_state(z, params, d))(zeros, data)
    else:
        fn, lift = jax.vmap(lambda z, d: map_fn(z, params, d)), zeros
    return (lambda z: fn(z, data)), objective, lift


def test_the_docs_table_states_the_contract():
    """docs/solvers.md's measured table: every cell says what the declarations say (refused,
    "yes" where a convergence is promised, "no guarantee" otherwise), for every registered
    solver and contract problem."""
    import pathlib

    text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "solvers.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("| solver | opteq")]
    assert len(lines) == 1, "docs/solvers.md must hold the measured table"
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in text.splitlines()[text.splitlines().index(lines[0]) + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    assert set(rows) == set(solvers.SOLVERS) and set(header[1:]) == set(CONTRACT_PROBLEMS)
    for name, solver_type in solvers.SOLVERS.items():
        for family, make in CONTRACT_PROBLEMS.items():
            problem = make()[0]
            if refusal(solver_type, problem, ()) is not None:
                want = "refused"
            elif solver_type.guarantee(problem.map_properties) is not None:
                want = "yes,"
            else:
                want = "no guarantee,"
            assert rows[name][family].startswith(want), (name, family, rows[name][family])
