"""What every forward solver promises, checked for each registered solver at the solver level
(``solver.solve_batch`` / ``solver.run`` on maps written in the test, see _maps.py):

* the point it returns is an equilibrium (against an independent minimiser), its ``image`` is
  S(point) and its ``residual`` is ||point - S(point)||;
* stopping is per sample: each sample stops at the first step where its own residual is <= tol,
  and alone it reaches the same equilibrium to within the tolerance over the modulus;
* a sample with a NaN stops at once and leaves the others untouched;
* ``run`` (one sample) reaches the equilibrium ``solve_batch`` reaches, to 2 tol / mu;
* a float32 state stays float32 with x64 enabled (no float64 anywhere in the computation).
"""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from optjax import solvers
from tests.solvers._maps import dense_case, reference_equilibrium, residuals

ALL = sorted(solvers.SOLVERS)
OURS = [name for name in ALL if not name.startswith("jaxopt_")]


def _settings(name):
    # Halpern's rate is O(1/k): a loose tolerance and many steps.
    if name == "halpern":
        return dict(tol=1e-4, max_steps=100000)
    return dict(tol=1e-10, max_steps=5000)


def _solve(solver, fn, vam, z0, c, **kw):
    return jax.jit(lambda z0, c: solver.solve_batch(fn, z0, c, value_and_map=vam, **kw))(z0, c)


@pytest.mark.parametrize("name", ALL)
def test_returns_the_equilibrium_with_its_image_and_residual(name):
    problem, x, c, fn, vam = dense_case(0, norm=0.9, batch=4)
    kw = _settings(name)
    out = _solve(solvers.get(name), fn, vam, jnp.zeros((4, 8)), c, **kw)
    image = out.image if out.image is not None else jax.vmap(fn)(out.point, c)
    r = residuals(fn, out.point, c)
    assert np.all(r <= kw["tol"]), r
    np.testing.assert_allclose(image, jax.vmap(fn)(out.point, c), atol=1e-14)
    if out.residual is not None:
        np.testing.assert_allclose(out.residual, r, rtol=1e-9, atol=1e-16)
    # An independent minimiser of F finds the same point (strongly convex: unique).
    atol = 1e-3 if name == "halpern" else 1e-7
    np.testing.assert_allclose(image, reference_equilibrium(problem, x), atol=atol)
    assert out.steps.dtype == jnp.int32 and out.evaluations.dtype == jnp.int32


@pytest.mark.parametrize("name", OURS)
def test_stopping_is_per_sample(name):
    """Samples of different difficulty stop at different steps, each at the first step where
    its own residual is <= tol; solved alone, a sample reaches the same equilibrium to within
    what the tolerance and the conditioning allow (not bitwise: XLA picks other kernels for
    other batch sizes and CPUs, and the last bits differ)."""
    problem, _, c, fn, vam = dense_case(1, norm=0.95, batch=5, bias_scale=1.0)
    c = c * jnp.array([0.01, 1.0, 3.0, 10.0, 0.3])[:, None]  # residuals of very different sizes
    solver = solvers.get(name)
    tol = 1e-4 if name == "halpern" else 1e-9
    cap = 100000 if name == "halpern" else 5000
    z0 = jnp.zeros((5, 8))
    solve = jax.jit(lambda z0, c, m: solver.replace(trace=True).solve_batch(
        fn, z0, c, value_and_map=vam, tol=tol, max_steps=m), static_argnums=2)
    batch = solve(z0, c, cap)
    steps = np.asarray(batch.steps)
    assert len(set(steps.tolist())) > 1, steps
    r = residuals(fn, batch.point, c)
    assert np.all(r <= tol), r
    # One step earlier every sample was still above tol: it stopped at its first chance (from
    # the solver's history, and from a rerun capped one step earlier for one sample).
    history = np.asarray(batch.trace.residual)
    for i in range(5):
        assert history[i, steps[i] - 1] > tol >= history[i, steps[i]], (i, steps[i])
        assert np.all(np.isnan(history[i, steps[i] + 1:]))
    earlier = solve(z0, c, int(steps[0]) - 1)
    assert residuals(fn, earlier.point, c)[0] > tol
    # Alone: also stopped at tol, at the same equilibrium (to 2 tol / mu, see _modulus).
    mu = _modulus(problem)
    for i in range(5):
        alone = solve(z0[i:i + 1], c[i:i + 1], cap)
        assert residuals(fn, alone.point, c[i:i + 1])[0] <= tol
        gap = np.linalg.norm(np.asarray(alone.point[0]) - np.asarray(batch.point[i]))
        assert gap <= 2 * tol / mu, (i, gap)


