"""Safeguarded Anderson: Anderson's steps, with the objective of plain iteration's monotonicity.

Specification: along the accepted iterates F never increases (beyond rounding), with and without
priors, under either decrease test; each step costs one evaluation of (F, S) under the objective
test and of S alone under the gradient test, a rejected candidate included; the gradient test's
bound is an upper bound on F's change (checked against F at random pairs of points); it reaches
tight tolerances at ||W|| = 0.99 in about half the evaluations of plain iteration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from optjax import solvers
from optjax.engine.properties import MapProperty
from tests.solvers._maps import (dense_case, reference_equilibrium, residuals, unit_map,
                                 unit_value_and_map)

PRIORS = {
    "none": None,
    "l1": optjax.priors.L1(0.1),
    "nonnegative": optjax.priors.Nonnegative(),
    "box": optjax.priors.Box(-0.2, 0.3),
}


class Recorder:
    """``monitor`` for the solver: keeps, per step, which samples were active and accepted,
    and the current (accepted) points and their objective values."""

    def __init__(self):
        self.steps = []

    def __call__(self, step, active, accepted, point, value):
        self.steps.append((int(step), np.asarray(active), np.asarray(accepted), np.asarray(point),
                           np.asarray(value)))

    def ordered(self):
        return sorted(self.steps, key=lambda s: s[0])


def counting(f, calls):
    """``f(z, c)`` called as ``f(z, (c, index))``, counting its calls per sample in ``calls``."""

    def count(index):
        calls[int(index)] = calls.get(int(index), 0) + 1

    def counted(z, data):
        ci, index = data
        jax.debug.callback(count, index)
        return f(z, ci)

    return counted


def never(message):
    """A map that must not be evaluated."""

    def fail(z, data):
        raise AssertionError(message)

    return fail


# Every activation with every prior with --run-slow; by default two priors per activation,
# every prior at least once.
@pytest.mark.parametrize("activation,prior", [
    pytest.param(a, p, marks=() if (i + j) % len(PRIORS) in (0, 3) else pytest.mark.slow)
    for i, a in enumerate(["relu", "tanh", "softplus"]) for j, p in enumerate(PRIORS)])
def test_the_objective_never_increases_along_the_accepted_iterates(activation, prior):
    """Ten random problems (seeds) of six samples each, solved as one batch (each sample
    carries its own W)."""
    act, prox = optjax.activations.get(activation), PRIORS[prior]
    cases = [dense_case(seed, norm=0.99, activation=activation, prior=prox, batch=6, d=12, n=16,
                        bias_scale=1.0) for seed in range(10)]
    c = jnp.concatenate([case[2] for case in cases])
    weights = jnp.concatenate([jnp.broadcast_to(case[0].weight, (6, 16, 12)) for case in cases])
    fn = lambda z, data: unit_map(data[1], act, prox)(z, data[0])  # noqa: E731
    vam = lambda z, data: unit_value_and_map(data[1], act, prox)(z, data[0])  # noqa: E731
    objective = jax.jit(jax.vmap(lambda z, data: vam(z, data)[0]))

    recorder = Recorder()
    solver = solvers.SafeguardedAnderson(monitor=recorder)
    z0 = jnp.zeros((60, 12))
    out = jax.jit(lambda z0, data: solver.solve_batch(fn, z0, data, tol=1e-10, max_steps=2000,
                                                      value_and_map=vam))(z0, (c, weights))
    assert np.all(np.asarray(out.residual) <= 1e-10)
    # F written in the test (tests/solvers/_maps.py), evaluated at the recorded points.
    previous = np.asarray(objective(z0, (c, weights)))
    rejected = 0
    for _, active, accepted, point, value in recorder.ordered():
        recomputed = np.asarray(objective(jnp.asarray(point), (c, weights)))
        np.testing.assert_allclose(value, recomputed, rtol=1e-13, atol=1e-13)
        increase = recomputed - previous
        assert np.all(increase[active] <= 1e-12 * (1 + np.abs(previous[active]))), increase
        previous = np.where(active, recomputed, previous)
        rejected += int(np.sum(active & ~accepted))
    problem, x = cases[0][:2]
    np.testing.assert_allclose(out.image[:6], reference_equilibrium(problem, x), atol=1e-7)
    if prior in ("nonnegative", "box"):
        # Extrapolations leave the constraint set (F = +inf there): the safeguard is exercised.
        assert rejected > 0


def test_one_evaluation_of_value_and_map_per_step_rejections_included():
    """Counts the evaluations of (F, S) per sample from inside the map; S alone is never
    evaluated (that would be a second T per step)."""
    calls = {}
    _, _, c, _, vam = dense_case(3, norm=0.99, activation="relu",
                                 prior=PRIORS["box"], batch=5, d=12, n=16, bias_scale=1.0)
    recorder = Recorder()
    out = solvers.SafeguardedAnderson(monitor=recorder).solve_batch(
        never("the safeguarded solver evaluated S without F"), jnp.zeros((5, 12)),
        (c, jnp.arange(5)), tol=1e-10, max_steps=2000, value_and_map=counting(vam, calls))
    steps = np.asarray(out.steps)
    log = recorder.ordered()
    assert len(log) == steps.max()
    assert sum(int(np.sum(a & ~acc)) for _, a, acc, _, _ in log) > 0  # some rejections
    # The batch evaluates every sample at every step until the last one stops...
    assert calls == {i: steps.max() + 1 for i in range(5)}
    # ... and each sample is charged one evaluation per step it was active, plus the first.
    active_steps = np.sum([a for _, a, _, _, _ in log], axis=0)
    np.testing.assert_array_equal(steps, active_steps)
    np.testing.assert_array_equal(np.asarray(out.evaluations), steps + 1)


@pytest.mark.parametrize("test", ["objective", "gradient"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_tight_tolerance_at_norm_099_in_half_the_evaluations_of_plain_iteration(activation, test):
    problem, x, c, fn, vam = dense_case(0, norm=0.99, activation=activation, batch=6, d=40, n=60,
                                        bias_scale=1.0, flat_spectrum=True)
    z0 = jnp.zeros((6, 40))
    run = lambda s: jax.jit(lambda c: s.solve_batch(  # noqa: E731
        fn, z0, c, tol=1e-10, max_steps=20000, value_and_map=vam))(c)
    plain, safe = run(solvers.FixedPoint()), run(solvers.SafeguardedAnderson(decrease_test=test))
    assert np.all(residuals(fn, safe.point, c) <= 1e-10)
    np.testing.assert_allclose(safe.image, reference_equilibrium(problem, x), atol=1e-6)
    assert np.all(np.asarray(safe.evaluations) <= 0.5 * np.asarray(plain.evaluations))


def test_decrease_must_be_in_zero_one():
    with pytest.raises(optjax.ConfigError, match=r"decrease must be a number in \(0.0, 1.0\]"):
        solvers.SafeguardedAnderson(decrease=0.0)


@pytest.mark.parametrize("test", ["objective", "gradient"])
@pytest.mark.parametrize("activation", ["tanh", "softsign"])
def test_accept_reject_does_not_flip_on_the_last_bit(activation, test):
    """The decrease test compares values of F whose differences near tol (1e-9, float64) are
    far below 1: with the rounding slack and the potentials accurate to a few ulp of their own
    value, perturbing the data by 2 ulp (what other kernels for another batch size or CPU do)
    changes no decision and no step count. A sample of small injection (0.01 x), where
    F ~ 1e-4, is the case that once took 16 steps in a batch of 5 and 18 alone on an AVX-512
    machine (log cosh was then accurate to 1e-16 absolute only, a million ulp of its value).
    The gradient test compares residual-sized terms, with its own slack."""
    _, _, c, fn, vam = dense_case(1, norm=0.95, activation=activation, batch=5, bias_scale=1.0)
    c = c * jnp.array([0.01, 1.0, 3.0, 10.0, 0.3])[:, None]

    recorder = Recorder()
    solver = solvers.SafeguardedAnderson(monitor=recorder, decrease_test=test)
    solve = jax.jit(lambda c: solver.solve_batch(fn, jnp.zeros((5, 8)), c, tol=1e-9,
                                                 max_steps=500, value_and_map=vam).steps)

    def decisions(c):
        recorder.steps.clear()
        steps = np.asarray(solve(c))
        return steps, np.stack([s[2] for s in recorder.ordered()])

    steps, accepted = decisions(c)
    rng = np.random.default_rng(0)
    for _ in range(12):
        noise = 2 * np.finfo(np.float64).eps * rng.choice([-1.0, 1.0], size=c.shape)
        steps_p, accepted_p = decisions(c * (1 + noise))
        np.testing.assert_array_equal(steps_p, steps)
        np.testing.assert_array_equal(accepted_p, accepted)


@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus"])
def test_the_gradient_bound_is_an_upper_bound_on_the_change_of_the_objective(activation):
    """For S = I - grad F (no prior), F(y) - F(x) <= -<g(y), y - x> - |g(y) - g(x)|^2 / 2 with
    g = S - I: checked at 2000 random pairs (x, y) of three random units against F written in
    tests/solvers/_maps.py, float64; the pairs range from far apart to near each other, and
    the plain step y = S(x) gets a negative bound (the descent lemma, through this bound)."""
    rng = np.random.default_rng(0)
    for seed in range(3):
        _, _, c, fn, vam = dense_case(seed, norm=0.99, activation=activation, batch=1, d=10, n=14,
                                      bias_scale=1.0)
        value_and_map = jax.jit(jax.vmap(vam, in_axes=(0, None)))
        x = jnp.asarray(rng.normal(size=(2000, 10)) * rng.choice([0.1, 1.0, 5.0], size=(2000, 1)))
        scale = rng.choice([1e-4, 1e-2, 1.0, 10.0], size=(2000, 1))
        for y in (x + scale * rng.normal(size=x.shape), value_and_map(x, c[0])[1]):
            (fx, sx), (fy, sy) = value_and_map(x, c[0]), value_and_map(y, c[0])
            gx, gy = np.asarray(sx - x), np.asarray(sy - y)
            bound = -np.sum(gy * (y - x), axis=1) - 0.5 * np.sum((gy - gx) ** 2, axis=1)
            change = np.asarray(fy - fx)
            assert np.all(change <= bound + 1e-10 * (1 + np.abs(np.asarray(fx)))), \
                np.max(change - bound)
        assert np.all(bound <= 0)  # the last y: the plain step


@pytest.mark.parametrize("decrease", [0.5, 1.0])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_under_the_gradient_test_the_objective_never_increases(activation, decrease):
    """As the first test, without a prior (where the gradient test applies), the decisions
    taken from residuals only: F, computed here at the recorded points, never increases by more
    than rounding, and the solve reaches tol. With decrease = 1 (a candidate must do what the
    plain step is guaranteed to do) the test rejects some candidates: the safeguard acts."""
    act = optjax.activations.get(activation)
    cases = [dense_case(seed, norm=0.99, activation=activation, batch=6, d=12, n=16,
                        bias_scale=1.0) for seed in range(10)]
    c = jnp.concatenate([case[2] for case in cases])
    weights = jnp.concatenate([jnp.broadcast_to(case[0].weight, (6, 16, 12)) for case in cases])
    fn = lambda z, data: unit_map(data[1], act)(z, data[0])  # noqa: E731
    vam = lambda z, data: unit_value_and_map(data[1], act)(z, data[0])  # noqa: E731
    objective = jax.jit(jax.vmap(lambda z, data: vam(z, data)[0]))
    recorder = Recorder()
    solver = solvers.SafeguardedAnderson(monitor=recorder, decrease_test="gradient",
                                         decrease=decrease)
    z0 = jnp.zeros((60, 12))
    out = jax.jit(lambda z0, data: solver.solve_batch(fn, z0, data, tol=1e-10, max_steps=2000)
                  )(z0, (c, weights))  # no value_and_map: the gradient test needs none
    assert np.all(np.asarray(out.residual) <= 1e-10)
    previous = np.asarray(objective(z0, (c, weights)))
    rejected = 0
    for _, active, accepted, point, value in recorder.ordered():
        assert value is None or value.ndim == 0  # F is not evaluated: nothing to record
        now = np.asarray(objective(jnp.asarray(point), (c, weights)))
        assert np.all((now - previous)[active] <= 1e-12 * (1 + np.abs(previous[active])))
        previous = np.where(active, now, previous)
        rejected += int(np.sum(active & ~accepted))
    if decrease == 1.0:
        assert rejected > 0


def test_the_gradient_test_evaluates_s_alone_once_per_step():
    calls = {}
    _, _, c, fn, _ = dense_case(3, norm=0.99, activation="tanh", batch=5, d=12, n=16)
    out = solvers.SafeguardedAnderson(decrease_test="gradient").solve_batch(
        counting(fn, calls), jnp.zeros((5, 12)), (c, jnp.arange(5)), tol=1e-10, max_steps=2000,
        value_and_map=never("the gradient test evaluated F"))
    steps = np.asarray(out.steps)
    assert calls == {i: steps.max() + 1 for i in range(5)}
    np.testing.assert_array_equal(np.asarray(out.evaluations), steps + 1)


def test_the_engine_picks_the_gradient_test_where_the_map_is_a_gradient_step():
    """OptEq without a prior: S = I - grad F, the gradient test; with a prior, or a deep chain,
    the objective test; asking for the gradient test there is refused with the reason."""
    from tests._problems import random_problem
    solver = solvers.SafeguardedAnderson()
    plain, x = random_problem(0, norm=0.9, activation="relu", batch=3, d=6, n=8)
    boxed, _ = random_problem(0, norm=0.9, activation="relu", prior=PRIORS["box"], batch=3,
                              d=6, n=8)
    assert solver.specialise(plain.map_properties).decrease_test == "gradient"
    assert solver.specialise(boxed.map_properties).decrease_test == "objective"
    deep_chain = MapProperty.CONTRACTION | MapProperty.OBJECTIVE  # what DeepProblem supplies
    assert solver.specialise(deep_chain).decrease_test == "objective"
    with pytest.raises(optjax.ConfigError, match="only where S.z. = z - grad F.z."):
        optjax.equilibrium(boxed, x, solver_options={"decrease_test": "gradient"})
    # The gradient test's equilibrium is the objective test's (both to tol).
    z_g, info = optjax.equilibrium(plain, x, tol=1e-10)
    z_o, _ = optjax.equilibrium(plain, x, tol=1e-10, solver_options={"decrease_test": "objective"})
    assert bool(jnp.all(info.converged))
    np.testing.assert_allclose(z_g, z_o, atol=1e-8)


def test_decrease_test_must_be_known():
    with pytest.raises(optjax.ConfigError, match="decrease_test must be one of auto, objective"):
        solvers.SafeguardedAnderson(decrease_test="value")
