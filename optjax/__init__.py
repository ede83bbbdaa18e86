"""optjax: optimization-induced equilibrium networks (OptEq) in JAX.

The equilibrium z* = prox_R(W^T sigma(W z* + U x + b)) of a unit layer is the minimiser of the
explicit convex objective G(z) + R(z), G(z) = ||z||^2/2 - sum Phi(W z + U x + b), whenever the
activation sigma is a proximal operator and s_sigma ||W||^2 <= 1. optjax solves it per sample,
differentiates it implicitly, and certifies it.
"""

# The layout (each folder's __init__ says more):
#   engine/    the one solve: the problem contract, equilibrium(), implicit gradients, backward
#              modes, the result type and the certificate
#   families/  one module per model family: opteq (the unit layer), deep, deq, mondeq
#   solvers/   the forward solvers, one per file
#   convex/    activations as proximal operators, priors
#   linalg/    linear maps, convolutions with their adjoints, norms, linear solves
#   nn/        Flax NNX layers, one module per family; train/, data/: the `optjax` command
from optjax import solvers
from optjax.config import ConfigError
from optjax.convex import activations, priors
from optjax.convex.activations import Activation, NotAProxError
from optjax.engine import backward
from optjax.engine.certificate import Certificate, certificate
from optjax.engine.equilibrium import backward_probe, equilibrium
from optjax.engine.problem import Defect, EquilibriumProblem, NonconvexError
from optjax.engine.result import (BackwardStats, EquilibriumError, EquilibriumWarning, SolveInfo,
                                  Status, check)
from optjax.families import deep, deq, mondeq
from optjax.families.opteq.objective import dual_objective, objective
from optjax.families.opteq.problem import (OptEqProblem, convexity_margin, injection, operator,
                                           strong_convexity)
from optjax.linalg import convolution, linear_map

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
    "convolution",
    "deep",
    "deq",
    "linear_map",
    "mondeq",
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