@pytest.mark.parametrize("name", OURS)
def test_a_nan_sample_stops_at_once_and_leaves_the_others_alone(name):
    _, _, c, fn, vam = dense_case(2, norm=0.9, batch=3)
    solver = solvers.get(name)
    kw = dict(tol=1e-6, max_steps=200)
    z0 = jnp.zeros((3, 8))
    clean = _solve(solver, fn, vam, z0, c, **kw)
    poisoned = _solve(solver, fn, vam, z0, c.at[1, 0].set(jnp.nan), **kw)
    assert int(poisoned.steps[1]) == 0
    for i in (0, 2):
        assert int(poisoned.steps[i]) == int(clean.steps[i])
        np.testing.assert_array_equal(poisoned.point[i], clean.point[i])
        assert np.all(np.isfinite(np.asarray(poisoned.point[i])))


def _modulus(problem) -> float:
    """mu = 1 - ||W||^2 of a tanh unit (s_sigma = 1): two points with residuals <= tol are
    each within tol / mu of the unique equilibrium, so within 2 tol / mu of each other."""
    return 1 - float(np.linalg.norm(np.asarray(problem.weight), 2)) ** 2


@pytest.mark.parametrize("name", ALL)
def test_run_solves_one_sample_like_solve_batch(name):
    problem, _, c, fn, vam = dense_case(3, norm=0.9, batch=2)
    solver = solvers.get(name)
    kw = _settings(name)
    batch = _solve(solver, fn, vam, jnp.zeros((2, 8)), c, **kw)
    for i in range(2):
        one = jax.jit(lambda z0, ci: solver.run(
            lambda z: fn(z, ci), z0, value_and_map=lambda z: vam(z, ci), **kw))(jnp.zeros(8), c[i])
        assert one.point.shape == (8,) and one.steps.shape == ()
        assert residuals(fn, one.point[None], c[i:i + 1])[0] <= kw["tol"]
        gap = np.linalg.norm(np.asarray(one.point) - np.asarray(batch.point[i]))
        assert gap <= 2 * kw["tol"] / _modulus(problem), (i, gap)


@pytest.mark.parametrize("name", OURS)
def test_float32_state_stays_float32_with_x64_enabled(name):
    _, _, c, fn, vam = dense_case(4, norm=0.9, batch=3, dtype=jnp.float32)
    solver = solvers.get(name)
    z0 = jnp.zeros((3, 8), jnp.float32)
    f = lambda z0, c: solver.solve_batch(fn, z0, c, tol=1e-5, max_steps=300,  # noqa: E731
                                         value_and_map=vam)
    out = jax.jit(f)(z0, c)
    assert out.point.dtype == jnp.float32 and out.image.dtype == jnp.float32
    assert out.residual.dtype == jnp.float32
    promoted = [str(eqn.primitive) for eqn in _equations(jax.make_jaxpr(f)(z0, c).jaxpr)
                if any(getattr(v.aval, "dtype", None) == jnp.float64 for v in eqn.outvars)]
    assert not promoted, f"float64 values computed from a float32 state: {promoted}"


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _equations(sub)


def test_a_solver_that_needs_the_objective_refuses_a_problem_without_one():
    _, _, c, fn, _ = dense_case(5)
    with pytest.raises(optjax.ConfigError, match="needs the problem's explicit objective"):
        solvers.get("safeguarded_anderson").solve_batch(fn, jnp.zeros((3, 8)), c, tol=1e-6,
                                                        max_steps=10)


def test_unknown_solver_names_the_choices():
    with pytest.raises(optjax.ConfigError, match="unknown solver 'newton'.*safeguarded_anderson"):
        solvers.get("newton")


