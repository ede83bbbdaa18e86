r"""Matrix-free solvers for the backward system :math:`(I - A)\, v = g` of one sample.

The backward pass of an equilibrium layer needs, per sample, :math:`v` with
:math:`(I - J^\top) v = g`, where :math:`A = J^\top` is available only as a function
``apply_A(v)`` (a vector-Jacobian product). Every solver here works on ONE sample: ``g`` may
have any shape (it is treated as a vector) and the caller ``vmap`` s over the batch. Loops are
``lax.while_loop`` s, so under ``vmap`` the batched loop runs until the last sample stops and
freezes the others: stopping is per sample.

All iterative solvers stop when the residual :math:`\|g - (I - A) v\|_2 \le \text{tol}`
(``tol`` is absolute: pass ``rel_tol * ||g||`` for a relative test) or after ``max_steps``
steps, and return :class:`LinearSolveResult`, whose ``residual`` is the true residual of the
returned ``v``. A non-finite residual stops the loop at once and is never reported as
converged. ``steps`` counts iterations, one evaluation of ``apply_A`` each; the few
evaluations outside the iterations are listed in each solver's docstring.

Only real dtypes are supported; the input dtype (float32 or float64) is kept throughout.
"""

from __future__ import annotations

import operator
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

__all__ = [
    "LinearSolveResult",
    "conjugate_gradient",
    "gmres",
    "neumann",
    "splitting",
    "unrolled_neumann",
]

Array = jax.Array
Op = Callable[[Array], Array]  # v -> A v


class LinearSolveResult(NamedTuple):
    """One sample's solve of :math:`(I - A) v = g`."""

    solution: Array  # v, same shape and dtype as g
    steps: Array  # int32 scalar: iterations (one apply_A each)
    residual: Array  # ||g - (v - A v)||_2 of the returned v
    converged: Array  # bool scalar: residual <= tol and finite


# ----------------------------------------------------------------------------- helpers


def _norm(x: Array) -> Array:
    return jnp.sqrt(jnp.vdot(x, x))


def _flat_operator(apply_A: Callable, g: Array) -> Callable[[Array], Array]:
    """``A`` acting on flat vectors of ``g``'s size, returning ``g``'s dtype (a float64 ``A``
    would otherwise promote a float32 loop carry)."""
    shape, dtype = g.shape, g.dtype

    def a_flat(x):
        return jnp.reshape(apply_A(jnp.reshape(x, shape)), (-1,)).astype(dtype)

    return a_flat


def _setup(apply_A, g, tol, init):
    """Flat A, flat g, tolerance in g's dtype, start point and its residual.

    The start's residual costs one evaluation of A unless ``init`` is None (start at 0)."""
    g = jnp.asarray(g)
    if not jnp.issubdtype(g.dtype, jnp.floating):
        raise TypeError(f"g must have a real floating dtype, got {g.dtype}")
    a_flat = _flat_operator(apply_A, g)
    b = jnp.reshape(g, (-1,))
    tol = jnp.asarray(tol, g.dtype)
    if init is None:
        x0 = jnp.zeros_like(b)
        ax0 = jnp.zeros_like(b)
    else:
        x0 = jnp.reshape(jnp.asarray(init, g.dtype), (-1,))
        if x0.shape != b.shape:
            raise ValueError(f"init has {x0.size} entries, g has {b.size}")
        ax0 = a_flat(x0)
    r0 = b - (x0 - ax0)
    return a_flat, b, tol, x0, r0


def _count(name, value, minimum):
    # Static sizes: they fix array shapes / trip counts, so they must be Python integers.
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _keep_going(steps, residual, tol, max_steps):
    # A NaN / inf residual stops the loop instead of spinning until max_steps.
    return (steps < max_steps) & jnp.isfinite(residual) & (residual > tol)


def _result(g: Array, x: Array, steps: ArrayLike, residual: Array,
            tol: ArrayLike) -> LinearSolveResult:
    return LinearSolveResult(
        solution=jnp.reshape(x, g.shape),
        steps=jnp.asarray(steps, jnp.int32),
        residual=residual,
        converged=jnp.isfinite(residual) & (residual <= tol),
    )


# ----------------------------------------------------------------------------- Neumann


