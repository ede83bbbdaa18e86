"""Safeguarded Anderson: Anderson's steps, with the objective of plain iteration's monotonicity.

Specification: along the accepted iterates F never increases (beyond rounding), with and without
priors; each step costs one evaluation of (F, S), a rejected candidate included; it reaches tight
tolerances at ||W|| = 0.99 in about half the evaluations of plain iteration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optjax
from optjax import solvers
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

    def count(index):
        calls[int(index)] = calls.get(int(index), 0) + 1

    _, _, c, _, vam = dense_case(3, norm=0.99, activation="relu",
                                 prior=PRIORS["box"], batch=5, d=12, n=16, bias_scale=1.0)

    def counted(z, data):
        ci, index = data
        jax.debug.callback(count, index)
        return vam(z, ci)

    def never(z, data):
        raise AssertionError("the safeguarded solver evaluated S without F")

    recorder = Recorder()
    out = solvers.SafeguardedAnderson(monitor=recorder).solve_batch(
        never, jnp.zeros((5, 12)), (c, jnp.arange(5)), tol=1e-10, max_steps=2000,
        value_and_map=counted)
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


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_tight_tolerance_at_norm_099_in_half_the_evaluations_of_plain_iteration(activation):
    problem, x, c, fn, vam = dense_case(0, norm=0.99, activation=activation, batch=6, d=40, n=60,
                                        bias_scale=1.0, flat_spectrum=True)
    z0 = jnp.zeros((6, 40))
    run = lambda s: jax.jit(lambda c: s.solve_batch(  # noqa: E731
        fn, z0, c, tol=1e-10, max_steps=20000, value_and_map=vam))(c)
    plain, safe = run(solvers.FixedPoint()), run(solvers.SafeguardedAnderson())
    assert np.all(residuals(fn, safe.point, c) <= 1e-10)
    np.testing.assert_allclose(safe.image, reference_equilibrium(problem, x), atol=1e-6)
    assert np.all(np.asarray(safe.evaluations) <= 0.5 * np.asarray(plain.evaluations))


def test_decrease_must_be_in_zero_one():
    with pytest.raises(optjax.ConfigError, match=r"decrease must be a number in \(0.0, 1.0\]"):
        solvers.SafeguardedAnderson(decrease=0.0)


@pytest.mark.parametrize("activation", ["tanh", "softsign"])
def test_accept_reject_does_not_flip_on_the_last_bit(activation):
    """The decrease test compares values of F whose differences near tol (1e-9, float64) are
    far below 1: with the rounding slack and the potentials accurate to a few ulp of their own
    value, perturbing the data by 2 ulp (what other kernels for another batch size or CPU do)
    changes no decision and no step count. A sample of small injection (0.01 x), where
    F ~ 1e-4, is the case that once took 16 steps in a batch of 5 and 18 alone on an AVX-512
    machine (log cosh was then accurate to 1e-16 absolute only, a million ulp of its value)."""
    _, _, c, fn, vam = dense_case(1, norm=0.95, activation=activation, batch=5, bias_scale=1.0)
    c = c * jnp.array([0.01, 1.0, 3.0, 10.0, 0.3])[:, None]

    recorder = Recorder()
    solver = solvers.SafeguardedAnderson(monitor=recorder)
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
