"""Flax NNX modules wrapping the optjax core."""

from optjax.nn._info import SolverInfo
from optjax.nn.layers import OptEqConv, OptEqDense

__all__ = ["OptEqConv", "OptEqDense", "SolverInfo"]