def neumann(apply_A: Op, g: Array, *, tol: ArrayLike, max_steps: int, damping: float = 1.0,
            init: Array | None = None) -> LinearSolveResult:
    r"""Damped fixed-point (Richardson / Neumann) iteration for :math:`(I - A) v = g`.

    .. math:: v_{k+1} = v_k + \lambda\,(g - (I - A) v_k)
              = \lambda g + ((1 - \lambda) I + \lambda A)\, v_k .

    It converges for any start when the spectral radius of :math:`(1-\lambda) I + \lambda A`
    is below 1 (e.g. :math:`\|A\| < 1`), linearly at that rate; from :math:`v_0 = 0` with
    :math:`\lambda = 1`, :math:`v_k = \sum_{i<k} A^i g` is the truncated Neumann series.

    Each step evaluates :math:`A v_{k+1}` once, which gives the exact residual of the new
    iterate, so the stopping test and the reported residual need no extra evaluation (one is
    spent before the loop when ``init`` is given).

    Args:
      apply_A: ``v -> A v`` on arrays shaped like ``g``.
      g: right-hand side, any shape.
      tol: absolute tolerance on :math:`\|g - (I - A) v\|_2` (may be traced).
      max_steps: at most this many steps.
      damping: :math:`\lambda \in (0, 1]`.
      init: start point (default 0).
    """
    a_flat, b, tol, x0, r0 = _setup(apply_A, g, tol, init)
    lam = jnp.asarray(damping, b.dtype)

    def cond(state):
        _, _, res, k = state
        return _keep_going(k, res, tol, max_steps)

    def body(state):
        x, r, _, k = state
        x = x + lam * r
        r = b - (x - a_flat(x))
        return x, r, _norm(r), k + 1

    x, _, res, k = lax.while_loop(cond, body, (x0, r0, _norm(r0), jnp.int32(0)))
    return _result(g, x, k, res, tol)


# ----------------------------------------------------------------------------- CG


def conjugate_gradient(apply_A: Op, g: Array, *, tol: ArrayLike, max_steps: int,
                       init: Array | None = None) -> LinearSolveResult:
    r"""Conjugate gradients on :math:`(I - A) v = g`.

    Valid only when :math:`I - A` is symmetric positive definite (e.g. :math:`A = J^\top` with
    :math:`J = W^\top D W`, :math:`0 \le D`, :math:`\|J\| < 1`); then the iterate minimises the
    :math:`(I - A)`-norm of the error over the Krylov space, and converges in at most
    :math:`n` steps in exact arithmetic, at rate :math:`(\sqrt\kappa - 1)/(\sqrt\kappa + 1)`.

    One evaluation of :math:`A` per step. The loop stops on the recursive residual
    :math:`\|r_k\| \le \text{tol}`; the true residual of the returned point is then recomputed
    (one more evaluation, not counted in ``steps``; another one before the loop when ``init``
    is given), so ``converged`` is honest even when rounding separates the two.

    If a curvature :math:`p^\top (I - A) p` is not positive (``I - A`` not SPD) or not finite,
    the loop stops with the last iterate, which then reports ``converged=False``.
    """
    a_flat, b, tol, x0, r0 = _setup(apply_A, g, tol, init)
    rs0 = jnp.vdot(r0, r0)

    def cond(state):
        _, _, _, rs, k, ok = state
        return ok & _keep_going(k, jnp.sqrt(rs), tol, max_steps)

    def body(state):
        x, r, p, rs, k, _ = state
        ap = p - a_flat(p)
        curvature = jnp.vdot(p, ap)
        ok = curvature > 0  # False for NaN as well
        alpha = rs / jnp.where(ok, curvature, 1)
        # Select rather than scale by 0: 0 * NaN would poison the kept iterate.
        x = jnp.where(ok, x + alpha * p, x)
        r = jnp.where(ok, r - alpha * ap, r)
        rs_new = jnp.where(ok, jnp.vdot(r, r), rs)
        beta = rs_new / jnp.where(rs > 0, rs, 1)
        p = jnp.where(ok, r + beta * p, p)
        return x, r, p, rs_new, k + 1, ok

    init_state = (x0, r0, r0, rs0, jnp.int32(0), jnp.bool_(True))
    x, _, _, _, k, _ = lax.while_loop(cond, body, init_state)
    res = _norm(b - (x - a_flat(x)))
    return _result(g, x, k, res, tol)


# ----------------------------------------------------------------------------- GMRES


