"""monDEQ (optjax.mondeq): Peaceman--Rachford with an exact resolvent (dense, FFT) against
forward-backward and dense references built here in numpy from the definitions; the stopping
test's bound, the certificate's distance bound, implicit gradients, step counts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from optjax.families import mondeq
from optjax.linalg.convolution import Conv2D
from optjax.families.mondeq import MonDEQProblem
from tests.linalg.test_convolution import dense_reference

H, C = 6, 3


def _rng(seed):
    return np.random.default_rng(seed)


def _dense_problem(seed=0, d=12, scale=0.5, m=0.1, **kw):
    rng = _rng(seed)
    a = jnp.asarray(scale * rng.normal(size=(d, d)) / np.sqrt(d))
    b = jnp.asarray(scale * rng.normal(size=(d, d)) / np.sqrt(d))
    return MonDEQProblem(a, b, m, **kw)


def _conv_problem(seed=0, spatial=(H, H), channels=C, scale=0.6, m=0.1, **kw):
    rng = _rng(seed)
    kernels = [jnp.asarray(scale * rng.normal(size=(3, 3, channels, channels)) /
                           np.sqrt(9 * channels)) for _ in range(2)]
    a, b = (Conv2D(k, spatial, "circular") for k in kernels)
    return MonDEQProblem(a, b, m, **kw)


def _matrices(problem):
    """Dense A, B and W = (1 - m) I - A^T A + B - B^T, from the test's own conv reference."""
    a, b = problem.weight_a, problem.weight_b
    if isinstance(a, Conv2D):
        a, b = (dense_reference(w.kernel, w.spatial, w.padding) for w in (a, b))
    a, b = np.asarray(a), np.asarray(b)
    w = (1 - problem.m) * np.eye(a.shape[0]) - a.T @ a + b - b.T
    return a, b, w


def _inputs(problem, batch=3, seed=1, scale=1.0):
    return jnp.asarray(scale * _rng(seed).normal(size=(batch,) + problem.state_shape))


def _flat(z):
    return np.asarray(z).reshape(z.shape[0], -1)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_peaceman_rachford_reaches_the_forward_backward_equilibrium(kind):
    problem = _dense_problem() if kind == "dense" else _conv_problem()
    x = _inputs(problem)
    fb, info_fb = optjax.equilibrium(problem, x, tol=1e-12, max_steps=20000)
    pr, info_pr = optjax.equilibrium(dataclasses.replace(problem, splitting="peaceman_rachford"),
                                     x, tol=1e-12, max_steps=2000)
    assert bool(jnp.all(info_fb.converged)) and bool(jnp.all(info_pr.converged))
    np.testing.assert_allclose(pr, fb, atol=1e-10)
    # ... which is the equilibrium z = relu(W z + x) of the dense matrix
    _, _, w = _matrices(problem)
    for z, c in zip(_flat(pr), _flat(x)):
        np.testing.assert_allclose(z, np.maximum(w @ z + c, 0.0), atol=1e-11)
    assert np.max(np.abs(_flat(pr))) > 1e-2 and np.min(_flat(pr)) == 0.0  # both regimes
    assert np.all(np.asarray(info_pr.certificate.residual) <= 1e-12)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 2.5])
def test_fft_resolvent_equals_a_dense_solve(alpha):
    for spatial, channels in (((H, H), C), ((4, 5), 2), ((3, 2), 1)):
        problem = _conv_problem(seed=3, spatial=spatial, channels=channels, scale=2.0)
        a, b, w = _matrices(problem)
        m_dense = np.eye(w.shape[0]) + alpha * (np.eye(w.shape[0]) - w)
        res = mondeq.resolvent(problem.m, problem.weight_a, problem.weight_b, jnp.asarray(alpha))
        assert res.spatial == spatial
        v = _rng(4).normal(size=(5,) + problem.state_shape)
        got = np.asarray(jax.vmap(res)(jnp.asarray(v)))
        want = np.linalg.solve(m_dense, v.reshape(5, -1).T).T
        np.testing.assert_allclose(got.reshape(5, -1), want, atol=1e-12)
        np.testing.assert_allclose(float(res.norm), np.linalg.norm(m_dense, 2), rtol=1e-12)


