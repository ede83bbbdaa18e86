"""Anderson acceleration (optjax's own; jaxopt's is the "jaxopt_anderson" reference).

Specification: it reaches the equilibrium in fewer evaluations than plain iteration; its ridge
is relative (the iteration does not depend on the scale of the problem); a float32 state stops
exactly when its float32 residual is at most tol; rank-deficient histories and long float32 runs
stay finite."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optjax
import optjax.nn
from optjax import solvers
from tests._problems import random_problem
from tests.solvers._maps import dense_case, reference_equilibrium, residuals


def _solve(solver, fn, z0, c, **kw):
    return jax.jit(lambda z0, c: solver.solve_batch(fn, z0, c, **kw))(z0, c)


# --- through the engine ------------------------------------------------------------------------


def test_anderson_reaches_the_equilibrium_and_reports_the_true_residual():
    problem, x = random_problem(0, norm=0.95)
    z, info = optjax.equilibrium(problem, x, solver="anderson", tol=1e-11, max_steps=2000)
    z_ref, _ = optjax.equilibrium(problem, x, tol=1e-12)
    assert bool(jnp.all(info.converged))
    np.testing.assert_allclose(z, z_ref, atol=1e-9)
    # The reported residual belongs to the point whose image was returned: recompute it.
    cert = optjax.certificate(problem, z, x)
    assert np.all(np.asarray(cert.residual) <= np.asarray(info.residual) + 1e-15)


def test_history_must_be_at_least_two():
    with pytest.raises(optjax.ConfigError, match="history must be an integer >= 2"):
        optjax.solvers.Anderson(history=1)


def test_ridge_must_be_positive():
    with pytest.raises(optjax.ConfigError, match="ridge must be a number > 0"):
        optjax.solvers.Anderson(ridge=0.0)


def test_float32_state_with_x64_enabled():
    problem, x = random_problem(1, norm=0.9, dtype=jnp.float32)
    z, info = optjax.equilibrium(problem, x, solver="anderson", tol=1e-5)
    assert z.dtype == jnp.float32 and info.residual.dtype == jnp.float32
    assert bool(jnp.all(info.converged))


# --- the solver ---------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus"])
def test_half_the_evaluations_of_plain_iteration_when_ill_conditioned(activation):
    problem, x, c, fn, _ = dense_case(0, norm=0.99, activation=activation, batch=6, d=40, n=60,
                                      bias_scale=1.0, flat_spectrum=True)
    z0 = jnp.zeros((6, 40))
    plain = _solve(solvers.FixedPoint(), fn, z0, c, tol=1e-10, max_steps=20000)
    fast = _solve(solvers.Anderson(), fn, z0, c, tol=1e-10, max_steps=20000)
    assert np.all(residuals(fn, fast.point, c) <= 1e-10)
    np.testing.assert_allclose(fast.image, reference_equilibrium(problem, x), atol=1e-6)
    assert np.all(np.asarray(fast.evaluations) <= 0.5 * np.asarray(plain.evaluations)), (
        fast.evaluations, plain.evaluations)


def test_the_ridge_is_relative_so_the_iteration_ignores_the_problem_scale():
    """Solving s S(z / s) (equilibria s z*, residuals s times larger) to tolerance s tol takes the
    same steps for every scale s, up to rounding: the ridge follows the residual Gram matrix. An
    absolute ridge (jaxopt's) does not: at small scales it swamps the Gram matrix.

    In exact arithmetic the iterates at scale s are s times those at scale 1. In floating point
    (1e-3 and 1e3 are not powers of two) they differ by rounding, amplified by the Gram solve:
    the residuals at the stop agree to about 1e-6 relative here, and a residual lying that close
    to tol may cross it at one scale and not at another. Residuals fall by a factor of 3 or
    more per step here, so that moves a stop by one step at most; the absolute ridge costs tens
    of steps."""
    _, _, c, fn, _ = dense_case(1, norm=0.95, batch=4, bias_scale=1.0)

    def solve(solver, scale):
        scaled = lambda z, ci: scale * fn(z / scale, ci)  # noqa: E731
        return _solve(solver, scaled, jnp.zeros((4, 8)), c, tol=scale * 1e-9, max_steps=5000)

    ours = {s: solve(solvers.Anderson(), s) for s in (1e-3, 1.0, 1e3)}
    steps = {s: np.asarray(out.steps) for s, out in ours.items()}
    for s in (1e-3, 1e3):
        assert np.all(np.abs(steps[s] - steps[1.0]) <= 1), (s, steps[s], steps[1.0])
        # Where a sample stops at the same step, it stops at the same point, scaled: to
        # rounding (6e-16 measured), far below the ~1e-9 that one more step moves it.
        same = steps[s] == steps[1.0]
        np.testing.assert_allclose(np.asarray(ours[s].point)[same] / s,
                                   np.asarray(ours[1.0].point)[same], rtol=0, atol=1e-12)
    absolute = [np.asarray(solve(solvers.JaxoptAnderson(ridge=1e-5), s).steps)
                for s in (1e-3, 1.0)]
    assert np.all(absolute[0] > steps[1.0] + 1)


def test_float32_stops_exactly_when_the_float32_residual_reaches_tol():
    """With x64 on: the test is the float32 residual against tol (rounded to float32, as the
    engine's `residual <= tol` compares it), never a float64 recomputation. A tolerance equal to
    the residual of step j stops there (or at an earlier step that already met it); one float32
    ulp below it does not."""
    _, _, c, fn, _ = dense_case(6, norm=0.95, batch=1, dtype=jnp.float32, activation="tanh")
    solver = solvers.Anderson()
    z0 = jnp.zeros((1, 8), jnp.float32)
    # max_steps and tol as traced arguments: one compiled loop for every run below.
    run = jax.jit(lambda steps, tol: solver.solve_batch(fn, z0, c, tol=tol, max_steps=steps))
    history = [float(run(j, 0.0).residual[0]) for j in range(12)]  # residual after j steps
    assert history[-1] < 1e-4 * history[0]
    for j in range(1, 12):
        for tol in (history[j], float(np.nextafter(np.float32(history[j]), np.float32(0)))):
            first = next((i for i, r in enumerate(history) if r <= tol), None)
            out = run(40, tol)
            if first is None:
                assert int(out.steps[0]) >= 12
                continue
            assert int(out.steps[0]) == first, (j, tol, first, out.steps)
            assert out.residual.dtype == jnp.float32 and float(out.residual[0]) <= tol
            # The engine's recomputation agrees within an ulp of float32.
            again = jnp.sqrt(jnp.sum(jnp.square(out.point - out.image)))
            np.testing.assert_allclose(float(again), float(out.residual[0]), rtol=2.5e-7)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_rank_deficient_relu_history_stays_finite_and_converges(dtype):
    """A strongly negative bias leaves one to three relu units active: the residuals then span a
    space of dimension <= 3 and the Gram matrix of a 5-step history is singular."""
    problem, x, c, fn, _ = dense_case(2, norm=0.99, activation="relu", batch=6, d=10, n=12,
                                      dtype=dtype)
    c = c - 2.5 + jnp.zeros_like(c).at[:, :2].set(3.0)
    assert np.all(np.sum(np.asarray(c) > 0, axis=1) <= 3)
    tol = 1e-12 if dtype == jnp.float64 else 1e-5
    out = _solve(solvers.Anderson(), fn, jnp.zeros((6, 10), dtype), c, tol=tol, max_steps=500)
    assert np.all(np.isfinite(np.asarray(out.point)))
    assert np.all(np.asarray(out.residual) <= tol) and np.all(np.asarray(out.steps) < 500)


def test_thousands_of_float32_solves_on_drifting_deq_weights_stay_finite():
    """A DEQ-like map z = relu(W z + c), W square with ||W|| drifting around 1 (including
    slightly expansive maps, as DEQ training produces), 2000 solves in float32."""
    d, batch, solves = 24, 8, 2000
    key = jax.random.PRNGKey(0)
    anderson = solvers.Anderson()

    def deq(z, cw):
        c, w = cw
        return jax.nn.relu(w @ z + c)

    def one_solve(w, key):
        k1, k2 = jax.random.split(key)
        w = w + 0.02 * jax.random.normal(k1, w.shape, jnp.float32) / jnp.sqrt(d)
        # Keep ||W|| in [0.9, 1.05] (power iteration estimate, cheap).
        v = jnp.ones((d,), jnp.float32)
        for _ in range(8):
            v = w.T @ (w @ v)
            v = v / jnp.linalg.norm(v)
        norm = jnp.linalg.norm(w @ v)
        w = w * jnp.clip(norm, 0.9, 1.05) / norm
        c = jax.random.normal(k2, (batch, d), jnp.float32)
        ws = jnp.broadcast_to(w, (batch, d, d))
        out = anderson.solve_batch(deq, jnp.zeros((batch, d), jnp.float32), (c, ws), tol=1e-4,
                                   max_steps=50)
        return w, (jnp.all(jnp.isfinite(out.point)) & jnp.all(jnp.isfinite(out.image)),
                   jnp.mean((out.residual <= 1e-4).astype(jnp.float32)))

    w0 = jax.random.normal(key, (d, d), jnp.float32) / jnp.sqrt(d)
    _, (finite, converged) = jax.jit(
        lambda w0: jax.lax.scan(one_solve, w0, jax.random.split(key, solves)))(w0)
    assert bool(jnp.all(finite))
    assert float(jnp.mean(converged)) > 0.5  # most solves converge; none blows up


@pytest.mark.slow  # 3000 training steps: ~40 s on 2 cores; CI runs it
def test_deq_training_on_digits_stays_finite():
    """3000 Adam steps of a DEQ classifier (public API, Anderson forward, float32) on the digits:
    the loss stays finite all along and the model learns. (About 20 s on 2 CPU cores.)"""
    optax = pytest.importorskip("optax")
    datasets = pytest.importorskip("sklearn.datasets")
    from flax import nnx

    data = datasets.load_digits()
    x_all = jnp.asarray(data.data / 16.0, jnp.float32)
    y_all = jnp.asarray(data.target)

    class Classifier(nnx.Module):
        def __init__(self, rngs):
            self.deq = optjax.nn.DEQDense(64, 32, solver="anderson", rngs=rngs)
            self.head = nnx.Linear(32, 10, rngs=rngs)

        def __call__(self, x):
            return self.head(self.deq(x))

    model = Classifier(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(0)
    losses = []
    start = time.perf_counter()
    for _ in range(3000):
        idx = rng.integers(0, x_all.shape[0], 64)
        losses.append(train_step(model, optimizer, x_all[idx], y_all[idx]))
    losses = np.asarray(jax.device_get(losses))
    elapsed = time.perf_counter() - start
    assert np.all(np.isfinite(losses)), np.flatnonzero(~np.isfinite(losses))[:5]
    assert losses[-100:].mean() < 0.5 * losses[:100].mean()
    print(f"3000 DEQ steps in {elapsed:.1f} s; loss {losses[:100].mean():.3f} -> "
          f"{losses[-100:].mean():.3f}")