@pytest.mark.parametrize("name", OURS)
def test_states_of_any_shape_are_solved_like_flat_ones(name):
    """Feature maps (H, W, C) per sample: solved to the same tolerance and the same equilibrium
    as the flattened problem, the shapes kept."""
    problem, _, c, fn, vam = dense_case(6, norm=0.9, batch=2)
    solver = solvers.get(name)
    kw = dict(tol=1e-4, max_steps=100000) if name == "halpern" else dict(tol=1e-9, max_steps=500)
    flat = _solve(solver, fn, vam, jnp.zeros((2, 8)), c, **kw)
    shaped_fn = lambda z, ci: fn(z.reshape(8), ci).reshape(2, 2, 2)  # noqa: E731

    def shaped_vam(z, ci):
        value, image = vam(z.reshape(8), ci)
        return value, image.reshape(2, 2, 2)

    shaped = _solve(solver, shaped_fn, shaped_vam, jnp.zeros((2, 2, 2, 2)), c, **kw)
    assert shaped.point.shape == (2, 2, 2, 2) and shaped.image.shape == (2, 2, 2, 2)
    assert shaped.steps.shape == (2,)
    assert np.all(residuals(fn, shaped.point.reshape(2, 8), c) <= kw["tol"])
    gap = np.linalg.norm(np.asarray(shaped.point).reshape(2, 8) - np.asarray(flat.point), axis=1)
    assert np.all(gap <= 2 * kw["tol"] / _modulus(problem)), gap


@pytest.mark.parametrize("name", ALL)
def test_an_empty_batch_gives_empty_results(name):
    _, _, c, fn, vam = dense_case(7, batch=2)
    out = solvers.get(name).solve_batch(fn, jnp.zeros((0, 8)), c[:0], tol=1e-6, max_steps=10,
                                        value_and_map=vam)
    assert out.point.shape == (0, 8) and out.steps.shape == (0,)


@pytest.mark.parametrize("name", OURS)
def test_the_trace_records_each_step_and_costs_nothing_when_off(name):
    """trace=True: the residual after every step, per sample (column 0: the start; NaN after
    the sample stopped), the last one the returned residual; the objective where the solver
    computes it (the safeguarded Anderson solver: F at the accepted point, against F written
    in the test). trace=False: no history in the compiled loop."""
    _, _, c, fn, vam = dense_case(8, norm=0.9, batch=3)
    solver = solvers.get(name)
    cap = 200 if name == "halpern" else 100
    kw = dict(tol=1e-3 if name == "halpern" else 1e-8, max_steps=cap)
    z0 = jnp.zeros((3, 8))
    traced = _solve(solver.replace(trace=True), fn, vam, z0, c, **kw)
    plain = _solve(solver, fn, vam, z0, c, **kw)
    assert plain.trace is None
    np.testing.assert_array_equal(np.asarray(traced.steps), np.asarray(plain.steps))
    history = np.asarray(traced.trace.residual)
    assert history.shape == (3, cap + 1)
    np.testing.assert_allclose(history[:, 0], residuals(fn, z0, c), rtol=1e-12)
    for i, k in enumerate(np.asarray(traced.steps)):
        np.testing.assert_allclose(history[i, k], np.asarray(traced.residual)[i], rtol=0)
        assert np.all(np.isfinite(history[i, :k + 1])) and np.all(np.isnan(history[i, k + 1:]))
    values = np.asarray(traced.trace.objective)
    if name == "safeguarded_anderson":
        last = [values[i, k] for i, k in enumerate(np.asarray(traced.steps))]
        f = jax.vmap(lambda z, ci: vam(z, ci)[0])(traced.point, c)
        np.testing.assert_allclose(last, f, rtol=1e-12)
        assert np.all(np.diff(values[0, :int(traced.steps[0]) + 1]) <= 1e-12)
    else:
        assert np.all(np.isnan(values))
    shapes = [v.aval.shape for e in _equations(jax.make_jaxpr(
        lambda z0, c: solver.solve_batch(fn, z0, c, value_and_map=vam, **kw))(z0, c).jaxpr)
        for v in e.outvars if hasattr(v.aval, "shape")]
    assert not [s for s in shapes if s and s[0] == cap + 1], "a history without trace=True"
