"""Deep OptEq (docs/maths.md, section 4): the equilibrium is the minimiser of H, sweeps descend H,
both sweeps give the same point and the same implicit gradients, reductions, normalisation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special

import optjax
from optjax.families import deep

SIZES = (5, 4, 3)
P = 4


def _rng(seed):
    return np.random.default_rng(seed)


def _problem(activations="tanh", sizes=SIZES, rho=0.9, seed=0, scale=1.0):
    rng = _rng(seed)
    couplings = [jnp.asarray(rng.normal(size=(m, n))) for n, m in zip(sizes[:-1], sizes[1:])]
    couplings = deep.normalize(couplings, rho)
    u = jnp.asarray(scale * rng.normal(size=(sizes[0], P)))
    biases = [jnp.asarray(0.5 * rng.normal(size=n)) for n in sizes]
    return deep.DeepProblem(couplings, u, biases, activations)


def _x(batch=3, seed=1):
    return jnp.asarray(_rng(seed).normal(size=(batch, P)))


def _bounds(act, n):
    eps = 1e-12
    lo_hi = {"relu": (0.0, None), "tanh": (-1 + eps, 1 - eps), "softplus": (eps, None)}[act.name]
    return [lo_hi] * n


def _lbfgs_minimizers(problem, x):
    """argmin H per sample by scipy L-BFGS-B, independent of the fixed-point maps."""
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda s, x_i: deep.objective(problem, s[None], x_i[None])[0]))
    bounds = sum((_bounds(a, n) for a, n in zip(problem.activations, problem.sizes)), [])
    results = []
    for x_i in x:
        def fun(s):
            v, g = value_and_grad(jnp.asarray(s), x_i)
            return float(v), np.asarray(g)

        res = scipy.optimize.minimize(fun, np.full(problem.state_size, 0.1), jac=True,
                                      method="L-BFGS-B", bounds=bounds,
                                      options=dict(ftol=0.0, gtol=1e-13, maxiter=20000, maxcor=30))
        results.append((res.x, res.fun))
    return results


def _exact(problem, x, sweep):
    return deep.equilibrium(problem, x, sweep=sweep, tol=1e-13, max_steps=2000)


@pytest.mark.parametrize("activations", ["relu", "tanh", ("relu", "tanh", "softplus")],
                         ids=["relu", "tanh", "mixed"])
def test_equilibrium_is_the_minimiser_of_H_for_both_sweeps(activations):
    problem = _problem(activations)
    x = _x()
    results = {sweep: _exact(problem, x, sweep) for sweep in deep.SWEEPS}
    for i, (s_min, h_min) in enumerate(_lbfgs_minimizers(problem, x)):
        for sweep, (states, info) in results.items():
            assert bool(info.converged[i]), sweep
            s = np.concatenate([np.asarray(v[i]) for v in states])
            np.testing.assert_allclose(s, s_min, atol=1e-7, err_msg=sweep)
            # The equilibrium is at least as good as the independent minimiser.
            assert float(info.objective[i]) <= h_min + 1e-12
            np.testing.assert_allclose(info.objective[i], h_min, rtol=1e-10, atol=1e-12)
    (jacobi, info_j), (seidel, info_g) = results["jacobi"], results["gauss_seidel"]
    for a, b in zip(jacobi, seidel):
        np.testing.assert_allclose(a, b, atol=1e-12)
    # A Gauss--Seidel sweep propagates the input through all layers: fewer sweeps than steps.
    assert int(jnp.sum(info_g.steps)) < int(jnp.sum(info_j.steps))


def test_distance_bound_holds_at_loose_solutions():
    problem = _problem("tanh")
    x = _x()
    exact = jnp.concatenate(_exact(problem, x, "jacobi")[0], axis=1)
    for sweep in deep.SWEEPS:
        loose, info = deep.equilibrium(problem, x, sweep=sweep, tol=1e-2)
        error = jnp.linalg.norm(jnp.concatenate(loose, axis=1) - exact, axis=1)
        assert bool(jnp.all(error > 1e-8)), sweep  # really loose
        assert bool(jnp.all(error <= info.certificate.distance_bound)), sweep
        np.testing.assert_allclose(info.certificate.modulus, deep.convexity_margin(problem))


@pytest.mark.parametrize("activations", ["tanh", "relu"])
def test_H_decreases_monotonically_along_sweeps(activations):
    problem = _problem(activations, rho=1.0, scale=2.0)
    x = _x(4)
    rng = _rng(5)
    start = rng.uniform(0.0 if activations == "relu" else -0.9, 0.9, size=(4, problem.state_size))
    for sweep_fn in (deep.gauss_seidel_map, deep.jacobi_map):
        @jax.jit
        def trajectory(s, x):
            def body(s, _):
                s = jax.vmap(lambda si, xi: sweep_fn(problem, si, xi))(s, x)
                return s, deep.objective(problem, s, x)

            return jnp.concatenate([deep.objective(problem, s, x)[None],
                                    jax.lax.scan(body, s, length=40)[1]])

        values = np.asarray(trajectory(jnp.asarray(start), x))
        assert np.all(np.isfinite(values))
        drops = np.diff(values, axis=0)
        assert np.all(drops <= 1e-12 * (1 + np.abs(values[1:]))), sweep_fn.__name__
        assert np.all(values[-1] < values[0] - 1e-3)


def _loss(states, weights):
    return sum(jnp.sum(w * jnp.sin(s)) for w, s in zip(weights, states))


def test_implicit_gradients_agree_across_sweeps_finite_differences_and_unrolling():
    problem = _problem("tanh", rho=0.9, scale=1.5)
    x = _x(3)
    rng = _rng(7)
    weights = [jnp.asarray(rng.normal(size=(3, n))) for n in SIZES]
    params = (problem.couplings, problem.input_weight, problem.biases, x)

    def implicit(params, sweep, backward):
        a, u, b, x = params
        states, _ = deep.equilibrium(deep.DeepProblem(a, u, b, "tanh"), x, sweep=sweep,
                                     tol=1e-14, max_steps=5000, backward=backward)
        return _loss(states, weights)

    def unrolled(params, steps=400):
        a, u, b, x = params
        p = deep.DeepProblem(a, u, b, "tanh")
        step = jax.vmap(lambda s, xi: deep.jacobi_map(p, s, xi))
        s = jax.lax.fori_loop(0, steps, lambda _, s: step(s, x),
                              jnp.zeros((x.shape[0], p.state_size)))
        return _loss(deep.split(p.sizes, s), weights)

    value_and_grad = jax.jit(jax.value_and_grad(implicit), static_argnums=(1, 2))
    _, g_jacobi = value_and_grad(params, "jacobi", "gmres")
    _, g_seidel = value_and_grad(params, "gauss_seidel", "fixed_point")
    g_unrolled = jax.jit(jax.grad(unrolled))(params)
    def flat(tree):
        return np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(tree)])

    reference = flat(g_jacobi)
    assert np.linalg.norm(reference) > 1e-2
    for other in (g_seidel, g_unrolled):
        np.testing.assert_allclose(flat(other), reference, rtol=1e-9, atol=1e-11)

    # Central finite differences along random directions in (couplings, U, biases, x).
    h = 1e-5
    for seed in range(3):
        rng = _rng(100 + seed)
        d = jax.tree_util.tree_map(lambda v: jnp.asarray(rng.normal(size=v.shape)), params)
        shift = lambda t: jax.tree_util.tree_map(lambda p, v: p + t * v, params, d)  # noqa: E731
        plus = value_and_grad(shift(h), "jacobi", "gmres")[0]
        minus = value_and_grad(shift(-h), "jacobi", "gmres")[0]
        np.testing.assert_allclose(np.dot(reference, flat(d)), (plus - minus) / (2 * h), rtol=1e-6)


def test_single_layer_is_the_activation_of_the_injection():
    rng = _rng(3)
    u, b = jnp.asarray(rng.normal(size=(6, P))), jnp.asarray(rng.normal(size=6))
    problem = deep.DeepProblem((), u, (b,), "tanh")
    x = _x()
    (s,), info = deep.equilibrium(problem, x, sweep="gauss_seidel", tol=1e-12)
    np.testing.assert_allclose(s, jnp.tanh(x @ u.T + b), atol=1e-14)
    assert float(info.certificate.modulus) == 1.0 and bool(jnp.all(info.steps <= 2))


def test_without_input_weight_or_biases_x_is_the_injection():
    problem = _problem("relu")
    bare = deep.DeepProblem(problem.couplings, None, None, "relu")
    eye = deep.DeepProblem(problem.couplings, jnp.eye(SIZES[0]),
                           [jnp.zeros(n) for n in SIZES], "relu")
    x = jnp.asarray(_rng(6).normal(size=(2, SIZES[0])))
    for a, b in zip(deep.equilibrium(bare, x)[0], deep.equilibrium(eye, x)[0]):
        np.testing.assert_allclose(a, b, atol=1e-14)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_two_layers_with_identity_top_are_the_unit_layer(activation):
    """s_2 = A s_1 (identity top layer: leaky_relu with slope 1, f = 0) turns the chain into
    s_1 = sigma(A^T A s_1 + U x + b): the unit layer with W = A^T, z* = s_2, s* = s_1, and
    min H = min G."""
    rng = _rng(4)
    a = jnp.asarray(rng.normal(size=(3, 5)))
    a = a * (0.9 / np.linalg.norm(a, 2))
    u, b = jnp.asarray(rng.normal(size=(5, P))), jnp.asarray(rng.normal(size=5))
    identity = optjax.activations.get("leaky_relu", slope=1.0)
    problem = deep.DeepProblem((a,), u, (b, jnp.zeros(3)), (activation, identity))
    x = _x(4)
    (s1, s2), info = deep.equilibrium(problem, x, sweep="gauss_seidel", tol=1e-13, max_steps=3000)
    unit = optjax.OptEqProblem(a.T, activation, u, b)
    solve_unit = jax.jit(lambda p, x: optjax.equilibrium(p, x, tol=1e-13, max_steps=3000))
    z, unit_info = solve_unit(unit, x)
    assert bool(jnp.all(info.converged)) and bool(jnp.all(unit_info.converged))
    np.testing.assert_allclose(s2, z, atol=1e-11)
    np.testing.assert_allclose(s1, unit.activation(z @ a + x @ u.T + b), atol=1e-11)
    np.testing.assert_allclose(info.objective, optjax.objective(unit, z, x), rtol=1e-10)


def test_an_identity_first_layer_puts_the_unit_layers_recurrence_in_the_second():
    """s_1 = U x + A^T s_2 (identity: f = 0), s_2 = relu(A s_1 + b) is the unit layer on s_2:
    s_2 = relu(A A^T s_2 + A U x + b), i.e. z* = A^T s_2 solves the unit layer with W = A,
    input weight A U and bias b (solved independently by the unit layer's own engine)."""
    rng = _rng(5)
    a = jnp.asarray(rng.normal(size=(6, 4)))
    a = a * (0.9 / np.linalg.norm(a, 2))
    u, b = jnp.asarray(rng.normal(size=(4, P))), jnp.asarray(rng.normal(size=6))
    problem = deep.DeepProblem((a,), u, (jnp.zeros(4), b), ("identity", "relu"))
    x = _x(4)
    (s1, s2), info = deep.equilibrium(problem, x, sweep="gauss_seidel", tol=1e-13, max_steps=3000)
    unit = optjax.OptEqProblem(a, "relu", a @ u, b)
    z, unit_info = jax.jit(lambda p, x: optjax.equilibrium(p, x, tol=1e-13, max_steps=3000))(
        unit, x)
    assert bool(jnp.all(info.converged)) and bool(jnp.all(unit_info.converged))
    np.testing.assert_allclose(s1, x @ u.T + z, atol=1e-11)
    np.testing.assert_allclose(s2, jax.nn.relu(z @ a.T + x @ (a @ u).T + b), atol=1e-11)


def test_normalize_guarantees_the_margin_and_bounds_the_block_matrix():
    rng = _rng(8)
    sizes = (7, 4, 9, 3, 5)
    raw = [jnp.asarray(3 * rng.normal(size=(m, n))) for n, m in zip(sizes[:-1], sizes[1:])]
    for rho in (0.3, 0.95, 1.0):
        couplings = deep.normalize(raw, rho)
        norms = np.array([np.linalg.norm(np.asarray(a), 2) for a in couplings])
        sums = np.concatenate([[0], norms]) + np.concatenate([norms, [0]])
        assert np.all(sums <= rho * (1 + 1e-12))
        assert np.isclose(sums.max(), rho)  # no needless shrinking of the binding layer
        problem = deep.DeepProblem(couplings, None, None, "relu")
        np.testing.assert_allclose(deep.convexity_margin(problem), 1 - sums.max(), atol=1e-12)
        # Idempotent: normalised couplings are left as they are.
        for a, b in zip(deep.normalize(couplings, rho), couplings):
            np.testing.assert_array_equal(a, b)
        # ||K|| <= 1 - margin for the symmetric block-tridiagonal K.
        offsets = np.cumsum((0,) + sizes)
        k = np.zeros((offsets[-1],) * 2)
        for l, a in enumerate(couplings):
            k[offsets[l + 1]:offsets[l + 2], offsets[l]:offsets[l + 1]] = a
        k = k + k.T
        assert np.max(np.abs(np.linalg.eigvalsh(k))) <= sums.max() * (1 + 1e-12)
    # Two layers: the single coupling is scaled to norm rho exactly.
    (a,) = deep.normalize([raw[0]], 0.8)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(a), 2), 0.8, rtol=1e-12)
    small = [0.1 * v / np.linalg.norm(v, 2) for v in raw]
    for a, b in zip(deep.normalize(small), small):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(optjax.ConfigError, match="rho must be in"):
        deep.normalize(raw, 1.5)


