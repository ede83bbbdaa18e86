"""optjax: optimization-induced equilibrium networks (OptEq) in JAX.

The equilibrium z* = prox_R(W^T sigma(W z* + U x + b)) of a unit layer is the minimiser of the
explicit convex objective G(z) + R(z), G(z) = ||z||^2/2 - sum Phi(W z + U x + b), whenever the
activation sigma is a proximal operator and s_sigma ||W||^2 <= 1. optjax solves it per sample,
differentiates it implicitly, and certifies it.
"""

from optjax import activations, backward, priors, solvers
from optjax.activations import Activation, NotAProxError
from optjax.certificate import Certificate, certificate
from optjax.config import ConfigError
from optjax.equilibrium import backward_probe, equilibrium
from optjax.info import (BackwardStats, EquilibriumError, EquilibriumWarning, SolveInfo, Status,
                         check)
from optjax.objective import dual_objective, objective
from optjax.operator import operator
from optjax.problem import (Defect, EquilibriumProblem, NonconvexError, OptEqProblem,
                            convexity_margin, injection, strong_convexity)

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "BackwardStats",
    "Certificate",
    "ConfigError",
    "Defect",
    "EquilibriumProblem",
    "EquilibriumWarning",
    "EquilibriumError",
    "NonconvexError",
    "NotAProxError",
    "OptEqProblem",
    "SolveInfo",
    "Status",
    "activations",
    "backward",
    "backward_probe",
    "certificate",
    "check",
    "convexity_margin",
    "dual_objective",
    "equilibrium",
    "injection",
    "objective",
    "operator",
    "priors",
    "solvers",
    "strong_convexity",
]
