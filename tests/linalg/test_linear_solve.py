"""Matrix-free solvers of (I - A) v = g against numpy.linalg.solve on explicit matrices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optjax.linalg.linear_solve import (LinearSolveResult, conjugate_gradient, gmres, neumann, splitting, unrolled_neumann)

SOLVERS = {"neumann": neumann, "cg": conjugate_gradient, "gmres": gmres}
MAX_STEPS = {"neumann": 5000, "cg": 200, "gmres": 400}
N = 16  # one size for most tests, so they share compilations


def _orthogonal(rng, n):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return q


def _symmetric(n, eigenvalues, seed=0):
    """A = Q diag(eigenvalues) Q^T and its eigenvectors Q."""
    q = _orthogonal(np.random.default_rng(seed), n)
    return q @ np.diag(eigenvalues) @ q.T, q


def _nonsymmetric(n, seed=1):
    """A = P S: P a diagonal projection Jacobian (0, 1 and fractional entries), S symmetric PSD
    with ||S|| = 0.95, so ||A|| <= 0.95 but A != A^T (the structure of J^T with a prior)."""
    rng = np.random.default_rng(seed)
    s, _ = _symmetric(n, np.linspace(0.0, 0.95, n), seed)
    p = rng.choice([0.0, 1.0, 0.3, 0.7], size=n)
    return np.diag(p) @ s


def _matvec(a):
    a = jnp.asarray(a)
    return lambda v: a @ v


@functools.lru_cache(maxsize=None)
def _runner(name, **static):
    # One jitted solve per (solver, static options), with A, g, tol and init as arguments: the
    # tests reuse its compilation instead of compiling a fresh loop for every call.
    def run(a, g, tol, init):
        return SOLVERS[name](lambda v: a @ v, g, tol=tol, init=init, **static)

    return jax.jit(run)


def _solve(name, a, g, *, tol, init=None, **static):
    static.setdefault("max_steps", MAX_STEPS[name])
    return _runner(name, **static)(jnp.asarray(a), jnp.asarray(g), tol, init)


def _exact(a, g):
    return np.linalg.solve(np.eye(len(g)) - a, g)


def _rel_err(v, a, g):
    x = _exact(a, g)
    return np.linalg.norm(np.asarray(v) - x) / np.linalg.norm(x)


def _true_residual(a, g, v):
    v = np.asarray(v, np.float64)
    return np.linalg.norm(g - (v - a @ v))


# ----------------------------------------------------------------------------- accuracy


def test_symmetric_all_solvers_and_cg_is_fast():
    n = N
    a, _ = _symmetric(n, np.linspace(0.0, 0.99, n))
    g = np.random.default_rng(2).normal(size=n)
    tol = 1e-12 * np.linalg.norm(g)
    out = {name: _solve(name, a, g, tol=tol) for name in SOLVERS}
    for name, res in out.items():
        assert isinstance(res, LinearSolveResult)
        assert bool(res.converged), name
        assert _rel_err(res.solution, a, g) <= 1e-10, name
    assert int(out["cg"].steps) <= n + 1
    assert int(out["cg"].steps) < int(out["neumann"].steps)
    assert int(out["gmres"].steps) <= n + 1  # restart 20 > n: full GMRES
    # Rate 0.99: Neumann needs ~log(1e-12)/log(0.99) steps.
    assert int(out["neumann"].steps) > 1000


@pytest.mark.parametrize("restart", [20, 5])
def test_nonsymmetric_gmres(restart):
    n = N
    a = _nonsymmetric(n)
    assert np.abs(a - a.T).max() > 0.1
    assert np.max(np.abs(np.linalg.eigvals(a))) < 1 and np.linalg.norm(a, 2) <= 0.95 + 1e-12
    g = np.random.default_rng(3).normal(size=n)
    res = _solve("gmres", a, g, tol=1e-12 * np.linalg.norm(g), restart=restart)
    assert bool(res.converged)
    assert _rel_err(res.solution, a, g) <= 1e-10
    if restart < n:
        assert int(res.steps) > restart  # it really restarted


def test_nonsymmetric_neumann():
    n = N
    a = _nonsymmetric(n)
    g = np.random.default_rng(3).normal(size=n)
    for damping in (1.0, 0.7):
        res = _solve("neumann", a, g, tol=1e-12 * np.linalg.norm(g), damping=damping)
        assert bool(res.converged)
        assert _rel_err(res.solution, a, g) <= 1e-10


def test_splitting_stops_on_the_callers_bound_and_reports_the_true_residual():
    # The Richardson step u <- g + A u is a splitting with solution(u) = u and the exact bound
    # ||g - (I - A) u|| = ||step(u) - u|| (scale 1): the loop's answer is the dense solve's, and
    # a run cut short is reported with its true residual, not converged.
    a = _nonsymmetric(N)
    g = np.random.default_rng(4).normal(size=N)
    apply_a = lambda v: jnp.asarray(a) @ v  # noqa: E731
    step = lambda u: jnp.asarray(g) + apply_a(u)  # noqa: E731
    tol = 1e-10 * np.linalg.norm(g)
    res = splitting(step, lambda u: u, apply_a, jnp.asarray(g), scale=1.0, tol=tol,
                    max_steps=5000)
    assert bool(res.converged) and float(res.residual) <= tol
    np.testing.assert_allclose(res.solution, np.linalg.solve(np.eye(N) - a, g), rtol=1e-8)
    short = splitting(step, lambda u: u, apply_a, jnp.asarray(g), scale=1.0, tol=tol,
                      max_steps=2)
    assert int(short.steps) == 2 and not bool(short.converged)
    v = np.asarray(short.solution)
    np.testing.assert_allclose(float(short.residual), np.linalg.norm(g - (v - a @ v)), rtol=1e-10)


def test_shaped_input():
    """g of any shape: the solvers treat it as a vector and keep its shape."""
    n = 12
    a = _nonsymmetric(n, seed=4)
    g = np.random.default_rng(5).normal(size=(3, 4))
    apply_a = lambda v: (jnp.asarray(a) @ v.reshape(-1)).reshape(v.shape)  # noqa: E731
    for name, solver in SOLVERS.items():
        if name == "cg":
            continue  # A is not symmetric
        res = solver(apply_a, jnp.asarray(g), tol=1e-12, max_steps=MAX_STEPS[name])
        assert res.solution.shape == (3, 4)
        v = np.asarray(res.solution).reshape(-1)
        assert np.allclose(v, _exact(a, g.reshape(-1)), rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize("with_init", [False, True])
def test_reported_residual_is_true_residual(name, with_init):
    n = 16
    a, _ = _symmetric(n, np.linspace(0.0, 0.9, n), seed=6)
    rng = np.random.default_rng(7)
    g = rng.normal(size=n)
    init = jnp.asarray(rng.normal(size=n)) if with_init else None
    for rel_tol in (1e-4, 1e-12):
        res = _solve(name, a, g, tol=rel_tol * np.linalg.norm(g), init=init)
        assert res.steps.dtype == jnp.int32 and int(res.steps) > 0
        true = _true_residual(a, g, res.solution)
        assert abs(float(res.residual) - true) <= 1e-6 * true + 1e-14 * np.linalg.norm(g)
        assert bool(res.converged) and float(res.residual) <= rel_tol * np.linalg.norm(g)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_max_steps_too_small(name):
    n = 16
    a, _ = _symmetric(n, np.linspace(0.0, 0.95, n), seed=8)
    g = np.random.default_rng(9).normal(size=n)
    tol = 1e-10 * np.linalg.norm(g)
    res = _solve(name, a, g, tol=tol, max_steps=3)
    assert int(res.steps) == 3
    assert not bool(res.converged)
    assert float(res.residual) > tol
    assert abs(float(res.residual) - _true_residual(a, g, res.solution)) <= 1e-12


def test_zero_rhs_stops_at_once():
    a, _ = _symmetric(N, np.linspace(0.0, 0.5, N))
    for name in SOLVERS:
        res = _solve(name, a, np.zeros(N), tol=0.0)
        assert int(res.steps) == 0 and bool(res.converged)
        assert np.all(np.asarray(res.solution) == 0)


# ----------------------------------------------------------------------------- vmap, jit, dtype


def test_vmap_per_sample_stopping_and_jit():
    """Five right-hand sides of growing difficulty: sample i holds the eigenvectors of the
    c_i smallest eigenvalues of A, so Krylov methods need c_i steps and Neumann a number of
    steps growing with the largest eigenvalue present. Each sample must stop on its own."""
    n = 20
    lam = np.linspace(0.0, 0.95, n)
    a, q = _symmetric(n, lam, seed=10)
    rng = np.random.default_rng(11)
    counts = [1, 3, 6, 10, 20]
    gs = np.stack([q[:, :c] @ rng.uniform(1.0, 2.0, size=c) for c in counts])
    apply_a = _matvec(a)

    @jax.jit
    def batched(gs, rel_tol):
        def one(name, g):
            tol = rel_tol * jnp.linalg.norm(g)  # traced tolerance, as in the backward pass
            return SOLVERS[name](apply_a, g, tol=tol, max_steps=MAX_STEPS[name])

        return {name: jax.vmap(lambda g, name=name: one(name, g))(gs) for name in SOLVERS}

    out = batched(jnp.asarray(gs), 1e-12)
    for name, res in out.items():
        steps = np.asarray(res.steps)
        assert np.all(np.diff(steps) > 0), (name, steps)
        assert np.all(np.asarray(res.converged)), name
        for i, g in enumerate(gs):
            assert _rel_err(res.solution[i], a, g) <= 1e-10, (name, i)
            # The frozen samples keep their own residual, not the batch's last one.
            true = _true_residual(a, g, res.solution[i])
            assert abs(float(res.residual[i]) - true) <= 1e-6 * true + 1e-14 * np.linalg.norm(g)
    assert int(out["neumann"].steps[0]) == 1  # eigenvalue 0: v = g is exact
    assert int(out["cg"].steps[0]) == 1 and int(out["gmres"].steps[0]) == 1


def test_vmap_per_sample_operators():
    """A different A per sample (a per-sample VJP in the backward pass)."""
    n, b = 10, 4
    mats = np.stack([_nonsymmetric(n, seed=20 + i) * (0.5 + 0.1 * i) for i in range(b)])
    gs = np.random.default_rng(12).normal(size=(b, n))

    def one(a, g):
        return gmres(lambda v: a @ v, g, tol=1e-12, max_steps=200, restart=4)

    res = jax.jit(jax.vmap(one))(jnp.asarray(mats), jnp.asarray(gs))
    assert np.all(np.asarray(res.converged))
    assert len(set(np.asarray(res.steps).tolist())) > 1
    for i in range(b):
        assert _rel_err(res.solution[i], mats[i], gs[i]) <= 1e-10


@pytest.mark.parametrize("name", list(SOLVERS))
def test_float32(name):
    n = 16
    a, _ = _symmetric(n, np.linspace(0.0, 0.9, n), seed=13)
    g = np.random.default_rng(14).normal(size=n)
    tol = 1e-5 * np.linalg.norm(g)
    res = SOLVERS[name](_matvec(a.astype(np.float32)), jnp.asarray(g, jnp.float32), tol=tol,
                        max_steps=MAX_STEPS[name])
    assert res.solution.dtype == jnp.float32 and res.residual.dtype == jnp.float32
    assert bool(res.converged)
    assert _true_residual(a, g, res.solution) <= 2e-5 * np.linalg.norm(g)
    assert _rel_err(res.solution, a, g) <= 1e-4


# ----------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_rhs_is_not_converged(name, bad):
    a, _ = _symmetric(N, np.linspace(0.0, 0.9, N))
    g = np.ones(N)
    g[3] = bad
    res = _solve(name, a, g, tol=1e-8)
    assert not bool(res.converged)
    assert int(res.steps) < MAX_STEPS[name]  # stopped, did not spin


@pytest.mark.parametrize("name", list(SOLVERS))
def test_nonfinite_operator_is_not_converged(name):
    """A NaN appearing in A's output (a broken VJP) stops the loop without convergence."""
    a = jnp.asarray(_symmetric(8, np.linspace(0.0, 0.9, 8))[0])
    apply_a = lambda v: jnp.where(jnp.abs(v[0]) > 0.2, jnp.nan, 1.0) * (a @ v)  # noqa: E731
    res = SOLVERS[name](apply_a, jnp.ones(8), tol=1e-8, max_steps=MAX_STEPS[name])
    assert not bool(res.converged)
    assert int(res.steps) < MAX_STEPS[name]