def test_dense_resolvent_equals_a_dense_solve():
    problem = _dense_problem(seed=5, scale=3.0)
    _, _, w = _matrices(problem)
    alpha = 0.7
    m_dense = np.eye(w.shape[0]) + alpha * (np.eye(w.shape[0]) - w)
    res = mondeq.resolvent(problem.m, problem.weight_a, problem.weight_b, jnp.asarray(alpha))
    v = _rng(6).normal(size=(4, w.shape[0]))
    np.testing.assert_allclose(jax.vmap(res)(jnp.asarray(v)), np.linalg.solve(m_dense, v.T).T,
                               atol=1e-12)
    np.testing.assert_allclose(float(res.norm), np.linalg.norm(m_dense, 2), rtol=1e-12)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_stopping_test_bounds_the_equilibrium_residual_at_any_point(kind):
    """||z - relu(Wz + c)|| <= ||y - PR(y)|| at the returned point z = z_half(u), y = kappa u,
    kappa = max(1, 1/alpha) / 2, for ANY u: the solver's test implies the equilibrium residual;
    for alpha < 1 the bound is attained when every component stays active (large positive u)."""
    make = _dense_problem if kind == "dense" else _conv_problem
    base = make(seed=7, scale=2.0)
    _, _, w = _matrices(base)
    for alpha in (0.2, 1.0, 4.0):
        problem = dataclasses.replace(base, splitting="peaceman_rachford", step=jnp.asarray(alpha))
        map_fn, params = problem.equilibrium_map(), problem.parameters()
        c = _inputs(problem, batch=1, seed=8)[0]
        ratios = []
        for seed in range(22):
            rng = _rng(100 + seed)
            y = jnp.asarray(rng.normal(size=problem.state_shape) * rng.uniform(1e-3, 10))
            if seed >= 20:  # all active: z_half = 100 + noise, c with W z_half + c = 50 + noise
                z_h = 100.0 + rng.normal(size=w.shape[0])
                c = jnp.asarray(50.0 + rng.normal(size=w.shape[0]) - w @ z_h).reshape(c.shape)
                m_dense = (1 + alpha) * np.eye(w.shape[0]) - alpha * w
                u = m_dense @ z_h - alpha * np.ravel(c)  # > 0, and z_half(u) = z_h
                y = map_fn.solve_state(jnp.asarray(u).reshape(c.shape), params, c)
            step = float(jnp.linalg.norm(y - map_fn.solve_map(y, params, c)))
            z = np.ravel(map_fn.equilibrium_point(y, params, c))
            residual = np.linalg.norm(z - np.maximum(w @ z + np.ravel(c), 0.0))
            assert residual <= step * (1 + 1e-10), (alpha, residual, step)
            ratios.append(residual / step)
        assert max(ratios) > (0.99 if alpha < 1 else 0.05)  # not vacuous; tight for alpha < 1


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_distance_bound_holds_at_loose_solutions(kind):
    problem = _dense_problem(seed=9) if kind == "dense" else _conv_problem(seed=9)
    problem = dataclasses.replace(problem, splitting="peaceman_rachford")
    x = _inputs(problem, batch=4, seed=10)
    exact, info = optjax.equilibrium(problem, x, tol=1e-13, max_steps=2000)
    assert bool(jnp.all(info.converged))
    for tol in (1e-1, 1e-3):
        loose, info = optjax.equilibrium(problem, x, tol=tol)
        assert bool(jnp.all(info.converged))
        assert np.all(np.asarray(info.certificate.residual) <= tol)
        error = np.linalg.norm(_flat(loose) - _flat(exact), axis=1)
        assert np.all(error > 1e-12)
        assert np.all(error <= np.asarray(info.certificate.distance_bound)), (
            error, info.certificate.distance_bound)


