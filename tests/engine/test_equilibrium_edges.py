"""optjax.equilibrium at its edges: bad input is refused eagerly with a message that says what to
change (shapes, dtypes, unknown options and bad combinations, non-prox activations, invalid
prior parameters, a traced tol, solvers that need an objective on a problem without one) or,
when traced under jit, flagged per sample in the status (NONFINITE, NONCONVEX, INFEASIBLE),
never silent; a status or certificate that says CONVERGED is true (certify=False included); an
empty batch gives empty results; the norm of concrete weights is computed once and never stale.
(The solutions themselves: tests/engine/test_equilibrium_solutions.py.)"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from optjax.convex import priors
from tests._problems import random_problem


# -- bad input ----------------------------------------------------------------------------------

def test_nonfinite_input_is_flagged_per_sample_not_silent():
    problem, x = random_problem(8, batch=4)
    x = x.at[1, 0].set(jnp.nan).at[2, 3].set(jnp.inf)
    z, info = optjax.equilibrium(problem, x)
    np.testing.assert_array_equal(np.asarray(info.nonfinite), [False, True, True, False])
    np.testing.assert_array_equal(np.asarray(info.converged), [True, False, False, True])
    assert np.all(np.asarray(info.status)[[1, 2]] == optjax.Status.NONFINITE)
    assert int(info.steps[1]) <= 1  # stops at once instead of spinning to max_steps
    with pytest.raises(optjax.EquilibriumError, match="sample 1: NONFINITE"):
        optjax.check(info)


def test_wrong_shapes_are_refused_with_a_message():
    problem, x = random_problem(9, p=5)
    with pytest.raises(ValueError, match=r"x must have shape \(batch,\) \+ \(5,\).*x\[None\]"):
        optjax.equilibrium(problem, x[0])
    with pytest.raises(ValueError, match=r"x must have shape"):
        optjax.equilibrium(problem, jnp.ones((3, 4)))
    with pytest.raises(TypeError, match="floating dtype"):
        optjax.equilibrium(problem, jnp.ones((3, 5), jnp.int32))
    with pytest.raises(ValueError, match=r"input_weight U must be an \(n, p\) array"):
        optjax.OptEqProblem(problem.weight, "relu", input_weight=jnp.ones((3, 5)))
    with pytest.raises(ValueError, match="bias b must have shape"):
        optjax.OptEqProblem(problem.weight, "relu", bias=jnp.ones(3))
    with pytest.raises(ValueError, match="2-D"):
        optjax.OptEqProblem(jnp.ones(3), "relu")
    with pytest.raises(ValueError, match="init must have shape"):
        optjax.equilibrium(problem, x, init=jnp.ones((2, 8)))


def test_weights_breaking_convexity_raise_eagerly_and_are_flagged_under_jit():
    problem, x = random_problem(10, norm=1.2)
    with pytest.raises(optjax.NonconvexError, match=r"\|\|W\|\| = 1\.2.*Rescale W"):
        optjax.equilibrium(problem, x)
    _, info = jax.jit(lambda p, x: optjax.equilibrium(p, x, max_steps=50))(problem, x)
    assert not bool(jnp.any(info.converged))
    assert np.all(np.asarray(info.status) == optjax.Status.NONCONVEX)
    with pytest.raises(optjax.EquilibriumError, match="NONCONVEX"):
        optjax.check(info)
    # The sigmoid's slope is at most 1/4, so ||W|| up to 2 keeps the problem convex.
    sig, x = random_problem(10, norm=1.9, activation="sigmoid")
    assert bool(jnp.all(optjax.equilibrium(sig, x)[1].converged))


def test_unknown_options_and_bad_combinations_are_refused():
    problem, x = random_problem(11)
    with pytest.raises(optjax.ConfigError, match="unknown solver 'newton'"):
        optjax.equilibrium(problem, x, solver="newton")
    with pytest.raises(optjax.ConfigError, match=r"unknown option\(s\) for Anderson: 'histroy'.*history"):
        optjax.equilibrium(problem, x, solver="anderson", solver_options={"histroy": 3})
    with pytest.raises(optjax.ConfigError, match="unknown backward mode"):
        optjax.equilibrium(problem, x, backward="adjoint")
    with pytest.raises(TypeError):
        optjax.equilibrium(problem, x, tolerance=1e-3)
    with pytest.raises(optjax.ConfigError, match="tol must be a positive finite number"):
        optjax.equilibrium(problem, x, tol=-1.0)
    with pytest.raises(optjax.ConfigError, match="anchor= is used by the Halpern solver only"):
        optjax.equilibrium(problem, x, anchor=jnp.zeros(8))
    l1, x = random_problem(11, prior=priors.L1(0.1))
    with pytest.raises(optjax.ConfigError, match="needs a symmetric system.*gmres"):
        optjax.equilibrium(l1, x, backward="cg")
    quad, x = random_problem(11, prior=priors.Quadratic(0.1))
    with pytest.raises(ValueError, match="needs feature=u"):
        optjax.equilibrium(quad, x)


def test_non_prox_activation_is_refused():
    problem, _ = random_problem(12)
    with pytest.raises(optjax.NotAProxError):
        optjax.OptEqProblem(problem.weight, "gelu")
    with pytest.raises(TypeError, match="from_function"):
        optjax.OptEqProblem(problem.weight, jax.nn.gelu)


def test_certify_false_skips_the_norm_and_says_so():
    problem, x = random_problem(13, norm=0.9)
    z, info = optjax.equilibrium(problem, x, certify=False)
    z_ref, info_ref = optjax.equilibrium(problem, x)
    np.testing.assert_allclose(z, z_ref)
    assert np.isnan(float(info.certificate.modulus)) and np.isnan(float(info.certificate.weight_norm))
    assert np.all(np.isinf(np.asarray(info.certificate.suboptimality_bound)))
    assert bool(jnp.all(info.converged))
    # A given weight_norm (e.g. from a normalisation) is used as it is, without recomputation.
    known = optjax.OptEqProblem(problem.weight, problem.activation, problem.input_weight,
                                problem.bias, weight_norm=0.95)
    _, info_known = optjax.equilibrium(known, x)
    np.testing.assert_allclose(info_known.certificate.modulus, 1 - 0.95**2, rtol=1e-12)


# --- the edges: a status or certificate that says CONVERGED is true ---------------------------


def test_certify_false_still_flags_clearly_nonconvex_weights_under_jit():
    problem, x = random_problem(21, norm=1.5, activation="relu")
    solve = jax.jit(lambda p, x: optjax.equilibrium(p, x, certify=False, max_steps=30))
    _, info = solve(problem, x)
    assert np.all(np.asarray(info.status) == optjax.Status.NONCONVEX)
    assert not bool(jnp.any(info.converged))
    with pytest.raises(optjax.EquilibriumError, match="break convexity"):
        optjax.check(info)
    with pytest.raises(optjax.NonconvexError, match=r"\|\|W\|\| >= 1\.4"):
        optjax.equilibrium(problem, x, certify=False)


@pytest.mark.parametrize("certify", [True, False])
def test_nan_in_the_weights_is_nonfinite_not_nonconvex(certify):
    problem, x = random_problem(22)
    w = problem.weight.at[0, 0].set(jnp.nan)
    bad = optjax.OptEqProblem(w, problem.activation, problem.input_weight, problem.bias)
    _, info = jax.jit(lambda p, x: optjax.equilibrium(p, x, certify=certify))(bad, x)
    assert np.all(np.asarray(info.status) == optjax.Status.NONFINITE)
    assert bool(jnp.all(info.nonfinite)) and not bool(jnp.any(info.converged))
    with pytest.raises(optjax.EquilibriumError, match="NaN or Inf in W"):
        optjax.check(info)
    with pytest.raises(ValueError, match="NaN or Inf in W"):
        optjax.equilibrium(bad, x, certify=certify)


_TRACED_PRIORS: list[type] = []


# One module-level jitted function, the prior's constructor static (the lambdas below live as
# long as the module): twice in CI, a closure jitted inside each parametrisation returned, in an
# xdist worker, the status of the previous parametrisation's prior (Ball(-1) NONCONVEX,
# Quadratic(-1) INFEASIBLE), as a jit cache keyed on a dead closure's reused address would.
@functools.partial(jax.jit, static_argnums=0)
def _solve_with_traced_prior(make, value, problem, x, feature):
    prior = make(value)
    _TRACED_PRIORS.append(type(prior))
    p = optjax.OptEqProblem(problem.weight, problem.activation, problem.input_weight,
                            problem.bias, prior)
    f = feature if isinstance(prior, priors.Quadratic) else None
    return optjax.equilibrium(p, x, feature=f, backward="gmres")[1]


@pytest.mark.parametrize("make, status, words", [
    (lambda v: priors.L1(v), optjax.Status.NONCONVEX, "R nonconvex"),
    (lambda v: priors.Ball(v), optjax.Status.INFEASIBLE, "empty"),
    (lambda v: priors.Box(-v, v), optjax.Status.INFEASIBLE, "empty"),
    (lambda v: priors.Quadratic(v), optjax.Status.NONCONVEX, "R nonconvex"),
], ids=["l1", "ball", "box", "quadratic"])
def test_invalid_prior_parameters_are_refused_or_flagged(make, status, words):
    problem, x = random_problem(23, norm=0.9)
    # Concrete: refused on construction, with what to change.
    with pytest.raises(ValueError, match=">= 0|<= upper"):
        make(-1.0)
    make(1.0)  # a valid value is accepted
    # Traced (a parameter being learned): the solve reports the status and the reason.
    feature = jnp.zeros((x.shape[0], 8))
    info = _solve_with_traced_prior(make, -1.0, problem, x, feature)
    # This call traced this prior (not a compiled program of an earlier parametrisation).
    assert _TRACED_PRIORS[-1] is type(make(1.0))
    assert np.all(np.asarray(info.status) == status), (
        f"statuses {np.asarray(info.status)}, defect bits {int(info.defects)}, prior "
        f"{type(make(1.0)).__name__}")
    assert not bool(jnp.any(info.converged))
    assert np.all(np.isinf(np.asarray(info.certificate.suboptimality_bound))) or \
        status == optjax.Status.INFEASIBLE
    with pytest.raises(optjax.EquilibriumError, match=words):
        optjax.check(info)
    # The same code with a valid value converges.
    assert optjax.check(_solve_with_traced_prior(make, 0.5, problem, x, feature))


def test_tol_must_be_static_and_says_how():
    problem, x = random_problem(24)
    with pytest.raises(optjax.ConfigError, match="static"):
        jax.jit(lambda t: optjax.equilibrium(problem, x, tol=t)[0])(1e-5)
    # A concrete numpy scalar is fine.
    _, info = optjax.equilibrium(problem, x, tol=np.float32(1e-5))
    assert info.tol == pytest.approx(1e-5)


def test_an_empty_batch_gives_empty_results():
    problem, x = random_problem(25)
    z, info = optjax.equilibrium(problem, x[:0])
    assert z.shape == (0, 8) and info.status.shape == (0,)
    grad = jax.grad(lambda w: jnp.sum(optjax.equilibrium(
        optjax.OptEqProblem(w, problem.activation, problem.input_weight, problem.bias),
        x[:0])[0]))(problem.weight)
    assert bool(jnp.all(grad == 0))


def test_the_norm_of_concrete_weights_is_computed_once(monkeypatch):
    from optjax.linalg import linear_map

    problem, x = random_problem(26, norm=0.9)
    calls = []
    original = linear_map.spectral_norm
    monkeypatch.setattr(linear_map, "spectral_norm", lambda w: calls.append(1) or original(w))
    for _ in range(3):
        _, info = optjax.equilibrium(problem, x)
    assert len(calls) == 1
    np.testing.assert_allclose(info.certificate.weight_norm, 0.9, rtol=1e-12)
    # New weights (a new array): a new norm, never the stale one.
    scaled = optjax.OptEqProblem(0.5 * problem.weight, problem.activation, problem.input_weight,
                                 problem.bias)
    _, info = optjax.equilibrium(scaled, x)
    assert len(calls) == 2
    np.testing.assert_allclose(info.certificate.weight_norm, 0.45, rtol=1e-12)
    # with_norm: computed once, carried into jit, never recomputed there.
    carried = problem.with_norm()
    calls.clear()
    _, info = jax.jit(lambda p, x: optjax.equilibrium(p, x))(carried, x)
    assert not calls
    np.testing.assert_allclose(info.certificate.weight_norm, 0.9, rtol=1e-12)


def test_solvers_that_need_an_objective_refuse_problems_without_one():
    from optjax.families.deq import DEQProblem

    rng = np.random.default_rng(27)
    w = jnp.asarray(0.5 * rng.normal(size=(6, 6)) / np.sqrt(6))
    problem = DEQProblem(w, jnp.tanh)
    assert not problem.has_objective
    safeguarded = [name for name, cls in optjax.solvers.SOLVERS.items()
                   if getattr(cls, "needs_objective", False)]
    for name in safeguarded:
        with pytest.raises(optjax.ConfigError, match="needs an explicit objective"):
            optjax.equilibrium(problem, jnp.ones((2, 6)), solver=name)