def test_gmres_happy_breakdown():
    """I - A = 0.5 I (Krylov space of dimension 1) and g in a 2-dimensional invariant
    subspace: GMRES must stop at the breakdown without dividing by h_{j+1,j} = 0."""
    n = N
    g = np.random.default_rng(15).normal(size=n)
    res = _solve("gmres", 0.5 * np.eye(n), g, tol=0.0)
    assert np.all(np.isfinite(np.asarray(res.solution)))
    assert np.allclose(np.asarray(res.solution), 2 * g, rtol=0, atol=1e-14)

    a, q = _symmetric(n, [0.2] * (n // 2) + [0.7] * (n - n // 2), seed=16)
    g = q[:, 0] + q[:, -1]
    res = _solve("gmres", a, g, tol=1e-13)
    assert bool(res.converged) and int(res.steps) == 2
    assert _rel_err(res.solution, a, g) <= 1e-12


@pytest.mark.parametrize("name", list(SOLVERS))
def test_singular_system_terminates_finite(name):
    """Eigenvalue 1 of A (I - A singular) with g outside the range: no solution exists; the
    solvers must stop at max_steps with a finite answer that is not converged."""
    a, q = _symmetric(N, [1.0] + list(np.linspace(0.1, 0.5, N - 1)), seed=17)
    g = q[:, 0] + q[:, 1]
    res = _solve(name, a, g, tol=1e-10)
    assert not bool(res.converged)
    assert np.all(np.isfinite(np.asarray(res.solution)))
    assert np.isfinite(float(res.residual)) and float(res.residual) > 0.5


def test_cg_indefinite_stops():
    """CG on a non-SPD I - A stops at the non-positive curvature and does not claim success."""
    a, q = _symmetric(N, [1.5] + list(np.linspace(0.1, 0.5, N - 1)), seed=18)
    res = _solve("cg", a, q[:, 0], tol=1e-10)
    assert not bool(res.converged)
    assert np.all(np.isfinite(np.asarray(res.solution)))


def test_static_sizes_validated():
    g = jnp.ones(3)
    with pytest.raises(ValueError, match="restart"):
        gmres(lambda v: v, g, tol=1e-6, max_steps=5, restart=0)
    with pytest.raises(TypeError, match="steps"):
        unrolled_neumann(lambda v: v, g, steps=2.5)


# ----------------------------------------------------------------------------- phantom


@pytest.mark.parametrize("damping", [1.0, 0.5])
def test_unrolled_neumann_is_the_truncated_series(damping):
    n, k = 9, 7
    a = _nonsymmetric(n, seed=19)
    g = np.random.default_rng(20).normal(size=n)
    b = (1 - damping) * np.eye(n) + damping * a
    expected = sum(np.linalg.matrix_power(b, i) @ g for i in range(k))
    v = unrolled_neumann(_matvec(a), jnp.asarray(g), steps=k, damping=damping)
    assert np.allclose(np.asarray(v), expected, rtol=0, atol=1e-13)
    one = unrolled_neumann(_matvec(a), jnp.asarray(g), steps=1, damping=damping)
    assert np.array_equal(np.asarray(one), g)
    assert np.all(np.asarray(unrolled_neumann(_matvec(a), jnp.asarray(g), steps=0)) == 0)


def test_unrolled_neumann_converges_to_inverse():
    n = 10
    a, _ = _symmetric(n, np.linspace(0.0, 0.99, n), seed=21)
    g = np.random.default_rng(22).normal(size=n)
    v = jax.jit(lambda g: unrolled_neumann(_matvec(a), g, steps=4000))(jnp.asarray(g))
    assert _rel_err(v, a, g) <= 1e-10


def test_unrolled_neumann_is_the_phantom_gradient():
    """Differentiating k damped steps z <- (1-l) z + l S(z; theta) started at the fixed point
    z* gives l * (d_theta S)^T v_k, with v_k the truncated series for A = (d_z S)^T."""
    n, k, lam = 6, 5, 0.6
    rng = np.random.default_rng(23)
    w = jnp.asarray(rng.normal(size=(n, n)))
    w = 0.8 * w / jnp.linalg.norm(w, 2)
    theta = jnp.asarray(rng.normal(size=n))
    cot = jnp.asarray(rng.normal(size=n))
    s = lambda z, th: jnp.tanh(w @ z + th)  # noqa: E731

    z_star = jax.lax.fori_loop(0, 300, lambda _, z: s(z, theta), jnp.zeros(n))
    assert float(jnp.linalg.norm(z_star - s(z_star, theta))) < 1e-13

    def unrolled(th):
        return jax.lax.fori_loop(0, k, lambda _, z: (1 - lam) * z + lam * s(z, th), z_star)

    grad = jax.vjp(unrolled, theta)[1](cot)[0]
    _, vjp_z = jax.vjp(lambda z: s(z, theta), z_star)
    _, vjp_theta = jax.vjp(lambda th: s(z_star, th), theta)
    v = unrolled_neumann(lambda u: vjp_z(u)[0], cot, steps=k, damping=lam)
    assert np.allclose(np.asarray(grad), lam * np.asarray(vjp_theta(v)[0]), rtol=0, atol=1e-13)