def test_float32_converged_status_is_true():
    problem = _conv_problem(seed=11, splitting="peaceman_rachford")
    problem = jax.tree_util.tree_map(lambda v: v.astype(jnp.float32), problem)
    x = _inputs(problem, batch=4, seed=12).astype(jnp.float32)
    z, info = optjax.equilibrium(problem, x, tol=1e-4)
    assert z.dtype == jnp.float32 and bool(jnp.all(info.converged))
    _, _, w = _matrices(jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), problem))
    for zi, ci in zip(_flat(z).astype(np.float64), _flat(x).astype(np.float64)):
        assert np.linalg.norm(zi - np.maximum(w @ zi + ci, 0.0)) <= 1e-4 * (1 + 1e-3)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_gradients_match_central_finite_differences(kind):
    problem = _dense_problem(seed=13) if kind == "dense" else _conv_problem(seed=13)
    x = _inputs(problem, batch=2, seed=14)
    g = jnp.asarray(_rng(15).normal(size=x.shape))

    def loss(weights, x):
        a, b = weights
        p = dataclasses.replace(problem, weight_a=a, weight_b=b, splitting="peaceman_rachford")
        z, _ = optjax.equilibrium(p, x, tol=1e-13, max_steps=3000,
                                  backward_options=dict(tol=1e-13, max_steps=500))
        return jnp.sum(g * jnp.sin(z))

    weights = (problem.weight_a, problem.weight_b)
    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    _, (g_w, g_x) = value_and_grad(weights, x)

    def flat(tree):
        return np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(tree)])

    assert np.linalg.norm(flat(g_w)) > 1e-3
    h = 1e-6
    for seed in range(2):
        rng = _rng(200 + seed)
        dw = jax.tree_util.tree_map(lambda v: jnp.asarray(rng.normal(size=v.shape)), weights)
        dx = jnp.asarray(rng.normal(size=x.shape))

        def shift(t):
            return jax.tree_util.tree_map(lambda p, d: p + t * d, weights, dw), x + t * dx

        fd = (value_and_grad(*shift(h))[0] - value_and_grad(*shift(-h))[0]) / (2 * h)
        np.testing.assert_allclose(np.dot(flat(g_w), flat(dw)) + float(jnp.vdot(g_x, dx)), fd,
                                   rtol=1e-6)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_splitting_backward_solves_the_adjoint_system(kind):
    """backward="auto" on a Peaceman--Rachford monDEQ runs the splitting on the adjoint
    problem; its input cotangent D v, v = (I - W^T D)^-1 g, equals a numpy dense solve at the
    equilibrium (solved to 1e-12), to the requested tolerance."""
    problem = dataclasses.replace(
        _dense_problem(seed=21) if kind == "dense" else _conv_problem(seed=21),
        splitting="peaceman_rachford")
    x = _inputs(problem, batch=2, seed=22)
    g = jnp.asarray(_rng(23).normal(size=x.shape))
    probe = optjax.backward_probe(x.shape[0], jnp.float64)

    def loss(x, probe):
        z, _ = optjax.equilibrium(problem, x, tol=1e-12, max_steps=3000,
                                  backward_options=dict(tol=1e-10, max_steps=400),
                                  backward_probe=probe)
        return jnp.sum(g * z), z

    (x_bar, stats), z = jax.grad(loss, argnums=(0, 1), has_aux=True)(x, probe)
    _, _, w = _matrices(problem)
    for zi, ci, gi, bar in zip(_flat(z), _flat(x), _flat(g), _flat(x_bar)):
        d = np.diag((w @ zi + ci > 0).astype(float))
        v = np.linalg.solve(np.eye(len(zi)) - w.T @ d, gi)
        np.testing.assert_allclose(bar, d @ v, atol=1e-8 * np.linalg.norm(v))
    assert bool(jnp.all(stats.converged == 1)) and bool(jnp.all(stats.residual <= 1e-9)), stats
    assert problem.auto_backward == "splitting"


