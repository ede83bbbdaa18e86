r"""Anderson acceleration with a ridge relative to the residual Gram matrix.

Keeps the last :math:`m` points :math:`x_i` and residuals :math:`g_i = S(x_i) - x_i`
(:math:`G = [g_1, \dots, g_m]`, :math:`x_k` the latest) and solves, per sample, the regularised
least-squares problem with the affine constraint

.. math::

    \alpha = \arg\min_{\mathbf 1^\top \alpha = 1}\ \|G\alpha\|^2 + \lambda\|\alpha - e_k\|^2,
    \qquad \lambda = \text{ridge} \cdot \operatorname{tr}(G^\top G) / m,

whose Lagrange condition gives :math:`\alpha = (G^\top G + \lambda I)^{-1}(\lambda e_k + \mu
\mathbf 1)` with :math:`\mu` fixed by :math:`\mathbf 1^\top\alpha = 1`; then it extrapolates

.. math:: x_{k+1} = \textstyle\sum_i \alpha_i \big(x_i + \beta g_i\big)
          = \sum_i \alpha_i \big(S(x_i) - (1 - \beta) g_i\big)

(:math:`\beta` = ``mixing``). One evaluation of :math:`S` per step; it stops on
:math:`\|x_k - S(x_k)\| \le` tol and returns :math:`x_k` with its image.

Why relative: the Gram matrix scales with the squared residual, from ~1e3 at the first step to
~1e-10 at tol 1e-5. An absolute ridge (jaxopt's) first vanishes, leaving the system as singular
as the history (a relu layer with few active units makes it rank-deficient), then swamps it.
Relative to :math:`\operatorname{tr}(G^\top G)/m` it has the same weight at every scale: the
normalised system :math:`G^\top G/(\operatorname{tr}/m) + \text{ridge}\, I` has condition number
at most :math:`1 + m/\text{ridge}` (so its Cholesky factorisation is safe in float32), and
:math:`\|\alpha - e_k\|^2 \le m/\text{ridge}` (compare with :math:`\alpha = e_k`).

Why towards :math:`e_k` (the plain step :math:`x_{k+1} = x_k + \beta g_k`) rather than the usual
:math:`\lambda\|\alpha\|^2`: where the ridge dominates, the usual penalty spreads :math:`\alpha`
evenly and averages old iterates, which is slower than plain iteration once the residuals span
a few orders of magnitude; this one falls back to the plain step instead. (Measured on the
dense layer of benchmarks/unit_layer.py, float32, tol 1e-5, ||W|| = 0.5: with ridge 1e-2 the
usual penalty needs 11 evaluations where plain iteration needs 8, this one 7; at the default
1e-5 it needs at most one evaluation more than a vanishing ridge at ||W|| in {0.5, 0.9, 0.99}.)

The system is solved by an unrolled Cholesky factorisation in the state's dtype; if it fails (a
non-positive pivot, a non-finite history) the step is the plain one, so Anderson itself never
creates a NaN. Anderson ignores the convex structure; :mod:`optjax.solvers.safeguarded_anderson`
keeps the objective monotone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from optjax.config import in_interval, positive_int, require
from optjax.solvers.base import (Solver, SolverRun, batch_loop, batch_norms, batched, flat,
                                  freeze)

_HIGHEST = jax.lax.Precision.HIGHEST  # no reduced-precision (TF32) products on accelerators


class History(NamedTuple):
    """The last ``m`` images :math:`S(x_i)` and residuals :math:`g_i = S(x_i) - x_i` of a batch,
    flattened: ``(B, m, D)``, with their Gram matrices ``(B, m, m)``. Slot ``k mod m`` holds step
    ``k``. (Images rather than points: with mixing 1 the extrapolation reads one array.)"""

    images: jax.Array
    residuals: jax.Array
    gram: jax.Array


def start_history(image: jax.Array, g: jax.Array, size: int) -> History:
    """A history holding ``(S(x), g)`` (flattened ``(B, D)``) in slot 0."""
    batch, dim = image.shape
    zeros = jnp.zeros((batch, size, dim), image.dtype)
    gram = jnp.zeros((batch, size, size), image.dtype)
    gram = gram.at[:, 0, 0].set(jnp.sum(g * g, axis=1))
    return History(zeros.at[:, 0].set(image), zeros.at[:, 0].set(g), gram)


def push(history: History, image: jax.Array, g: jax.Array, slot: ArrayLike) -> History:
    """Store ``(S(x), g)`` in ``slot`` and update that row and column of the Gram matrices."""
    images = jax.lax.dynamic_update_index_in_dim(history.images, image, slot, axis=1)
    residuals = jax.lax.dynamic_update_index_in_dim(history.residuals, g, slot, axis=1)
    row = jnp.einsum("bmd,bd->bm", residuals, g, precision=_HIGHEST)
    gram = jax.lax.dynamic_update_index_in_dim(history.gram, row[:, None, :], slot, axis=1)
    gram = jax.lax.dynamic_update_index_in_dim(gram, row[:, :, None], slot, axis=2)
    return History(images, residuals, gram)


def _cholesky_solve(h: list[list[jax.Array]], rhs: list[list[jax.Array]]
                    ) -> tuple[list[jax.Array], jax.Array | bool]:
    """Solve ``h y = b`` for every ``b`` in ``rhs``, ``h`` symmetric positive definite, by an
    unrolled Cholesky factorisation. Entries are (B,) arrays in lists (``h[i][j]``, ``b[i]``):
    m is tiny, so this is a few elementwise operations that fuse, with no per-sample LAPACK
    call. Returns the solutions (lists) and whether every pivot was positive."""
    m = len(h)
    low: list[list[Any]] = [[None] * m for _ in range(m)]
    ok: jax.Array | bool = True
    for j in range(m):
        pivot = h[j][j] - sum((low[j][k] * low[j][k] for k in range(j)), 0.0)
        ok = ok & (pivot > 0)
        low[j][j] = jnp.sqrt(jnp.where(pivot > 0, pivot, 1.0))
        for i in range(j + 1, m):
            low[i][j] = (h[i][j] - sum((low[i][k] * low[j][k] for k in range(j)), 0.0)) / low[j][j]
    solutions = []
    for b in rhs:
        u: list[Any] = [None] * m
        for i in range(m):
            u[i] = (b[i] - sum((low[i][k] * u[k] for k in range(i)), 0.0)) / low[i][i]
        y: list[Any] = [None] * m
        for i in reversed(range(m)):
            y[i] = (u[i] - sum((low[k][i] * y[k] for k in range(i + 1, m)), 0.0)) / low[i][i]
        solutions.append(jnp.stack(y, axis=1))
    return solutions, ok


def coefficients(history: History, count: jax.Array, latest: ArrayLike,
                 ridge: float) -> jax.Array:
    r"""The mixing coefficients :math:`\alpha` (B, m) of the module docstring: zero on the
    ``m - count`` empty slots; :math:`e_{\text{latest}}` (the plain step) where the system cannot
    be solved."""
    gram = history.gram
    batch, m, _ = gram.shape
    dtype = gram.dtype
    valid = jnp.arange(m) < count
    diag = jnp.diagonal(gram, axis1=1, axis2=2)
    scale = jnp.sum(jnp.where(valid, diag, 0), axis=1) / count.astype(dtype)
    scale = jnp.where(scale > 0, scale, 1)  # an all-zero history: any alpha is exact
    eye = jnp.eye(m, dtype=dtype)
    # Normalised system (G^T G / scale + ridge I); the empty slots are decoupled (identity rows).
    h = jnp.where(valid[:, None] & valid[None, :], gram / scale[:, None, None] + ridge * eye, eye)
    ones = valid.astype(dtype)
    plain = jax.nn.one_hot(latest, m, dtype=dtype)
    (to_ones, to_plain), ok = _cholesky_solve(
        [[h[:, i, j] for j in range(m)] for i in range(m)],
        [[jnp.broadcast_to(v[i], (batch,)) for i in range(m)] for v in (ones, plain)],
    )
    # alpha = H^-1 (ridge e_k + mu 1), with mu such that sum(alpha) = 1.
    denominator = jnp.sum(to_ones, axis=1)
    mu = (1 - ridge * jnp.sum(to_plain, axis=1)) / denominator
    alpha = ridge * to_plain + mu[:, None] * to_ones
    ok = ok & (denominator > 0) & jnp.all(jnp.isfinite(alpha), axis=1)
    return jnp.where(ok[:, None], alpha, plain)


def extrapolate(history: History, alpha: jax.Array, mixing: float) -> jax.Array:
    r""":math:`\sum_i \alpha_i (x_i + \beta g_i) = \sum_i \alpha_i (S(x_i) - (1 - \beta) g_i)`,
    flattened (B, D)."""
    out = jnp.einsum("bm,bmd->bd", alpha, history.images, precision=_HIGHEST)
    if mixing != 1.0:
        out = out - (1.0 - mixing) * jnp.einsum("bm,bmd->bd", alpha, history.residuals,
                                                precision=_HIGHEST)
    return out


def validate_anderson(owner: str, history: Any, ridge: Any, mixing: Any) -> None:
    positive_int(owner, "history", history, minimum=2)
    require(
        isinstance(ridge, (int, float)) and not isinstance(ridge, bool) and ridge > 0,
        f"{owner}.ridge must be a number > 0 (relative to the residual Gram matrix), got {ridge!r}",
    )
    in_interval(owner, "mixing", mixing, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Anderson(Solver):
    """Anderson acceleration with ``history`` past iterates, mixing ``beta`` and a ``ridge``
    relative to the mean diagonal of the residual Gram matrix."""

    history: int = 5
    ridge: float = 1e-5
    mixing: float = 1.0

    name: ClassVar[str] = "anderson"

    def _validate(self) -> None:
        validate_anderson("Anderson", self.history, self.ridge, self.mixing)

    def solve_batch(self, fn: Callable, z0: jax.Array, data: Any, *, tol: float, max_steps: int,
                    anchor: jax.Array | None = None,
                    value_and_map: Callable | None = None) -> SolverRun:
        batch, shape, m = z0.shape[0], z0.shape[1:], self.history
        apply_batch = batched(fn, data)
        apply = lambda z: flat(apply_batch(z.reshape((batch,) + shape)))  # noqa: E731

        def step(carry: tuple[History, jax.Array, jax.Array], _: jax.Array, active: jax.Array,
                 k: jax.Array) -> tuple[tuple[History, jax.Array, jax.Array], jax.Array]:
            history, point, image = carry
            count = jnp.minimum(k + 1, m)
            alpha = coefficients(history, count, k % m, self.ridge)
            x = freeze(active, extrapolate(history, alpha, self.mixing), point)
            fx = apply(x)
            g = fx - x
            slot = (k + 1) % m
            history = push(history, fx, g, slot)
            # |g|^2 is the Gram matrix's new diagonal entry: no second pass over g.
            return (history, x, freeze(active, fx, image)), jnp.sqrt(history.gram[:, slot, slot])

        x0 = flat(z0)
        f0 = apply(x0)
        g0 = f0 - x0
        carry = (start_history(f0, g0, m), x0, f0)
        (_, point, image), residual, steps, recorded = batch_loop(
            step, carry, batch_norms(g0), tol=tol, max_steps=max_steps, trace=self.trace
        )
        return SolverRun(
            point=point.reshape(z0.shape), image=image.reshape(z0.shape), steps=steps,
            evaluations=steps + 1, residual=residual, trace=recorded,
        )
