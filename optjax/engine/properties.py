r"""What a map supplies and what a solver needs: the contract between problem families and
forward solvers, written once.

A problem type declares the properties its map :math:`S` has whenever the problem's own
assumptions hold (the ones :meth:`~optjax.EquilibriumProblem.conditions` checks: convex weights,
a positive margin, a valid step), as :attr:`~optjax.EquilibriumProblem.map_properties`. A solver
declares what it needs (:attr:`optjax.solvers.Solver.requires`: alternatives, any one of which
suffices) and what it then guarantees. :func:`refusal` compares the two before any work; the
engine refuses a pair whose needs are not met, naming what is missing and which solvers fit.

========================  ======================================================================
property                  meaning (per sample, for parameters meeting the family's assumptions)
========================  ======================================================================
``NONEXPANSIVE``          :math:`\|S(x) - S(y)\| \le \|x - y\|` (Euclidean)
``CONTRACTION``           :math:`\|S(x) - S(y)\| \le q\,\|x - y\|`, :math:`q < 1`, in some norm
``OBJECTIVE``             an explicit :math:`F` with :math:`\operatorname{Fix} S = \arg\min F`,
                          and the plain step decreases it: :math:`F(S(y)) \le F(y) -
                          c\,\|y - S(y)\|^2`, :math:`c > 0`
``FORWARD_BACKWARD``      :math:`S(y) = \operatorname{prox}_R(y - \nabla G(y))` with :math:`G`
                          convex and 1-smooth in the Euclidean metric (a step :math:`1/L`)
``GRADIENT_STEP``         :math:`S(y) = y - \nabla F(y)` with :math:`F` convex and 1-smooth
                          (forward-backward with :math:`R = 0`): F's change between two points
                          is bounded by their residuals alone
========================  ======================================================================
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # both import this module
    from optjax.engine.problem import EquilibriumProblem
    from optjax.solvers.base import Solver

__all__ = ["MapProperty", "describe", "satisfied", "refusal"]


class MapProperty(enum.Flag):
    """Properties of an equilibrium map (a bit set); see the module docstring."""

    NONE = 0
    NONEXPANSIVE = enum.auto()
    CONTRACTION = enum.auto()
    OBJECTIVE = enum.auto()
    FORWARD_BACKWARD = enum.auto()
    GRADIENT_STEP = enum.auto()


_WORDS = {
    MapProperty.NONEXPANSIVE: "a nonexpansive map",
    MapProperty.CONTRACTION: "a contraction",
    MapProperty.OBJECTIVE: "an explicit objective that the plain step decreases",
    MapProperty.FORWARD_BACKWARD: "a forward-backward step of size 1/L on a smooth objective",
    MapProperty.GRADIENT_STEP: "a gradient step of size 1/L on a smooth convex objective",
}


def describe(props: MapProperty) -> str:
    """The properties in words ("nothing" for none)."""
    words = [text for bit, text in _WORDS.items() if bit in props]
    if not words:
        return "nothing"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def satisfied(requires: tuple[MapProperty, ...], supplied: MapProperty) -> bool:
    """Whether ``supplied`` meets one of the alternatives in ``requires`` (``()``: no need)."""
    return not requires or any(need in supplied for need in requires)


def refusal(solver: Solver, problem: EquilibriumProblem,
            solvers: Iterable[type[Solver]]) -> str | None:
    """Why ``solver`` cannot solve ``problem`` (a message naming what is missing and which of
    ``solvers`` fit), or None when its needs are met."""
    supplied = problem.map_properties
    if satisfied(solver.requires, supplied):
        return None
    needs = " or ".join(describe(need) for need in solver.requires)
    fitting = [s.name for s in solvers if satisfied(s.requires, supplied)]
    return (f"solver {solver.name!r} needs {needs}; the map of this {problem.kind} problem "
            f"supplies {describe(supplied)}. Solvers that fit: {', '.join(fitting)}")
