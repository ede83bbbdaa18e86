"""Halpern's iteration picks the fixed point nearest the anchor when fixed points are not unique.

Construction: sigma = identity (leaky_relu with slope 1), W = Q diag(s) V^T with s_1 = s_2 = 1
and c orthogonal to Q's first two columns. Then T(z) = W^T W z + W^T c and
Fix T = z_p + span(V_1, V_2), an affine plane; the limit must be the projection of the anchor.
"""

import jax
import jax.numpy as jnp
import numpy as np

import optjax


def _plane_problem(d=6, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    v, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s = np.array([1.0, 1.0, 0.8, 0.6, 0.5, 0.3])
    w = q @ np.diag(s) @ v.T
    c = q[:, 2:] @ rng.normal(size=d - 2)  # no component along the unit singular directions
    # A particular fixed point: solve (I - W^T W) z = W^T c on the complement of V_1, V_2.
    coef = (s[2:] * (q[:, 2:].T @ c)) / (1 - s[2:] ** 2)
    z_p = v[:, 2:] @ coef
    return w, c, z_p, v[:, :2]


def test_halpern_converges_to_the_projection_of_the_anchor_onto_the_fixed_points():
    w, c, z_p, basis = _plane_problem()
    problem = optjax.OptEqProblem(jnp.asarray(w), optjax.activations.get("leaky_relu", slope=1.0))
    rng = np.random.default_rng(1)
    anchors = rng.normal(size=(3, 6)) * 2
    x = jnp.asarray(np.tile(c, (3, 1)))
    # ||W|| = 1: no strong convexity, the fixed points form a plane.
    z, info = optjax.equilibrium(problem, x, solver="halpern", anchor=jnp.asarray(anchors),
                                 tol=1e-4, max_steps=400000, backward="phantom")
    assert bool(jnp.all(info.converged)), info.failures()
    expected = z_p + (anchors - z_p) @ basis @ basis.T
    np.testing.assert_allclose(np.asarray(info.certificate.modulus), 0.0, atol=1e-12)
    # Every returned point is a fixed point ...
    np.testing.assert_allclose(optjax.operator(problem, z, x), z, atol=1e-4)
    # ... and the one nearest its anchor (distinct anchors give distinct equilibria).
    np.testing.assert_allclose(np.asarray(z), expected, atol=2e-3)
    assert np.linalg.norm(np.asarray(z[0] - z[1])) > 0.1


def test_plain_iteration_lands_elsewhere_on_the_plane():
    """Without the anchor in the iteration the limit depends on the start, not on the prior."""
    w, c, z_p, basis = _plane_problem()
    problem = optjax.OptEqProblem(jnp.asarray(w), optjax.activations.get("leaky_relu", slope=1.0))
    anchor = np.random.default_rng(1).normal(size=6) * 2
    x = jnp.asarray(c[None])
    z, info = optjax.equilibrium(problem, x, solver="fixed_point", tol=1e-10, max_steps=10000,
                                 init=jnp.zeros(6))
    expected = z_p + (anchor - z_p) @ basis @ basis.T
    assert np.linalg.norm(np.asarray(z[0]) - expected) > 0.1


def test_halpern_default_anchor_is_zero_minimum_norm_equilibrium():
    w, c, z_p, basis = _plane_problem()
    problem = optjax.OptEqProblem(jnp.asarray(w), optjax.activations.get("leaky_relu", slope=1.0))
    z, info = optjax.equilibrium(problem, jnp.asarray(c[None]), solver="halpern", tol=1e-7,
                                 max_steps=400000, backward="phantom")
    min_norm = z_p - z_p @ basis @ basis.T
    np.testing.assert_allclose(np.asarray(z[0]), min_norm, atol=2e-3)


# --- the solver ---------------------------------------------------------------------------------


def test_solver_iterates_are_the_anchored_iteration():
    """z_{k+1} = u / (k + 2) + (1 - 1 / (k + 2)) S(z_k), written out in the test."""
    w, c, _, _ = _plane_problem()
    act = optjax.activations.get("leaky_relu", slope=1.0)
    fn = lambda z, ci: jnp.asarray(w).T @ act(jnp.asarray(w) @ z + ci)  # noqa: E731
    anchors = np.random.default_rng(2).normal(size=(2, 6))
    cs = jnp.asarray(np.tile(c, (2, 1)))
    steps = 30
    out = jax.jit(lambda a: optjax.solvers.Halpern().solve_batch(
        fn, a, cs, tol=1e-300, max_steps=steps, anchor=a))(jnp.asarray(anchors))
    for i in range(2):
        z = anchors[i]
        for k in range(steps):
            beta = 1.0 / (k + 2)
            z = beta * anchors[i] + (1 - beta) * np.asarray(fn(jnp.asarray(z), cs[i]))
        np.testing.assert_allclose(out.point[i], z, rtol=0, atol=1e-13)
