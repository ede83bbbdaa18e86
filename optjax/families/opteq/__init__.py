r"""The OptEq unit layer: :math:`z^\star = \operatorname{prox}_R(W^\top \sigma(W z^\star + U x + b))`,
the minimiser of :math:`F(z) = \tfrac12\|z\|^2 - \sum_i \Phi((W z + U x + b)_i) + R(z)`.

* :mod:`~optjax.families.opteq.problem`: :class:`OptEqProblem`, its assumptions and certificate,
  the injection and the batched map;
* :mod:`~optjax.families.opteq.map`: the map :math:`S = \operatorname{prox}_R \circ T` for one
  sample, fused with :math:`F`, and its structured :math:`J^\top`;
* :mod:`~optjax.families.opteq.objective`: :math:`F` and its dual on a batch.
"""

from optjax.families.opteq.map import EquilibriumMap, unit_operator
from optjax.families.opteq.objective import dual_objective, objective
from optjax.families.opteq.problem import (OptEqProblem, convexity_margin, injection, operator,
                                           strong_convexity)

__all__ = ["OptEqProblem", "EquilibriumMap", "unit_operator", "injection", "operator",
           "objective", "dual_objective", "convexity_margin", "strong_convexity"]