def test_bad_shapes_nonconvexity_and_options_are_refused():
    rng = _rng(9)
    a1, a2 = jnp.asarray(rng.normal(size=(4, 5))), jnp.asarray(rng.normal(size=(3, 4)))
    u = jnp.asarray(rng.normal(size=(5, P)))
    biases = [jnp.zeros(5), jnp.zeros(4), jnp.zeros(3)]
    with pytest.raises(ValueError, match=r"A_2 must have shape \(n_3, n_2\) with n_2 = 4"):
        deep.DeepProblem((a1, a2.T), u, None)
    with pytest.raises(ValueError, match=r"A_1 must have shape \(n_2, n_1\) with n_1 = 6"):
        deep.DeepProblem((a1, a2), jnp.ones((6, P)), None)
    with pytest.raises(ValueError, match=r"bias b_2 must have shape \(4,\)"):
        deep.DeepProblem((a1, a2), u, [jnp.zeros(5), jnp.zeros(3), jnp.zeros(3)])
    with pytest.raises(ValueError, match="got 2 biases for 3 layers"):
        deep.DeepProblem((a1, a2), u, biases[:2])
    with pytest.raises(ValueError, match="got 2 activations for 3 layers"):
        deep.DeepProblem((a1, a2), u, biases, ("relu", "tanh"))
    with pytest.raises(optjax.NotAProxError):
        deep.DeepProblem((a1, a2), u, biases, "gelu")

    good = deep.DeepProblem(deep.normalize((a1, a2)), u, biases, "relu")
    with pytest.raises(ValueError, match=r"x must have shape \(batch,\) \+ \(4,\).*add a batch axis"):
        deep.equilibrium(good, jnp.ones(P))
    with pytest.raises(ValueError, match=r"s must be one flat state of shape \(12,\)"):
        deep.jacobi_map(good, jnp.ones(11), jnp.ones(P))
    with pytest.raises(ValueError, match=r"s must have shape \(batch, 12\)"):
        deep.objective(good, jnp.ones((2, 11)), jnp.ones((2, P)))
    with pytest.raises(optjax.ConfigError, match="not symmetric"):
        deep.equilibrium(good, jnp.ones((2, P)), backward="cg")
    with pytest.raises(optjax.ConfigError, match="sweep must be one of"):
        deep.equilibrium(good, jnp.ones((2, P)), sweep="red_black")

    # ||A_1|| + ||A_2|| > 1 at layer 2: refused eagerly, flagged under jit.
    bad = deep.DeepProblem((a1, a2), u, biases, "relu")
    assert float(deep.convexity_margin(bad)) < 0
    with pytest.raises(optjax.NonconvexError, match="convexity margin"):
        deep.equilibrium(bad, jnp.ones((2, P)))
    solve = jax.jit(lambda p, x: deep.equilibrium(p, x)[1])
    info = solve(bad, jnp.ones((2, P)))
    assert np.all(np.asarray(info.status) == optjax.Status.NONCONVEX)
    assert not bool(jnp.any(info.converged))
    with pytest.raises(optjax.EquilibriumError, match="NONCONVEX"):
        optjax.check(info)
    info = solve(good, jnp.ones((2, P)))
    assert optjax.check(info) is info


