r"""Backward modes: how the implicit gradient's linear system is solved.

At :math:`z^\star = S(z^\star; \theta)` the gradient of a loss :math:`\ell(z^\star)` is
:math:`\bar\theta = (\partial_\theta S)^\top v` where

.. math:: (I - J^\top)\, v = g, \qquad J = \partial_z S(z^\star), \quad g = \nabla \ell(z^\star).

Without a prior :math:`J = W^\top D W` (:math:`D = \operatorname{diag}\sigma'`) is symmetric
with eigenvalues in :math:`[0, s_\sigma\|W\|^2]`, so :math:`I - J` is symmetric positive definite
and conjugate gradients converge fast with a certified residual. With a prior :math:`J = P\,
W^\top D W` (:math:`P` the prox's Jacobian) is not symmetric (unless :math:`P` is a multiple of
the identity): use GMRES or fixed-point iteration. A monDEQ solved by Peaceman--Rachford
solves its backward system with the same splitting (:class:`Splitting`). The phantom gradient
replaces :math:`v` by a ``k``-step damped Neumann sum; it is what differentiating ``k`` damped steps
:math:`z \leftarrow (1 - \lambda) z + \lambda S(z)` started at :math:`z^\star` gives, and stays
defined when :math:`I - J` is singular (non-unique equilibria, e.g. Halpern with
:math:`\|W\| = 1`), where the exact implicit gradient does not exist.

Tolerances are relative: a sample stops when :math:`\|g - (I - J^\top) v\| \le
\text{tol}\,\|g\|`; ``tol=None`` means :math:`\max(10^{-12}, 256\,\varepsilon)` of the dtype.
The engine solves each sample's system for :math:`g` divided by a power of two near its largest
entry (:mod:`optjax.engine.implicit`), so this holds however small :math:`g` is.
A sample that stops above it (``max_steps`` reached) is reported in the backward statistics
(``converged = 0``) and, with ``on_failure="warn"`` (the default), by an
:class:`~optjax.EquilibriumWarning`; ``on_failure="ignore"`` keeps quiet. The phantom
gradient is approximate by design: it never warns, and reports ``converged = 1`` only where its
residual on the exact system is as small as an exact solve's would be.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> import optjax
  >>> W = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
  >>> W = 0.9 * W / jnp.linalg.norm(W, 2)                 # ||W|| = 0.9 < 1: strongly convex
  >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))  # 2 samples of U x + b
  >>> mode = optjax.backward.get("gmres", tol=1e-6, restart=10)
  >>> mode
  GMRES(tol=1e-06, max_steps=200, on_failure='warn', restart=10)
  >>> loss = lambda W: jnp.sum(optjax.equilibrium(
  ...     optjax.OptEqProblem(W, "relu"), x, backward=mode)[0] ** 2)
  >>> jax.grad(loss)(W).shape
  (8, 4)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

from optjax.linalg import linear_solve
from optjax.config import ConfigError, in_interval, positive_int, require
from optjax.config import Config

__all__ = ["Backward", "FixedPointBackward", "ConjugateGradient", "GMRES", "Splitting", "Phantom",
           "get"]


def default_tol(dtype: Any) -> float:
    return max(1e-12, 256 * float(jnp.finfo(dtype).eps))


@dataclasses.dataclass(frozen=True)
class Backward(Config):
    """Base class of backward modes."""

    name: ClassVar[str] = "backward"
    requires_symmetric: ClassVar[bool] = False
    requires_splitting: ClassVar[bool] = False

    def solve(self, apply_a: Callable, g: jax.Array) -> linear_solve.LinearSolveResult:
        """Solve (I - A) v = g for one sample, A = J^T given as a function."""
        raise NotImplementedError  # pragma: no cover - abstract

    @property
    def output_scale(self) -> float:
        """Factor applied to v before the parameter VJP (the phantom damping)."""
        return 1.0


_ON_FAILURE = ("warn", "ignore")


@dataclasses.dataclass(frozen=True)
class _Iterative(Backward):
    tol: float | None = None
    max_steps: int = 200
    on_failure: str = "warn"

    def _validate(self) -> None:
        owner = type(self).__name__
        positive_int(owner, "max_steps", self.max_steps)
        require(
            self.tol is None or (isinstance(self.tol, (int, float)) and self.tol > 0),
            f"{owner}.tol must be a positive number or None, got {self.tol!r}",
        )
        require(self.on_failure in _ON_FAILURE,
                f"{owner}.on_failure must be one of {_ON_FAILURE}, got {self.on_failure!r}")

    def _abs_tol(self, g: jax.Array) -> jax.Array:
        tol = default_tol(g.dtype) if self.tol is None else self.tol
        return tol * jnp.sqrt(jnp.sum(g * g))


@dataclasses.dataclass(frozen=True)
class FixedPointBackward(_Iterative):
    r"""Damped fixed-point iteration :math:`v \leftarrow v + \lambda(g - (I - A) v)`; rate
    :math:`s_\sigma\|W\|^2` without damping."""

    damping: float = 1.0

    name: ClassVar[str] = "fixed_point"

    def _validate(self) -> None:
        super()._validate()
        in_interval("FixedPointBackward", "damping", self.damping, 0.0, 1.0)

    def solve(self, apply_a: Callable, g: jax.Array) -> linear_solve.LinearSolveResult:
        return linear_solve.neumann(
            apply_a, g, tol=self._abs_tol(g), max_steps=self.max_steps, damping=self.damping
        )


@dataclasses.dataclass(frozen=True)
class ConjugateGradient(_Iterative):
    """Conjugate gradients; valid when I - J is symmetric positive definite (no prior, or the
    quadratic prior)."""

    name: ClassVar[str] = "cg"
    requires_symmetric: ClassVar[bool] = True

    def solve(self, apply_a: Callable, g: jax.Array) -> linear_solve.LinearSolveResult:
        return linear_solve.conjugate_gradient(
            apply_a, g, tol=self._abs_tol(g), max_steps=self.max_steps
        )


@dataclasses.dataclass(frozen=True)
class GMRES(_Iterative):
    """Restarted GMRES for the general (non-symmetric) system."""

    restart: int = 20

    name: ClassVar[str] = "gmres"

    def _validate(self) -> None:
        super()._validate()
        positive_int("GMRES", "restart", self.restart)

    def solve(self, apply_a: Callable, g: jax.Array) -> linear_solve.LinearSolveResult:
        return linear_solve.gmres(
            apply_a, g, tol=self._abs_tol(g), max_steps=self.max_steps, restart=self.restart
        )


@dataclasses.dataclass(frozen=True)
class Splitting(_Iterative):
    r"""The forward's operator splitting run on the backward system, for maps that offer one
    (``problem.adjoint_splitting``: a monDEQ solved with Peaceman--Rachford, whose backward
    system is again a strongly monotone inclusion with the transposed resolvent; see
    :mod:`optjax.families.mondeq`). A step costs one resolvent and no product with :math:`J^\top`; the
    stopping test is the map's bound on the system's residual, and the returned residual is
    exact (two products with :math:`J^\top` after the loop)."""

    name: ClassVar[str] = "splitting"
    requires_splitting: ClassVar[bool] = True

    def solve(self, apply_a: Callable, g: jax.Array) -> linear_solve.LinearSolveResult:
        raise ConfigError("backward='splitting' needs the map's adjoint splitting; it is run by "
                          "the engine (optjax.equilibrium) for problems that have one")

    def solve_split(self, adjoint: Any, apply_a: Callable,
                    g: jax.Array) -> linear_solve.LinearSolveResult:
        """Solve (I - A) v = g with ``adjoint`` (the map's ``adjoint_splitting`` at z*)."""
        return linear_solve.splitting(
            lambda u: adjoint.step(u, g), lambda u: adjoint.solution(u, g), apply_a, g,
            scale=adjoint.scale, tol=self._abs_tol(g), max_steps=self.max_steps)


@dataclasses.dataclass(frozen=True)
class Phantom(Backward):
    r"""``steps``-step phantom gradient with damping :math:`\lambda`:
    :math:`v = \lambda \sum_{i<k} ((1-\lambda) I + \lambda A)^i g`. Inexact by design; its stats
    report the residual of the exact system for reference (one more evaluation of A)."""

    steps: int = 5
    damping: float = 0.5

    name: ClassVar[str] = "phantom"

    def _validate(self) -> None:
        positive_int("Phantom", "steps", self.steps)
        in_interval("Phantom", "damping", self.damping, 0.0, 1.0)

    @property
    def output_scale(self) -> float:
        return self.damping

    def solve(self, apply_a: Callable, g: jax.Array) -> linear_solve.LinearSolveResult:
        v = linear_solve.unrolled_neumann(apply_a, g, steps=self.steps, damping=self.damping)
        scaled = self.damping * v
        residual = jnp.sqrt(jnp.sum((g - (scaled - apply_a(scaled))) ** 2))
        exact_tol = default_tol(g.dtype) * jnp.sqrt(jnp.sum(g * g))
        return linear_solve.LinearSolveResult(
            solution=v,
            steps=jnp.asarray(self.steps, jnp.int32),
            residual=residual,
            converged=residual <= exact_tol,  # False for NaN; honest, not "it ran"
        )


BACKWARDS = {cls.name: cls for cls in (FixedPointBackward, ConjugateGradient, GMRES, Splitting,
                                        Phantom)}


def get(backward: str | Backward, **options: Any) -> Backward:
    """A backward mode from its name (with options) or a :class:`Backward` given as it is."""
    if isinstance(backward, Backward):
        return backward.replace(**options) if options else backward
    if not isinstance(backward, str) or backward not in BACKWARDS:
        raise ConfigError(
            f"unknown backward mode {backward!r}; choose one of {', '.join(BACKWARDS)}, 'auto', "
            "or pass an optjax.backward.Backward instance"
        )
    return BACKWARDS[backward].from_dict(options)
