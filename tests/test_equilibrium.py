"""optjax.equilibrium: the equilibrium is the minimiser of the explicit objective, for every
solver; it composes with jit, vmap and grad; bad input is refused or flagged, never silent."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from optjax import priors
from tests._problems import independent_minimizer, random_problem

SOLVERS = ["fixed_point", "anderson", "halpern", "nesterov"]
FAST = ["fixed_point", "anderson", "nesterov"]


@pytest.mark.parametrize("solver", FAST)
@pytest.mark.parametrize(
    "activation,norm,d,n",
    [("relu", 0.9, 8, 12), ("tanh", 0.99, 10, 6), ("softplus", 0.95, 6, 9), ("sigmoid", 1.9, 7, 7),
     ("leaky_relu", 0.99, 12, 20), ("arctan", 0.8, 5, 5)],
)
def test_equilibrium_is_the_minimizer_of_the_objective(solver, activation, norm, d, n):
    problem, x = random_problem(1, d=d, n=n, norm=norm, activation=activation, bias_scale=1.0)
    z, info = optjax.equilibrium(problem, x, solver=solver, tol=1e-12, max_steps=20000)
    assert bool(jnp.all(info.converged)), info.failures()
    z_ref, g_ref = independent_minimizer(problem, x)
    np.testing.assert_allclose(np.asarray(z), z_ref, atol=1e-7, rtol=0)
    np.testing.assert_allclose(np.asarray(info.objective), g_ref, atol=1e-9, rtol=1e-10)
    # It is a fixed point of T, and the certificate brackets the truth.
    assert float(jnp.max(info.residual)) <= 1e-12
    assert bool(jnp.all(info.objective - g_ref <= info.certificate.suboptimality_bound + 1e-12))


def test_halpern_finds_the_unique_minimizer_when_strongly_convex():
    problem, x = random_problem(2, norm=0.5, activation="tanh")
    # Halpern's residual decays like 1/k only: a loose tolerance, and the distance bound r / mu
    # says how close z must be.
    z, info = optjax.equilibrium(problem, x, solver="halpern", tol=1e-5, max_steps=200000)
    assert bool(jnp.all(info.converged))
    z_ref, _ = independent_minimizer(problem, x)
    dist = np.linalg.norm(np.asarray(z) - z_ref, axis=1)
    assert np.all(dist <= np.asarray(info.certificate.distance_bound) + 1e-9)
    assert np.all(dist <= 2e-5)


@pytest.mark.parametrize(
    "prior",
    [priors.L1(0.15), priors.Nonnegative(), priors.Box(-0.2, 0.3), priors.Ball(0.4),
     priors.Quadratic(0.5)],
    ids=["l1", "nonnegative", "box", "ball", "quadratic"],
)
@pytest.mark.parametrize("solver", ["fixed_point", "nesterov"])
def test_prior_equilibrium_is_argmin_of_objective_plus_prior(prior, solver):
    problem, x = random_problem(3, d=7, n=9, norm=0.95, activation="relu", prior=prior,
                                bias_scale=1.0)
    feature = None
    if isinstance(prior, priors.Quadratic):
        feature = jnp.asarray(np.random.default_rng(0).normal(size=(x.shape[0], 7)))
    z, info = optjax.equilibrium(problem, x, solver=solver, tol=1e-12, max_steps=20000,
                                 feature=feature)
    assert bool(jnp.all(info.converged)), info.failures()
    z_ref, f_ref = independent_minimizer(problem, x, feature)
    np.testing.assert_allclose(np.asarray(z), z_ref, atol=1e-7)
    np.testing.assert_allclose(np.asarray(info.objective), f_ref, atol=1e-9)
    # The prior changes the answer (the test would pass vacuously otherwise).
    plain = optjax.equilibrium(problem.__class__(problem.weight, problem.activation,
                                                 problem.input_weight, problem.bias),
                               x, tol=1e-12, max_steps=20000)[0]
    assert float(jnp.max(jnp.abs(plain - z))) > 1e-3


def test_stopping_is_per_sample():
    problem, x = random_problem(4, norm=0.95, batch=4)
    x = x.at[0].set(0.0).at[3].multiply(30.0)  # an easy and a hard sample
    _, info = optjax.equilibrium(problem, x, solver="fixed_point", tol=1e-10, max_steps=5000)
    steps = np.asarray(info.steps)
    assert len(set(steps.tolist())) > 1
    assert bool(jnp.all(info.converged))


def test_max_steps_reached_is_reported_per_sample():
    problem, x = random_problem(5, norm=0.99)
    _, info = optjax.equilibrium(problem, x, solver="fixed_point", tol=1e-12, max_steps=5)
    assert not bool(jnp.any(info.converged))
    assert np.all(np.asarray(info.status) == optjax.Status.MAX_STEPS)
    assert np.all(np.asarray(info.residual) > 1e-12)
    with pytest.raises(optjax.EquilibriumError, match=r"sample 0: MAX_STEPS.*after 5 steps"):
        optjax.check(info)


@pytest.mark.parametrize("solver", [  # anderson compiles for ~12 s: with --run-slow
    pytest.param(s, marks=pytest.mark.slow) if s == "anderson" else s for s in SOLVERS])
def test_jit_vmap_grad_compose_with_every_solver(solver):
    problem, x = random_problem(6, norm=0.8)
    # Halpern converges like 1/k: a looser tolerance keeps the test short.
    kw = dict(solver=solver, tol=1e-4 if solver == "halpern" else 1e-10, max_steps=200000)

    def loss(w, x):
        p = optjax.OptEqProblem(w, problem.activation, problem.input_weight, problem.bias)
        z, info = optjax.equilibrium(p, x, **kw)
        return jnp.sum(jnp.sin(z)), info

    value, info = loss(problem.weight, x)
    jit_value, jit_info = jax.jit(loss)(problem.weight, x)
    np.testing.assert_allclose(jit_value, value, rtol=1e-10)
    assert bool(jnp.all(jit_info.converged))

    # vmap over a stack of problems (weights) and over an extra batch axis of inputs.
    ws = jnp.stack([problem.weight, 0.5 * problem.weight])
    values, infos = jax.vmap(loss, in_axes=(0, None))(ws, x)
    np.testing.assert_allclose(values[0], value, rtol=1e-9)
    assert infos.steps.shape == (2, x.shape[0])
    xs = jnp.stack([x, -x])
    values, _ = jax.jit(jax.vmap(loss, in_axes=(None, 0)))(problem.weight, xs)
    np.testing.assert_allclose(values[0], value, rtol=1e-9)

    grad = jax.grad(lambda w: loss(w, x)[0])(problem.weight)
    grad_jit = jax.jit(jax.grad(lambda w: loss(w, x)[0]))(problem.weight)
    np.testing.assert_allclose(grad_jit, grad, rtol=1e-8, atol=1e-12)
    assert float(jnp.linalg.norm(grad)) > 0


def test_float32_and_certificate_fields():
    problem, x = random_problem(7, norm=0.9, dtype=jnp.float32)
    z, info = optjax.equilibrium(problem, x, tol=1e-5)
    assert z.dtype == jnp.float32
    assert bool(jnp.all(info.converged))
    cert = info.certificate
    np.testing.assert_allclose(cert.weight_norm, 0.9, rtol=1e-5)
    np.testing.assert_allclose(cert.modulus, 1 - 0.81, rtol=1e-4)
    np.testing.assert_allclose(cert.suboptimality_bound, cert.residual**2 / (2 * cert.modulus),
                               rtol=1e-5)


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

    def solve(v, x):
        prior = make(v)
        p = optjax.OptEqProblem(problem.weight, problem.activation, problem.input_weight,
                                problem.bias, prior)
        f = feature if isinstance(prior, priors.Quadratic) else None
        return optjax.equilibrium(p, x, feature=f, backward="gmres")[1]

    info = jax.jit(solve)(-1.0, x)
    assert np.all(np.asarray(info.status) == status)
    assert not bool(jnp.any(info.converged))
    assert np.all(np.isinf(np.asarray(info.certificate.suboptimality_bound))) or \
        status == optjax.Status.INFEASIBLE
    with pytest.raises(optjax.EquilibriumError, match=words):
        optjax.check(info)
    assert optjax.check(jax.jit(solve)(0.5, x))  # the same code with a valid value converges


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
    from optjax import linear_map

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
    from optjax.deq import DEQProblem

    rng = np.random.default_rng(27)
    w = jnp.asarray(0.5 * rng.normal(size=(6, 6)) / np.sqrt(6))
    problem = DEQProblem(w, jnp.tanh)
    assert not problem.has_objective
    safeguarded = [name for name, cls in optjax.solvers.SOLVERS.items()
                   if getattr(cls, "needs_objective", False)]
    for name in safeguarded:
        with pytest.raises(optjax.ConfigError, match="needs an explicit objective"):
            optjax.equilibrium(problem, jnp.ones((2, 6)), solver=name)


def _problems_of_every_kind():
    """One small problem of each type, and its input (float64)."""
    from optjax import deep
    from optjax.deq import DEQProblem
    from optjax.mondeq import MonDEQProblem

    rng = np.random.default_rng(28)
    unit, x = random_problem(28, d=6, n=9, p=6)
    chain = deep.DeepProblem(deep.normalize([jnp.asarray(rng.normal(size=(5, 6)))], 0.9),
                             None, None, "tanh")
    deq = DEQProblem(jnp.asarray(0.6 * rng.normal(size=(6, 6)) / np.sqrt(6)), jnp.tanh)
    mon = MonDEQProblem(jnp.asarray(0.3 * rng.normal(size=(6, 6)) / np.sqrt(6)),
                        jnp.asarray(0.3 * rng.normal(size=(6, 6)) / np.sqrt(6)), 0.2)
    return {"opteq": (unit, x), "deep_opteq": (chain, x), "deq": (deq, x), "mondeq": (mon, x)}


@pytest.mark.parametrize("kind", ["opteq", "deep_opteq", "deq", "mondeq"])
def test_every_problem_type_goes_through_the_one_engine(kind):
    problem, x = _problems_of_every_kind()[kind]
    z, info = jax.jit(lambda p, x: optjax.equilibrium(p, x, tol=1e-11, max_steps=3000))(problem, x)
    assert isinstance(info, optjax.SolveInfo) and info.problem == kind
    assert optjax.check(info) is info
    # The returned point is a fixed point of the problem's map, recomputed independently here.
    map_fn = problem.equilibrium_map()
    image = jax.vmap(map_fn, in_axes=(0, None, 0))(z, problem.parameters(), problem.sample_data(x))
    np.testing.assert_allclose(image, z, atol=1e-10)
    # Implicit gradients with respect to the input agree with central finite differences.
    direction = jnp.asarray(np.random.default_rng(1).normal(size=x.shape))
    weights = jnp.asarray(np.random.default_rng(2).normal(size=z.shape))
    loss = lambda x: jnp.sum(weights * optjax.equilibrium(problem, x, tol=1e-12,  # noqa: E731
                                                          max_steps=5000)[0])
    h = 1e-5
    numeric = (loss(x + h * direction) - loss(x - h * direction)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(jax.grad(loss)(x), direction), numeric, rtol=1e-6,
                               atol=1e-8)


class JitAndEagerAgree(chex.TestCase):
    """The same call, compiled or not, gives the same equilibrium and result structure."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_equilibrium_and_info(self):
        problem, x = random_problem(40, activation="softplus", norm=0.95)
        solve = self.variant(lambda p, x: optjax.equilibrium(p, x, tol=1e-11, max_steps=2000))
        z, info = solve(problem, x)
        chex.assert_shape(z, (3, 8))
        chex.assert_shape([info.steps, info.status, info.residual, info.objective], (3,))
        chex.assert_tree_all_finite((z, info.certificate.suboptimality_bound))
        z_min, f_min = independent_minimizer(problem, x)
        chex.assert_trees_all_close(z, jnp.asarray(z_min), atol=1e-7)
        chex.assert_trees_all_close(info.objective, jnp.asarray(f_min), rtol=1e-10)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradients(self):
        problem, x = random_problem(41, activation="tanh", norm=0.9)

        def loss(w):
            p = optjax.OptEqProblem(w, problem.activation, problem.input_weight, problem.bias)
            return jnp.sum(optjax.equilibrium(p, x, tol=1e-12, max_steps=5000)[0] ** 2)

        grad = self.variant(jax.grad(loss))(problem.weight)
        chex.assert_equal_shape([grad, problem.weight])
        direction = jnp.asarray(np.random.default_rng(3).normal(size=problem.weight.shape))
        h = 1e-5
        numeric = (loss(problem.weight + h * direction) - loss(problem.weight - h * direction)) / (
            2 * h)
        chex.assert_trees_all_close(jnp.vdot(grad, direction), numeric, rtol=1e-6)