def _products(fn, *args) -> int:
    """Products with a coupling in the jaxpr of ``fn``: convolutions, and dot_generals with a
    matrix operand (inner products of two states are not counted)."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    return sum(str(e.primitive) == "conv_general_dilated" or (
        str(e.primitive) == "dot_general" and max(v.aval.ndim for v in e.invars) >= 2)
        for e in jaxpr.eqns)


@pytest.mark.parametrize("sweep", deep.SWEEPS)
def test_value_and_map_gives_H_and_the_sweep_at_the_cost_of_one_sweep(sweep):
    """The solver's (H, map) for one sample: H against a numpy evaluation of the chain's
    objective from its definition, the image against the map, and no product with a
    coupling beyond the sweep's own (the safeguarded solver's step costs one sweep)."""
    problem = dataclasses.replace(_problem(("relu", "tanh", "softplus")), sweep=sweep)
    x = _x(batch=1)
    map_fn = problem.equilibrium_map()
    params, c1 = problem.parameters(), problem.sample_data(x)[0]
    rng = _rng(5)
    # A point inside every penalty's domain: relu s >= 0, tanh |s| < 1, softplus s > 0.
    s = jnp.asarray(np.concatenate([rng.uniform(0, 1, 5), rng.uniform(-0.9, 0.9, 4),
                                    rng.uniform(0.1, 2, 3)]))
    value, image = map_fn.value_and_map(s, params, c1)
    np.testing.assert_allclose(image, map_fn(s, params, c1), rtol=0, atol=1e-15)
    parts = np.split(np.asarray(s), np.cumsum(SIZES)[:-1])
    a = [np.asarray(c) for c in problem.couplings]
    b = [np.asarray(c1)] + [np.asarray(v) for v in problem.biases[1:]]
    tanh_f = lambda y: ((1 + y) * np.log1p(y) + (1 - y) * np.log1p(-y)) / 2 - y * y / 2  # noqa
    softplus_f = lambda y: float(scipy.special.spence(1 - np.exp(-y)).sum()) - np.pi ** 2 / 6 * len(y)  # noqa: E501  Li2(e^-y) = spence(1 - e^-y)
    penalties = [0.0, float(np.sum(tanh_f(parts[1]))), softplus_f(parts[2])]
    expected = sum(p + 0.5 * v @ v - bl @ v for p, v, bl in zip(penalties, parts, b)) \
        - sum(parts[l + 1] @ a[l] @ parts[l] for l in range(2))
    np.testing.assert_allclose(float(value), expected, rtol=1e-12)
    assert _products(lambda s: map_fn.value_and_map(s, params, c1), s) == \
        _products(lambda s: map_fn(s, params, c1), s) == 4  # A_1, A_1^T, A_2, A_2^T
