"""Deep convolutional OptEq (optjax.deep with Conv2D / StridedConv2D couplings): a multi-scale
chain whose equilibrium is the minimiser of H, found independently (scipy L-BFGS-B on H written
here in numpy with the dense matrices of the convolutions, built tap by tap from their
definition); sweeps descend H; certificate bounds; implicit gradients against central finite
differences; normalisation with the maps' certified norms."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from optjax.families import deep
from optjax.linalg.convolution import Conv2D, StridedConv2D
from tests.linalg.test_convolution import dense_reference, strided_reference

# layer 1: (4, 4, 2) -stride 2-> layer 2: (2, 2, 3) -3x3 conv-> layer 3: (2, 2, 2)
SPATIAL, CHANNELS = (4, 4), (2, 3, 2)


def _rng(seed):
    return np.random.default_rng(seed)


def _chain(seed=0, padding="zeros", activations="relu", rho=0.9, stem=False, bias_scale=0.5):
    """A normalised multi-scale chain; per-channel biases; optionally a strided stem U."""
    rng = _rng(seed)
    c1, c2, c3 = CHANNELS
    half = (SPATIAL[0] // 2, SPATIAL[1] // 2)
    raw = (StridedConv2D(jnp.asarray(rng.normal(size=(3, 3, c1, c2))), SPATIAL, 2, padding),
           Conv2D(jnp.asarray(rng.normal(size=(3, 3, c2, c3))), half, padding))
    couplings = deep.normalize(raw, rho)
    biases = tuple(jnp.asarray(bias_scale * rng.normal(size=(c,))) for c in CHANNELS)
    u = None
    if stem:  # U: a strided convolution of an (8, 8, 1) image onto layer 1's grid
        u = StridedConv2D(jnp.asarray(rng.normal(size=(2, 2, 1, c1)) / 2), (8, 8), 2, padding)
    return deep.DeepProblem(couplings, u, biases, activations)


def _x(problem, batch=2, seed=1, scale=1.0):
    return jnp.asarray(scale * _rng(seed).normal(size=(batch,) + problem.input_shape))


def _dense(a):
    if isinstance(a, StridedConv2D):
        return strided_reference(a.kernel, a.spatial, a.stride, a.padding)
    return dense_reference(a.kernel, a.spatial, a.padding)


# -- H written independently ---------------------------------------------------------------------
def _penalty(name, y):
    """(f(y), f'(y)) of the activation's penalty: relu is handled by bounds (f = 0 on y >= 0)."""
    if name == "relu":
        return np.zeros_like(y), np.zeros_like(y)
    if name == "tanh":  # prox_f = tanh: f' = atanh(y) - y
        value = 0.5 * ((1 + y) * np.log1p(y) + (1 - y) * np.log1p(-y)) - 0.5 * y * y
        return value, np.arctanh(y) - y
    raise AssertionError(name)


class DenseH:
    """H(s) = sum_l [sum f_l(s_l) + |s_l|^2/2 - b_l.s_l] - sum_l s_(l+1).A_l s_l, per sample."""

    def __init__(self, problem, x_i):
        self.mats = [_dense(a) for a in problem.couplings]
        self.sizes = problem.sizes
        self.acts = [a.name for a in problem.activations]
        x_i = np.asarray(x_i)
        if problem.input_weight is None:
            c1 = x_i.ravel()
        else:
            c1 = _dense(problem.input_weight) @ x_i.ravel()
        self.terms = [np.broadcast_to(np.asarray(b), shape).ravel()
                      for b, shape in zip(problem.biases, problem.shapes)]
        self.terms[0] = self.terms[0] + c1

    def split(self, s):
        return np.split(s, np.cumsum(self.sizes)[:-1])

    def __call__(self, s):
        parts = self.split(s)
        value, grads = 0.0, []
        for act, b, v in zip(self.acts, self.terms, parts):
            f, df = _penalty(act, v)
            value += f.sum() + 0.5 * v @ v - b @ v
            grads.append(df + v - b)
        for l, m in enumerate(self.mats):
            value -= parts[l + 1] @ (m @ parts[l])
            grads[l] = grads[l] - m.T @ parts[l + 1]
            grads[l + 1] = grads[l + 1] - m @ parts[l]
        return value, np.concatenate(grads)

    def bounds(self):
        out = []
        for act, n in zip(self.acts, self.sizes):
            out += [(0.0, None) if act == "relu" else (-1 + 1e-12, 1 - 1e-12)] * n
        return out


def _lbfgs(problem, x):
    results = []
    for x_i in np.asarray(x):
        h = DenseH(problem, x_i)
        res = scipy.optimize.minimize(h, np.full(problem.state_size, 0.1), jac=True,
                                      method="L-BFGS-B", bounds=h.bounds(),
                                      options=dict(ftol=0.0, gtol=1e-13, maxiter=20000, maxcor=30))
        results.append((res.x, res.fun))
    return results


def _flat(states):
    return np.concatenate([np.asarray(s).reshape(s.shape[0], -1) for s in states], axis=1)


# -- tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding", ["zeros", "circular"])
@pytest.mark.parametrize("activations", ["relu", ("tanh", "relu", "tanh")], ids=["relu", "mixed"])
def test_equilibrium_is_the_minimiser_of_H_for_both_sweeps(padding, activations):
    problem = _chain(padding=padding, activations=activations, stem=padding == "zeros")
    assert problem.shapes == ((4, 4, 2), (2, 2, 3), (2, 2, 2))
    x = _x(problem, scale=0.5)  # tanh states well inside (-1, 1), where L-BFGS-B is accurate
    minimisers = _lbfgs(problem, x)
    for sweep in deep.SWEEPS:
        states, info = deep.equilibrium(problem, x, sweep=sweep, tol=1e-12, max_steps=3000)
        assert [s.shape[1:] for s in states] == list(problem.shapes)
        assert bool(jnp.all(info.converged)), sweep
        flat = _flat(states)
        for i, (s_min, h_min) in enumerate(minimisers):
            np.testing.assert_allclose(flat[i], s_min, atol=1e-7, err_msg=sweep)
            value, _ = DenseH(problem, x[i])(flat[i])
            assert value <= h_min + 1e-12
            np.testing.assert_allclose(float(info.objective[i]), value, rtol=1e-12)
        assert np.max(np.abs(flat)) > 1e-2


def test_H_decreases_along_both_sweeps():
    problem = _chain(seed=2, padding="circular", activations="tanh", rho=1.0)
    x = _x(problem, batch=3, seed=3, scale=2.0)
    start = _rng(4).uniform(-0.9, 0.9, size=(3, problem.state_size))
    for sweep_fn in (deep.jacobi_map, deep.gauss_seidel_map):
        step = jax.jit(jax.vmap(lambda s, x_i, f=sweep_fn: f(problem, s, x_i)))
        s, values = jnp.asarray(start), []
        for _ in range(30):
            values.append([DenseH(problem, x_i)(s_i)[0] for x_i, s_i in zip(np.asarray(x),
                                                                          np.asarray(s))])
            s = step(s, x)
        values = np.asarray(values)
        drops = np.diff(values, axis=0)
        assert np.all(drops <= 1e-12 * (1 + np.abs(values[1:]))), sweep_fn.__name__
        assert np.all(values[-1] < values[0] - 1e-2)


@pytest.mark.parametrize("sweep", deep.SWEEPS)
def test_certificate_bounds_hold_at_loose_solutions(sweep):
    problem = _chain(seed=5, padding="zeros", activations=("tanh", "relu", "tanh"))
    x = _x(problem, batch=3, seed=6)
    exact, exact_info = deep.equilibrium(problem, x, tol=1e-13, max_steps=3000)
    h_star = np.asarray(exact_info.objective)
    # the modulus is the margin from the certified norms, at most the true one
    dense_norms = [np.linalg.norm(_dense(a), 2) for a in problem.couplings]
    assert float(exact_info.certificate.modulus) <= 1 - sum(dense_norms) + 1e-12
    for tol in (1e-1, 1e-3):
        loose, info = deep.equilibrium(problem, x, sweep=sweep, tol=tol)
        error = np.linalg.norm(_flat(loose) - _flat(exact), axis=1)
        assert np.all(error > 1e-10)
        assert np.all(error <= np.asarray(info.certificate.distance_bound))
        gap = np.asarray(info.objective) - h_star
        assert np.all(gap >= -1e-12)
        assert np.all(gap <= np.asarray(info.certificate.suboptimality_bound))


def _loss(states, weights):
    return sum(jnp.sum(w * jnp.sin(s)) for w, s in zip(weights, states))


@pytest.mark.parametrize("sweep", deep.SWEEPS)
def test_implicit_gradients_match_central_finite_differences(sweep):
    problem = _chain(seed=7, padding="zeros", activations="tanh", stem=True)
    x = _x(problem, batch=2, seed=8)
    rng = _rng(9)
    weights = [jnp.asarray(rng.normal(size=(2,) + shape)) for shape in problem.shapes]
    params = (problem.couplings, problem.input_weight, problem.biases, x)

    def loss(params):
        couplings, u, biases, x = params
        p = deep.DeepProblem(couplings, u, biases, "tanh", sweep=sweep)
        states, _ = deep.equilibrium(p, x, tol=1e-13, max_steps=3000,
                                     backward_options=dict(tol=1e-13, max_steps=400))
        return _loss(states, weights)

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    _, grad = value_and_grad(params)

    def flat(tree):
        return np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(tree)])

    reference = flat(grad)
    assert np.linalg.norm(reference) > 1e-2
    h = 1e-5
    for seed in range(2):
        rng = _rng(300 + seed)
        d = jax.tree_util.tree_map(lambda v: jnp.asarray(rng.normal(size=v.shape)), params)
        shift = lambda t: jax.tree_util.tree_map(lambda p, v: p + t * v, params, d)  # noqa: E731
        fd = (value_and_grad(shift(h))[0] - value_and_grad(shift(-h))[0]) / (2 * h)
        np.testing.assert_allclose(np.dot(reference, flat(d)), fd, rtol=1e-6)


def test_gradients_through_normalize_match_finite_differences():
    """The loss of the normalised chain as a function of the RAW kernels (the normalisation's
    norms differentiated too)."""
    base = _chain(seed=10, padding="circular", activations="tanh")
    rng = _rng(11)
    raw = tuple(dataclasses.replace(a, kernel=jnp.asarray(rng.normal(size=a.kernel.shape)))
                for a in base.couplings)
    x = _x(base, seed=12)
    weights = [jnp.asarray(rng.normal(size=(2,) + shape)) for shape in base.shapes]

    def loss(raw):
        p = dataclasses.replace(base, couplings=deep.normalize(raw, 0.9))
        states, _ = deep.equilibrium(p, x, tol=1e-13, max_steps=3000,
                                     backward_options=dict(tol=1e-13))
        return _loss(states, weights)

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    _, grad = value_and_grad(raw)
    d = jax.tree_util.tree_map(lambda v: jnp.asarray(rng.normal(size=v.shape)), raw)
    h = 1e-6
    shift = lambda t: jax.tree_util.tree_map(lambda p, v: p + t * v, raw, d)  # noqa: E731
    fd = (value_and_grad(shift(h))[0] - value_and_grad(shift(-h))[0]) / (2 * h)
    dot = sum(float(jnp.vdot(g, v)) for g, v in zip(jax.tree_util.tree_leaves(grad),
                                                    jax.tree_util.tree_leaves(d)))
    np.testing.assert_allclose(dot, fd, rtol=1e-6)


@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_normalize_with_the_maps_norms_keeps_the_margin(padding):
    rng = _rng(13)
    spatial = (6, 6)
    raw = (StridedConv2D(jnp.asarray(3 * rng.normal(size=(3, 3, 2, 3))), spatial, 2, padding),
           Conv2D(jnp.asarray(3 * rng.normal(size=(3, 3, 3, 3))), (3, 3), padding),
           StridedConv2D(jnp.asarray(3 * rng.normal(size=(2, 2, 3, 2))), (3, 3), 1, padding))
    for rho in (0.5, 0.95):
        couplings = deep.normalize(raw, rho)
        norms = np.array([np.linalg.norm(_dense(a), 2) for a in couplings])
        sums = np.concatenate([[0], norms]) + np.concatenate([norms, [0]])
        assert np.all(sums <= rho * (1 + 1e-12))
        problem = deep.DeepProblem(couplings, None, None, "relu")
        margin = float(deep.convexity_margin(problem))
        assert margin >= 1 - rho - 1e-12 and margin <= 1 - sums.max() + 1e-12
        if padding == "circular":  # exact norms: the binding layer sits at rho
            np.testing.assert_allclose(sums.max(), rho, rtol=1e-10)
        # ||K|| <= 1 - margin for the symmetric block-tridiagonal K of the dense matrices
        offsets = np.cumsum((0,) + problem.sizes)
        k = np.zeros((offsets[-1],) * 2)
        for l, a in enumerate(couplings):
            k[offsets[l + 1]:offsets[l + 2], offsets[l]:offsets[l + 1]] = _dense(a)
        k = k + k.T
        assert np.max(np.abs(np.linalg.eigvalsh(k))) <= (1 - margin) * (1 + 1e-12)
        for a, b in zip(deep.normalize(couplings, rho), couplings):  # idempotent
            np.testing.assert_allclose(a.kernel, b.kernel, rtol=1e-12)


def test_float32_chain_stays_float32():
    problem = _chain(seed=14, padding="zeros", stem=True)
    problem = jax.tree_util.tree_map(lambda v: v.astype(jnp.float32), problem)
    bare = dataclasses.replace(problem, biases=None)
    x = _x(problem, seed=15).astype(jnp.float32)
    for p in (problem, bare):
        states, info = deep.equilibrium(p, x, tol=1e-4)
        assert all(s.dtype == jnp.float32 for s in states)
        assert bool(jnp.all(info.converged))
        traced = jax.make_jaxpr(lambda p, x: deep.equilibrium(p, x, tol=1e-4)[0])(p, x)
        # no float64 array anywhere (weak-typed Python scalars show as f64[] and are harmless)
        assert re.search(r"f64\[\d", str(traced)) is None


def test_bad_shapes_are_refused_with_a_message():
    good = _chain()
    a1, a2 = good.couplings
    wrong = Conv2D(a2.kernel, (3, 3), "zeros")  # layer 2 is 2 x 2, not 3 x 3
    with pytest.raises(ValueError, match=r"A_2 must take layer 2's state of shape \(2, 2, 3\)"):
        deep.DeepProblem((a1, wrong), None, None)
    with pytest.raises(ValueError, match=r"bias b_2 must have shape \(2, 2, 3\).*got \(2,\)"):
        deep.DeepProblem((a1, a2), None, (jnp.zeros(2), jnp.zeros(2), jnp.zeros(2)))
    stem = StridedConv2D(jnp.zeros((2, 2, 1, 3)), (8, 8), 2)  # 3 channels, layer 1 has 2
    with pytest.raises(ValueError, match=r"A_1 must take layer 1's state of shape \(4, 4, 3\)"):
        deep.DeepProblem((a1, a2), stem, None)
    with pytest.raises(ValueError, match=r"x must have shape \(batch,\) \+ \(4, 4, 2\)"):
        deep.equilibrium(good, jnp.zeros((2, 4, 4, 3)))


@pytest.mark.parametrize("sweep", deep.SWEEPS)
def test_structured_jacobian_transpose_equals_the_dense_one(sweep):
    """J^T v from the couplings' adjoints against the dense Jacobian: Jacobi D K, Gauss--Seidel
    (I - D L)^(-1) D L^T, with D the activations' slopes at the sweep's pre-activations."""
    problem = _chain(seed=16, padding="zeros", activations=("tanh", "relu", "tanh"), stem=True)
    x = _x(problem, batch=1, seed=17)
    params, c1 = problem.parameters(), problem.sample_data(x)[0]
    offsets = np.cumsum((0,) + problem.sizes)
    low = np.zeros((offsets[-1],) * 2)  # L: A_l below the diagonal
    for l, a in enumerate(problem.couplings):
        low[offsets[l + 1]:offsets[l + 2], offsets[l]:offsets[l + 1]] = _dense(a)
    h = DenseH(problem, x[0])
    b = np.concatenate(h.terms)
    gauss_seidel = sweep == "gauss_seidel"
    map_fn = problem.equilibrium_map() if problem.sweep == sweep else \
        dataclasses.replace(problem, sweep=sweep).equilibrium_map()
    rng = _rng(18)
    for _ in range(3):
        s = rng.uniform(-0.9, 0.9, size=problem.state_size)
        s[offsets[1]:offsets[2]] = rng.normal(size=problem.sizes[1])  # relu layer: both signs
        # the sweep's pre-activations, layer by layer, in numpy
        new, pres = s.copy(), np.zeros_like(s)
        for l in range(problem.num_layers):
            src = new if gauss_seidel else s
            pre = b + low @ src + low.T @ s
            sl = slice(offsets[l], offsets[l + 1])
            pres[sl] = pre[sl]
            new[sl] = np.tanh(pre[sl]) if l != 1 else np.maximum(pre[sl], 0.0)
        slope = np.where(np.arange(problem.state_size) < offsets[1], 1 - np.tanh(pres) ** 2, 0.0)
        slope[offsets[1]:offsets[2]] = (pres[offsets[1]:offsets[2]] > 0).astype(float)
        slope[offsets[2]:] = 1 - np.tanh(pres[offsets[2]:]) ** 2
        d = np.diag(slope)
        k = low + low.T
        if gauss_seidel:
            jac = np.linalg.solve(np.eye(len(s)) - d @ low, d @ low.T)
        else:
            jac = d @ k
        np.testing.assert_allclose(np.asarray(map_fn(jnp.asarray(s), params, c1)), new,
                                   atol=1e-12)
        v = rng.normal(size=problem.state_size)
        got = map_fn.jacobian_transpose(jnp.asarray(s), params, c1)(jnp.asarray(v))
        np.testing.assert_allclose(np.asarray(got), jac.T @ v, atol=1e-12)
