"""Where a module leaves the statistics of its last solve."""

from flax import nnx


class SolverInfo(nnx.Variable):
    """The last call's :class:`optjax.SolveInfo` (or a baseline's statistics); ``None`` before
    the first call. A Variable, not a Param: it is updated inside ``nnx.jit`` and ignored by
    gradients and optimizers, so a layer reports it even inside ``nnx.Sequential``. Read it with
    ``layer.info.get_value()``."""