def gmres(apply_A: Op, g: Array, *, tol: ArrayLike, max_steps: int, restart: int = 20,
          init: Array | None = None) -> LinearSolveResult:
    r"""Restarted GMRES(m), ``m = restart``, for a general (non-symmetric) :math:`I - A`.

    Each cycle starts from the true residual :math:`r_0` of the current point :math:`x_0`,
    builds an orthonormal basis :math:`V_{j+1}` of the Krylov space
    :math:`\mathcal K_{j+1}((I - A), r_0)` by Arnoldi,
    :math:`(I - A) V_j = V_{j+1} \bar H_j`, with modified Gram-Schmidt applied twice (the
    second pass restores orthogonality lost to cancellation), and picks
    :math:`x = x_0 + V_j y`, :math:`y = \arg\min \|\,\|r_0\| e_1 - \bar H_j y\|`. Givens
    rotations keep :math:`\bar H_j` triangular as it grows, so the least-squares residual
    (which equals :math:`\|g - (I-A)x\|` in exact arithmetic) is known after every inner step
    and the cycle ends as soon as it is :math:`\le` tol, after ``m`` steps, or when
    ``max_steps`` is reached. The true residual of the new point is then computed; the solve
    stops when it is :math:`\le` tol or ``max_steps`` steps were taken.

    Breakdown: if the new Arnoldi vector vanishes (:math:`h_{j+1,j} \approx 0`) the Krylov space
    is invariant and the cycle's solution is exact ("happy breakdown"); the cycle ends there
    without dividing by :math:`h_{j+1,j}`. Zero pivots (only possible when :math:`I - A` is
    singular) are guarded, so the result stays finite and reports ``converged=False``.

    ``steps`` counts Arnoldi steps (one evaluation of :math:`A` each). Each cycle costs one more
    evaluation for its true residual, and a given ``init`` one before the loop.
    """
    restart = _count("restart", restart, minimum=1)
    a_flat, b, tol, x0, r0 = _setup(apply_A, g, tol, init)
    m, n, dtype = restart, b.size, b.dtype
    eps = jnp.finfo(dtype).eps

    def mgs(w, basis, j):
        # Modified Gram-Schmidt against rows 0..j of the basis.
        def step(i, carry):
            w, h = carry
            hi = jnp.vdot(basis[i], w)
            return w - hi * basis[i], h.at[i].set(hi)

        return lax.fori_loop(0, j + 1, step, (w, jnp.zeros(m + 1, dtype)))

    def rotate(col, cs, sn, j):
        # Apply the previous j Givens rotations to the new Hessenberg column.
        def step(i, col):
            a, c = col[i], col[i + 1]
            return col.at[i].set(cs[i] * a + sn[i] * c).at[i + 1].set(-sn[i] * a + cs[i] * c)

        return lax.fori_loop(0, j, step, col)

    def cycle(x, r, beta, steps):
        """One GMRES(m) cycle from x with residual r, beta = ||r|| > tol."""

        def cond(s):
            _, _, _, _, _, j, k, est, stop = s
            return (j < m) & ~stop & _keep_going(k, est, tol, max_steps)

        def body(s):
            basis, rmat, cs, sn, e, j, k, _, _ = s
            w = basis[j] - a_flat(basis[j])
            w_norm = _norm(w)
            w, h1 = mgs(w, basis, j)
            w, h2 = mgs(w, basis, j)
            h_next = _norm(w)
            # Happy breakdown (or NaN): the Krylov space is invariant; do not normalise.
            breakdown = ~(h_next > eps * w_norm)
            w = jnp.where(breakdown, 0, w / jnp.where(breakdown, 1, h_next))
            basis = basis.at[j + 1].set(w)
            col = rotate((h1 + h2).at[j + 1].set(h_next), cs, sn, j)
            a, c = col[j], col[j + 1]
            rho = jnp.hypot(a, c)
            safe = rho > 0
            cj = jnp.where(safe, a / jnp.where(safe, rho, 1), 1)
            sj = jnp.where(safe, c / jnp.where(safe, rho, 1), 0)
            col = col.at[j].set(rho).at[j + 1].set(0)
            rmat = rmat.at[:, j].set(col[:m])
            cs, sn = cs.at[j].set(cj), sn.at[j].set(sj)
            ej = e[j]
            e = e.at[j].set(cj * ej).at[j + 1].set(-sj * ej)
            est = jnp.abs(e[j + 1])
            return basis, rmat, cs, sn, e, j + 1, k + 1, est, breakdown

        basis = jnp.zeros((m + 1, n), dtype).at[0].set(r / beta)
        e = jnp.zeros(m + 1, dtype).at[0].set(beta)
        state = (basis, jnp.zeros((m, m), dtype), jnp.zeros(m, dtype), jnp.zeros(m, dtype),
                 e, jnp.int32(0), steps, beta, jnp.bool_(False))
        basis, rmat, _, _, e, j, steps, _, _ = lax.while_loop(cond, body, state)

        # Back substitution R y = e on the j used columns (unused: unit pivot, zero rhs, so
        # y = 0 there). A loop rather than solve_triangular: m is small, and it compiles
        # several times faster.
        used = jnp.arange(m) < j
        diag = jnp.diagonal(rmat)
        diag = jnp.where(used & (diag != 0), diag, 1)  # a zero pivot means I - A is singular
        rhs = jnp.where(used, e[:m], 0)

        def back(t, y):
            i = m - 1 - t
            return y.at[i].set((rhs[i] - rmat[i] @ y) / diag[i])  # y[i] still 0, R upper

        y = lax.fori_loop(0, m, back, jnp.zeros(m, dtype))
        x = x + basis[:m].T @ y
        r = b - (x - a_flat(x))
        return x, r, _norm(r), steps

    def cond(state):
        _, _, res, k = state
        return _keep_going(k, res, tol, max_steps)

    def body(state):
        return cycle(*state)

    x, _, res, k = lax.while_loop(cond, body, (x0, r0, _norm(r0), jnp.int32(0)))
    return _result(g, x, k, res, tol)


