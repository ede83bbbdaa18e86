"""optjax.equilibrium returns the true equilibrium: the minimiser of the explicit objective (an
independent L-BFGS minimiser, tests/_problems.py) for every solver, priors included, with a
certificate that brackets the truth; stopping and MAX_STEPS are per sample; float32 and the
certificate's fields; it composes with jit, vmap and grad (the same equilibrium within the
certified bounds, the gradient of the point reached); every problem type (OptEq, deep OptEq,
DEQ, monDEQ) goes through the one engine; compiled and eager calls agree. (Bad input and the
edges: tests/engine/test_equilibrium_edges.py.)"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from optjax.convex import priors
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


def _gradient_lipschitz(problem):
    """K such that, to first order, the implicit gradient of sum(sin z) with respect to W moves by
    at most K delta (Frobenius) when the point z of one sample moves by delta, for
    S(z) = W^T tanh(W z + c). That gradient is tanh(u) v^T + (D W v) z^T with u = W z + c,
    D = diag(tanh'(u)) and v = (I - W^T D W)^{-1} cos z. With w = ||W||, mu = 1 - w^2,
    |tanh|, |tanh'| <= 1 and |tanh''| <= s = 4 / (3 sqrt 3): ||tanh(u)|| <= sqrt(n),
    ||z|| <= w sqrt(n), ||v|| <= sqrt(d) / mu; a change delta of z moves tanh(u) by <= w delta,
    D by <= s w delta, I - W^T D W by <= s w^3 delta and v by <= a delta with
    a = (1 + s w^3 ||v||) / mu. (About 90 here; the measured ratio is 1-2.)"""
    n, d = problem.weight.shape
    w = float(np.linalg.norm(np.asarray(problem.weight), 2))
    mu, s = 1 - w**2, 4 / (3 * np.sqrt(3))
    v, z = np.sqrt(d) / mu, w * np.sqrt(n)
    a = (1 + s * w**3 * v) / mu
    return (w * v + np.sqrt(n) * a) + (s * w**2 * v + w * a) * z + w * v


@pytest.mark.parametrize("solver", [  # anderson compiles for ~12 s: with --run-slow
    pytest.param(s, marks=pytest.mark.slow) if s == "anderson" else s for s in SOLVERS])
def test_jit_vmap_grad_compose_with_every_solver(solver):
    """Under jit and vmap the solve reaches the same equilibrium and the loss and its gradient
    are those of the point reached. Not bitwise: jit and vmap compile other programs (other
    kernels for other batch shapes, other fusions), whose rounding may stop a sample's solve a
    step earlier or later. What holds whatever the rounding: each returned point lies within
    its certificate's distance bound r / mu of the unique equilibrium, so two of them within
    the sum of their bounds; sum(sin z) moves by at most ||dz||_1 (sin is 1-Lipschitz) and the
    gradient by at most _gradient_lipschitz * ||dz||. Where the two solves stop together, dz is
    rounding and so is the tolerance left."""
    problem, x = random_problem(6, norm=0.8)
    assert problem.activation.name == "tanh"  # _gradient_lipschitz is written for tanh
    # Halpern converges like 1/k: a looser tolerance keeps the test short.
    kw = dict(solver=solver, tol=1e-4 if solver == "halpern" else 1e-10, max_steps=200000)
    eps = np.finfo(np.float64).eps

    def loss(w, x):
        p = optjax.OptEqProblem(w, problem.activation, problem.input_weight, problem.bias)
        z, info = optjax.equilibrium(p, x, **kw)
        return jnp.sum(jnp.sin(z)), (z, info)

    def agree(a, b):
        """(value, z, distance bound) of two solves of the same samples."""
        (value_a, z_a, bound_a), (value_b, z_b, bound_b) = [
            (float(v), np.asarray(z), np.asarray(bound)) for v, z, bound in (a, b)]
        gap = np.linalg.norm(z_a - z_b, axis=1)
        assert np.all(gap <= bound_a + bound_b + 64 * eps), (gap, bound_a + bound_b)
        # rounding of the two sums: a few eps per term
        rounding = 4 * z_a.size * eps * np.sum(np.abs(np.sin(z_a)))
        assert abs(value_a - value_b) <= np.sum(np.abs(z_a - z_b)) + rounding, (value_a, value_b)

    value, (z, info) = loss(problem.weight, x)
    assert bool(jnp.all(info.converged))
    ref = (value, z, info.certificate.distance_bound)
    jit_value, (jit_z, jit_info) = jax.jit(loss)(problem.weight, x)
    assert bool(jnp.all(jit_info.converged))
    agree(ref, (jit_value, jit_z, jit_info.certificate.distance_bound))

    # vmap over a stack of problems (weights) and over an extra batch axis of inputs.
    ws = jnp.stack([problem.weight, 0.5 * problem.weight])
    values, (zs, infos) = jax.vmap(loss, in_axes=(0, None))(ws, x)
    assert infos.steps.shape == (2, x.shape[0])
    assert bool(jnp.all(infos.converged[0]))
    agree(ref, (values[0], zs[0], infos.certificate.distance_bound[0]))
    xs = jnp.stack([x, -x])
    values, (zs, infos) = jax.jit(jax.vmap(loss, in_axes=(None, 0)))(problem.weight, xs)
    assert bool(jnp.all(infos.converged[0]))
    agree(ref, (values[0], zs[0], infos.certificate.distance_bound[0]))

    grad_fn = jax.grad(loss, has_aux=True)
    grad, (grad_z, _) = grad_fn(problem.weight, x)
    grad_jit, (grad_jit_z, _) = jax.jit(grad_fn)(problem.weight, x)
    # rtol: the backward solves (relative tolerance 1e-12, error <= 1e-12 / mu of ||v||) and
    # rounding; atol: the two forward points apart by dz, and rounding.
    dz = np.sum(np.linalg.norm(np.asarray(grad_z) - np.asarray(grad_jit_z), axis=1))
    np.testing.assert_allclose(grad_jit, grad, rtol=1e-8,
                               atol=1e-12 + _gradient_lipschitz(problem) * dz)
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


def _problems_of_every_kind():
    """One small problem of each type, and its input (float64)."""
    from optjax.families import deep
    from optjax.families.deq import DEQProblem
    from optjax.families.mondeq import MonDEQProblem

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


def test_trace_records_the_solve_of_every_problem_under_jit():
    """equilibrium(..., trace=True): info.trace holds each sample's residual after every step
    (the returned residual at its last step, NaN after), under jit; the default records none;
    jaxopt's reference solvers keep no history and say so."""
    problem, x = random_problem(0, norm=0.9, activation="tanh", batch=3)
    solve = jax.jit(lambda p, x: optjax.equilibrium(p, x, tol=1e-9, max_steps=80, trace=True))
    _, info = solve(problem, x)
    history = np.asarray(info.trace.residual)
    assert history.shape == (3, 81)
    for i, k in enumerate(np.asarray(info.steps)):
        assert history[i, k] <= 1e-9 < history[i, k - 1] and np.all(np.isnan(history[i, k + 1:]))
    assert np.all(np.isfinite(np.asarray(info.trace.objective)[:, 0]))  # the default solver's F
    assert optjax.equilibrium(problem, x)[1].trace is None
    with pytest.raises(optjax.ConfigError, match="keep no history"):
        optjax.equilibrium(problem, x, solver="jaxopt_anderson", trace=True)
    with pytest.raises(optjax.ConfigError, match="trace must be True or False"):
        optjax.equilibrium(problem, x, trace=1)