def test_float32_splitting_backward_is_exact_at_any_scale_of_the_loss_gradient():
    """A learnt sample's loss gradient may be 1e-30 of another's: its input cotangent is then
    1e-30 times the dense solve's, converged, in float32 (||g||^2 underflows if unscaled)."""
    problem = _conv_problem(seed=24, splitting="peaceman_rachford")
    problem = jax.tree_util.tree_map(lambda v: v.astype(jnp.float32), problem)
    x = _inputs(problem, batch=3, seed=25).astype(jnp.float32)
    scales = np.asarray([1.0, 1e-22, 1e-30])
    g = jnp.asarray(_rng(26).normal(size=x.shape) * scales[:, None, None, None], jnp.float32)

    def loss(x, probe):
        z, _ = optjax.equilibrium(problem, x, tol=1e-5, max_steps=500,
                                  backward_options=dict(tol=1e-4, max_steps=200),
                                  backward_probe=probe)
        return jnp.sum(g * z), z

    (x_bar, stats), z = jax.grad(loss, argnums=(0, 1), has_aux=True)(
        x, optjax.backward_probe(3, jnp.float32))
    assert bool(jnp.all(stats.converged == 1)), stats
    _, _, w = _matrices(jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), problem))
    for zi, ci, gi, bar, s in zip(_flat(z).astype(np.float64), _flat(x).astype(np.float64),
                                  _flat(g).astype(np.float64), _flat(x_bar), scales):
        d = np.diag((w @ zi + ci > 0).astype(float))
        v = np.linalg.solve(np.eye(len(zi)) - w.T @ d, gi / s)
        np.testing.assert_allclose(bar.astype(np.float64) / s, d @ v,
                                   atol=1e-3 * np.linalg.norm(v))


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_backward_stopping_test_bounds_the_linear_residual_at_any_point(kind):
    """The adjoint splitting's bound ||g - (I - W^T D) solution(u)|| <= scale ||u - step(u)||
    holds for ANY u (checked with the dense W^T D built here), for small and large alpha, and
    is not vacuous: apart from its bound on ||W||, within a factor of a few of the residual."""
    base = _dense_problem(seed=31, scale=2.0) if kind == "dense" else \
        _conv_problem(seed=31, scale=2.0)
    _, _, w = _matrices(base)
    w_norm = np.linalg.norm(w, 2)
    for alpha in (0.2, 1.0, 4.0):
        problem = dataclasses.replace(base, splitting="peaceman_rachford", step=jnp.asarray(alpha))
        map_fn, params = problem.equilibrium_map(), problem.parameters()
        c = _inputs(problem, batch=1, seed=32)[0]
        z = jnp.asarray(_rng(33).normal(size=problem.state_shape))  # any point fixes D
        d = np.diag((w @ np.ravel(z) + np.ravel(c) > 0).astype(float))
        assert 0 < d.sum() < len(d)
        adjoint = map_fn.adjoint_splitting(z, params, c)
        ratios = []
        for seed in range(20):
            rng = _rng(200 + seed)
            g = jnp.asarray(rng.normal(size=problem.state_shape))
            u = jnp.asarray(rng.normal(size=problem.state_shape) * rng.uniform(1e-3, 10))
            if seed >= 16:  # u = D u: then (I - D) e = 0 and the bound is ||W^T D e|| / alpha
                u = jnp.asarray((d @ np.ravel(u)).reshape(u.shape))
            gap = float(jnp.linalg.norm(u - adjoint.step(u, g)))
            v = np.ravel(adjoint.solution(u, g))
            residual = np.linalg.norm(np.ravel(g) - (v - w.T @ d @ v))
            assert residual <= float(adjoint.scale) * gap * (1 + 1e-10), (alpha, seed)
            ratios.append(residual / (float(adjoint.scale) * gap))
        # the bound uses ||W|| <= (1 + alpha + ||M||) / alpha, not the exact ||W||
        bound_w = (1 + alpha + np.linalg.norm((1 + alpha) * np.eye(len(d)) - alpha * w, 2)) / alpha
        assert max(ratios) > 0.15 * w_norm / bound_w, (alpha, max(ratios))  # measured 0.2-0.7


@pytest.mark.slow  # ~5000 forward-backward steps, ~20 s: CI runs it with the slow checks
def test_peaceman_rachford_needs_far_fewer_steps_than_forward_backward_on_a_conv_problem():
    problem = _conv_problem(seed=16, spatial=(8, 8), channels=4, m=0.05)
    x = _inputs(problem, batch=4, seed=17)
    steps = {}
    for splitting in mondeq.SPLITTINGS:
        _, info = optjax.equilibrium(dataclasses.replace(problem, splitting=splitting), x,
                                     tol=1e-6, max_steps=20000)
        assert bool(jnp.all(info.converged)), splitting
        steps[splitting] = np.asarray(info.steps)
    print({k: v.tolist() for k, v in steps.items()})
    # measured: FB 4500-5300 steps, PR 50-55 (m = 0.05)
    assert steps["peaceman_rachford"].max() * 10 < steps["forward_backward"].min(), steps


def test_bad_settings_are_refused_with_a_message():
    conv = _conv_problem()
    zeros = Conv2D(conv.weight_a.kernel, conv.weight_a.spatial, "zeros")
    with pytest.raises(ValueError, match="padding='circular', or splitting='forward_backward'"):
        MonDEQProblem(zeros, zeros, 0.1, splitting="peaceman_rachford")
    with pytest.raises(optjax.ConfigError, match="splitting must be one of"):
        MonDEQProblem(conv.weight_a, conv.weight_b, 0.1, splitting="douglas")
    other = Conv2D(conv.weight_b.kernel, (H + 2, H + 2), "circular")
    with pytest.raises(ValueError, match="same state shape"):
        MonDEQProblem(conv.weight_a, other, 0.1, splitting="peaceman_rachford")
    with pytest.raises(optjax.ConfigError, match="m must be a positive number"):
        MonDEQProblem(conv.weight_a, conv.weight_b, 0.0, splitting="peaceman_rachford")
    with pytest.raises(optjax.ConfigError, match="must be positive, got -1.0"):
        MonDEQProblem(conv.weight_a, conv.weight_b, 0.1, step=jnp.asarray(-1.0),
                      splitting="peaceman_rachford")
    with pytest.raises(optjax.ConfigError, match="splitting='peaceman_rachford' has it"):
        optjax.equilibrium(conv, _inputs(conv), backward="splitting")