# ----------------------------------------------------------------------------- splitting


def splitting(step: Op, solution: Op, apply_A: Op, g: Array, *, scale: ArrayLike,
              tol: ArrayLike, max_steps: int) -> LinearSolveResult:
    r"""A fixed-point iteration :math:`u \leftarrow \text{step}(u)` whose limit gives the
    solution :math:`v = \text{solution}(u)` of :math:`(I - A) v = g`: an operator splitting
    of the backward system supplied by the map (e.g. Peaceman--Rachford, where a step costs
    one resolvent and no evaluation of A).

    The stopping test needs no evaluation of A either: the caller guarantees
    :math:`\|g - (I - A)\,\text{solution}(u)\| \le \text{scale}\,\|u - \text{step}(u)\|`,
    and the loop stops when that bound is :math:`\le` tol. The reported residual is then
    computed exactly, at the cost of one evaluation of A (``solution`` may spend another).

    Args:
      step: ``u -> u+`` on arrays shaped like ``g``.
      solution: ``u -> v``.
      apply_A: ``v -> A v``.
      g: right-hand side.
      scale: the bound's factor (may be traced).
      tol: absolute tolerance on :math:`\|g - (I - A) v\|_2`.
      max_steps: at most this many steps (from :math:`u = 0`).
    """
    g = jnp.asarray(g)
    tol = jnp.asarray(tol, g.dtype)
    scale = jnp.asarray(scale, g.dtype)

    def cond(state):
        _, bound, k = state
        return _keep_going(k, bound, tol, max_steps)

    def body(state):
        u, _, k = state
        u_next = step(u).astype(g.dtype)
        return u_next, scale * _norm(jnp.ravel(u - u_next)), k + 1

    start = (jnp.zeros_like(g), jnp.asarray(jnp.finfo(g.dtype).max, g.dtype), jnp.int32(0))
    u, _, k = lax.while_loop(cond, body, start)
    v = solution(u).astype(g.dtype)
    a_flat = _flat_operator(apply_A, g)
    flat_v = jnp.ravel(v)
    return _result(g, flat_v, k, _norm(jnp.ravel(g) - (flat_v - a_flat(flat_v))), tol)


# ----------------------------------------------------------------------------- phantom


def unrolled_neumann(apply_A: Op, g: Array, *, steps: int, damping: float = 1.0) -> Array:
    r"""Truncated damped Neumann series, :math:`k` = ``steps`` terms, no stopping test:

    .. math:: v_k = \sum_{i=0}^{k-1} B^i g, \qquad B = (1 - \lambda) I + \lambda A,

    computed by :math:`u_1 = g`, :math:`u_{i+1} = g + B u_i` (:math:`k - 1` evaluations of A).

    This is the :math:`k`-step phantom gradient: differentiating :math:`k` damped steps
    :math:`z \leftarrow (1 - \lambda) z + \lambda S(z; \theta)` started at a fixed point
    :math:`z^\star` (with :math:`A = \partial_z S^\top` there) gives the parameter cotangent
    :math:`\lambda\, (\partial_\theta S)^\top v_k`, i.e. ``damping`` times the parameter VJP
    applied to this :math:`v_k`. With :math:`\lambda = 1` and :math:`\rho(A) < 1`,
    :math:`v_k \to (I - A)^{-1} g` as :math:`k \to \infty`.
    """
    steps = _count("steps", steps, minimum=0)
    g = jnp.asarray(g)
    if steps == 0:
        return jnp.zeros_like(g)
    a_flat = _flat_operator(apply_A, g)
    b = jnp.reshape(g, (-1,))
    lam = jnp.asarray(damping, b.dtype)

    def body(_, u):
        return b + (1 - lam) * u + lam * a_flat(u)

    return jnp.reshape(lax.fori_loop(1, steps, body, b), g.shape)
