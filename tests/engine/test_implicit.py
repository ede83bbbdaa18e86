"""Implicit gradients: every backward mode against central finite differences and against
differentiating a long unrolled loop, in float64."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from optjax.convex import priors
from optjax.families.opteq.map import equilibrium_map
from tests._problems import random_problem


def _setup(seed, prior=None, activation="tanh", norm=0.9, feature=False):
    problem, x = random_problem(seed, d=7, n=9, p=4, norm=norm, activation=activation,
                                prior=prior, bias_scale=0.8)
    rng = np.random.default_rng(seed + 100)
    f = jnp.asarray(rng.normal(size=(x.shape[0], 7))) if feature else None
    target = jnp.asarray(rng.normal(size=(x.shape[0], 7)))
    params = dict(w=problem.weight, u=problem.input_weight, b=problem.bias, x=x)
    if isinstance(prior, priors.L1):
        params["lam"] = jnp.asarray(prior.lam)
    return problem, params, f, target


def _problem(problem, params):
    prior = problem.prior
    if isinstance(prior, priors.L1):
        prior = priors.L1(params["lam"])
    return optjax.OptEqProblem(params["w"], problem.activation, params["u"], params["b"], prior)


def _loss_fn(problem, feature, target, **kw):
    def loss(params):
        z, _ = optjax.equilibrium(_problem(problem, params), params["x"], feature=feature, **kw)
        return jnp.sum(target * z) + 0.5 * jnp.sum(z**2)

    return loss


def _unrolled_loss_fn(problem, feature, target, steps=2000):
    """The same loss through `steps` plain applications of S from 0, differentiated by autodiff."""

    def loss(params):
        p = _problem(problem, params)
        c = optjax.injection(p, params["x"])
        fmap = jax.vmap(
            functools.partial(equilibrium_map, p.activation), in_axes=(0, None, 0)
        )
        z = jax.lax.fori_loop(
            0, steps, lambda _, z: fmap(z, (p.weight, p.prior), (c, feature)),
            jnp.zeros_like(target),
        )
        return jnp.sum(target * z) + 0.5 * jnp.sum(z**2)

    return loss


def _directional_fd(loss, params, direction, h=1e-5):
    plus = jax.tree_util.tree_map(lambda p, d: p + h * d, params, direction)
    minus = jax.tree_util.tree_map(lambda p, d: p - h * d, params, direction)
    return (loss(plus) - loss(minus)) / (2 * h)


def _tree_dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


CASES = [
    ("cg", None, "tanh"),
    ("cg", None, "softplus"),
    ("fixed_point", None, "tanh"),
    ("gmres", None, "sigmoid"),
    ("gmres", priors.L1(0.05), "tanh"),
    ("fixed_point", priors.L1(0.05), "tanh"),
    ("gmres", priors.Box(-0.25, 0.3), "softplus"),
    ("cg", priors.Quadratic(0.3), "tanh"),
]


@pytest.mark.parametrize("backward,prior,activation", CASES)
def test_implicit_gradient_matches_finite_differences_and_unrolling(backward, prior, activation):
    feature = isinstance(prior, priors.Quadratic)
    problem, params, f, target = _setup(0, prior, activation, feature=feature)
    loss = _loss_fn(problem, f, target, solver="nesterov", tol=1e-14, max_steps=5000,
                    backward=backward)
    grad = jax.grad(loss)(params)

    rng = np.random.default_rng(1)
    for _ in range(3):
        direction = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
        fd = _directional_fd(loss, params, direction)
        np.testing.assert_allclose(_tree_dot(grad, direction), fd, rtol=1e-6)

    unrolled = jax.grad(_unrolled_loss_fn(problem, f, target))(params)
    for key in params:
        np.testing.assert_allclose(grad[key], unrolled[key], rtol=1e-8, atol=1e-10, err_msg=key)


def test_default_backward_meets_the_documented_accuracy():
    problem, params, f, target = _setup(3, None, "softplus", norm=0.99)
    loss = _loss_fn(problem, f, target, tol=1e-14, max_steps=20000)  # defaults otherwise
    grad = jax.grad(loss)(params)
    unrolled = jax.grad(_unrolled_loss_fn(problem, f, target, steps=6000))(params)
    for key in params:
        np.testing.assert_allclose(grad[key], unrolled[key], rtol=1e-8, atol=1e-10, err_msg=key)


@pytest.mark.parametrize("steps,damping", [(1, 1.0), (5, 0.5), (12, 0.8)])
def test_phantom_gradient_is_the_gradient_of_damped_steps_from_the_equilibrium(steps, damping):
    problem, params, f, target = _setup(4, priors.L1(0.05))
    loss = _loss_fn(problem, f, target, tol=1e-14, max_steps=5000,
                    backward=optjax.backward.Phantom(steps=steps, damping=damping))
    grad = jax.grad(loss)(params)

    def damped(params):
        p = _problem(problem, params)
        z_star, _ = optjax.equilibrium(p, params["x"], tol=1e-14, max_steps=5000,
                                       backward="gmres")
        z = jax.lax.stop_gradient(z_star)
        for _ in range(steps):
            z = (1 - damping) * z + damping * optjax.operator(p, z, params["x"])
        return jnp.sum(target * z) + 0.5 * jnp.sum(z**2)

    expected = jax.grad(damped)(params)
    for key in params:
        np.testing.assert_allclose(grad[key], expected[key], rtol=1e-9, atol=1e-12, err_msg=key)


@pytest.mark.slow  # ~8 s; the phantom's exact formula is checked by the damped-steps test above
def test_phantom_gradient_approaches_the_implicit_gradient():
    problem, params, f, target = _setup(5)
    exact = jax.grad(_loss_fn(problem, f, target, tol=1e-14, max_steps=5000))(params)["w"]
    errors = []
    for k in (2, 8, 32):
        g = jax.grad(_loss_fn(problem, f, target, tol=1e-14, max_steps=5000,
                              backward=optjax.backward.Phantom(steps=k, damping=1.0)))(params)
        errors.append(float(jnp.linalg.norm(g["w"] - exact) / jnp.linalg.norm(exact)))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-2


def test_backward_statistics_reach_the_caller_through_the_probe():
    problem, params, _, target = _setup(6, norm=0.99)
    x = params["x"]

    def loss(w, probe, backward):
        p = optjax.OptEqProblem(w, problem.activation, problem.input_weight, problem.bias)
        z, _ = optjax.equilibrium(p, x, tol=1e-13, max_steps=20000, backward=backward,
                                  backward_probe=probe)
        return jnp.sum(target * z)

    probe = optjax.backward_probe(x.shape[0], jnp.float64)
    stats = {}
    for mode in ("cg", "fixed_point", "gmres"):
        _, stats[mode] = jax.grad(loss, argnums=(0, 1))(problem.weight, probe, mode)
        assert np.all(np.asarray(stats[mode].converged) == 1.0), mode
        assert np.all(np.asarray(stats[mode].steps) > 0)
        tol = 1e-12 * np.linalg.norm(np.asarray(target), axis=1)
        assert np.all(np.asarray(stats[mode].residual) <= tol * 1.0001)
    # CG uses the symmetry of I - W^T D W: at most dimension + 1 steps, far fewer than
    # fixed-point iteration overall.
    cg, fp = np.asarray(stats["cg"].steps), np.asarray(stats["fixed_point"].steps)
    assert np.all(cg <= 7 + 1) and np.all(cg <= fp)
    assert cg.sum() < fp.sum() / 2


def test_backward_that_cannot_converge_says_so():
    problem, params, _, target = _setup(7, norm=0.99)
    x = params["x"]

    def loss(w, probe):
        p = optjax.OptEqProblem(w, problem.activation, problem.input_weight, problem.bias)
        z, _ = optjax.equilibrium(
            p, x, tol=1e-12, max_steps=20000, backward_probe=probe,
            backward=optjax.backward.FixedPointBackward(max_steps=3),
        )
        return jnp.sum(target * z)

    with pytest.warns(optjax.EquilibriumWarning, match="approximate"):
        _, stats = jax.grad(loss, argnums=(0, 1))(problem.weight,
                                                  optjax.backward_probe(3, jnp.float64))
    assert np.all(np.asarray(stats.converged) == 0.0)
    assert np.all(np.asarray(stats.steps) == 3)


def test_a_capped_backward_is_visible_without_the_probe_and_a_converged_one_is_quiet():
    """relu with every unit active and ||W|| = 0.99: the fixed-point backward at its cap leaves
    a visibly wrong gradient, and the user hears about it from the warning alone."""
    rng = np.random.default_rng(30)
    w = rng.normal(size=(9, 7))
    w = jnp.asarray(0.99 * w / np.linalg.norm(w, 2))
    x = jnp.asarray(rng.normal(size=(3, 9))) + 20.0  # every pre-activation positive
    target = jnp.asarray(rng.normal(size=(3, 7)))

    def grad(backward):
        def loss(w):
            z, _ = optjax.equilibrium(optjax.OptEqProblem(w, "relu"), x, tol=1e-13,
                                      max_steps=20000, backward=backward)
            return jnp.sum(target * z)
        return jax.grad(loss)(w)

    with pytest.warns(optjax.EquilibriumWarning):
        capped = grad(optjax.backward.FixedPointBackward(max_steps=20))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", optjax.EquilibriumWarning)
        exact = grad("cg")
        quiet = grad(optjax.backward.FixedPointBackward(max_steps=20, on_failure="ignore"))
    assert float(jnp.linalg.norm(capped - exact) / jnp.linalg.norm(exact)) > 1e-3
    np.testing.assert_array_equal(quiet, capped)


def test_phantom_never_reports_an_exact_looking_convergence():
    problem, params, _, target = _setup(8, norm=0.99)
    x = params["x"]

    def loss(w, probe):
        p = optjax.OptEqProblem(w, problem.activation, problem.input_weight, problem.bias)
        z, _ = optjax.equilibrium(p, x, tol=1e-12, max_steps=20000, backward_probe=probe,
                                  backward="phantom")
        return jnp.sum(target * z)

    grads, stats = jax.grad(loss, argnums=(0, 1))(problem.weight,
                                                  optjax.backward_probe(3, jnp.float64))
    assert np.all(np.asarray(stats.converged) == 0.0)
    assert np.all(np.asarray(stats.residual) > 1e-6 * np.linalg.norm(target, axis=1))


@pytest.mark.parametrize("backward", [
    "cg", pytest.param("gmres", marks=pytest.mark.slow), "fixed_point", "phantom"])
def test_a_nonfinite_sample_does_not_poison_the_batch(backward):
    problem, params, _, target = _setup(9, norm=0.9)
    x = params["x"].at[1, 0].set(jnp.nan)  # sample 1 is broken
    keep = jnp.asarray([1.0, 0.0, 1.0])[:, None]  # and left out of the loss

    def loss(w, x):
        p = optjax.OptEqProblem(w, problem.activation, problem.input_weight, problem.bias)
        z, _ = optjax.equilibrium(p, x, tol=1e-13, max_steps=5000, backward=backward)
        return jnp.sum(keep * target * jnp.where(jnp.isfinite(z), z, 0.0))

    g_w, g_x = jax.grad(loss, argnums=(0, 1))(problem.weight, x)
    # The shared gradient equals the one computed without the broken sample at all.
    clean = jnp.stack([x[0], x[2]])

    def clean_loss(w):
        p = optjax.OptEqProblem(w, problem.activation, problem.input_weight, problem.bias)
        z, _ = optjax.equilibrium(p, clean, tol=1e-13, max_steps=5000, backward=backward)
        return jnp.sum(jnp.stack([target[0], target[2]]) * z)

    # Batches of 3 and 2: other kernels, so not bitwise in general (it happens to be on this
    # AVX2 CPU). The tolerance is what the solves allow: each forward point within
    # tol / mu = 5e-13 of the equilibrium (a step apart: ~1e-13), each backward solve within
    # 1e-12 / mu = 5e-12 relative, and the gradient moves by 1.1-1.6 ||dz|| (measured here, for
    # cg and phantom): below atol for the ~1e-13 of a step.
    np.testing.assert_allclose(g_w, jax.grad(clean_loss)(problem.weight), rtol=1e-10,
                               atol=1e-12)
    assert bool(jnp.all(jnp.isfinite(g_x[jnp.array([0, 2])])))
    np.testing.assert_array_equal(g_x[1], 0.0)  # ignored by the loss: zero, by the rule


def test_a_nonfinite_sample_in_the_loss_gives_a_nan_input_gradient_only_there():
    problem, params, _, target = _setup(10, norm=0.9)
    x = params["x"].at[1, 0].set(jnp.inf)

    def loss(w, x):
        p = optjax.OptEqProblem(w, problem.activation, problem.input_weight, problem.bias)
        z, _ = optjax.equilibrium(p, x, tol=1e-12, max_steps=5000)
        return jnp.sum(target * jnp.where(jnp.isfinite(z), z, 1.0))

    g_w, g_x = jax.grad(loss, argnums=(0, 1))(problem.weight, x)
    assert bool(jnp.all(jnp.isfinite(g_w)))
    assert bool(jnp.all(jnp.isnan(g_x[1]))) and bool(jnp.all(jnp.isfinite(g_x[jnp.array([0, 2])])))


@pytest.mark.parametrize("backward", ["cg", "gmres", "fixed_point"])
def test_the_backward_solve_is_exact_at_any_scale_of_the_loss_gradient(backward):
    """The backward system is linear in g: a sample whose loss gradient is 1e-30 times another's
    (a confidently classified sample late in training) has a gradient 1e-30 times as large,
    solved as accurately, in float32. Before scaling g the float32 loop read ||g||^2 = 0 as
    "converged" and returned v = 0, or stalled above a tolerance below rounding."""
    problem32, x = random_problem(40, d=7, n=9, p=4, batch=4, norm=0.95, dtype=jnp.float32)
    scales = jnp.asarray([1.0, 1e-12, 1e-22, 1e-30], jnp.float32)
    target = jnp.asarray(np.random.default_rng(41).normal(size=(4, 7)), jnp.float32)

    def grad_x(problem, x, scales, target):
        def loss(x, probe):
            z, _ = optjax.equilibrium(problem, x, tol=1e-6, max_steps=500, backward=backward,
                                      backward_probe=probe)
            return jnp.sum(scales[:, None] * target * z)
        return jax.grad(loss, argnums=(0, 1))(x, optjax.backward_probe(4, x.dtype))

    g32, stats = grad_x(problem32, x, scales, target)
    assert np.all(np.asarray(stats.converged) == 1.0), np.asarray(stats.residual)
    # float64 reference at scale 1 (the same equilibria, solved in float64)
    problem64 = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if hasattr(a, "astype") else a, problem32)
    g64, _ = grad_x(problem64, x.astype(jnp.float64), jnp.ones(4), target.astype(jnp.float64))
    rescaled = np.asarray(g32, np.float64) / np.asarray(scales, np.float64)[:, None]
    # float32 solves to a relative residual 3e-5: errors up to 3e-5 / (1 - 0.95) of ||g||
    np.testing.assert_allclose(rescaled, np.asarray(g64), rtol=1e-3, atol=2e-4)
