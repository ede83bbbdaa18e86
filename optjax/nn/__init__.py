"""Flax NNX modules wrapping the optjax core.

* :class:`OptEqDense`, :class:`OptEqConv`: unit OptEq layers with norm control, priors, Halpern
  anchors and mixed precision (:mod:`optjax.nn.layers`, :mod:`optjax.nn.spectral`);
* :class:`DeepOptEq`: the layered chain of OPTEQ.md section 4 (:mod:`optjax.nn.deep`);
* :class:`DEQDense`, :class:`DEQConv`, :class:`MonDEQDense`, :class:`MonDEQConv`: baselines in the
  same framework (:mod:`optjax.nn.baselines`);
* :class:`ImplicitClassifier`, :func:`build_matched`: image classifiers at matched parameter
  counts (:mod:`optjax.nn.classifiers`).

Every module leaves its last solve's statistics in ``module.info`` (a :class:`SolverInfo`
variable), which works under ``nnx.jit`` and inside ``nnx.Sequential``.
"""

from optjax.nn._info import SolverInfo
from optjax.nn.baselines import DEQConv, DEQDense, MonDEQConv, MonDEQDense, param_count
from optjax.nn.classifiers import ImplicitClassifier, build_matched, matched_width
from optjax.nn.deep import DeepOptEq
from optjax.nn.layers import OptEqConv, OptEqDense

__all__ = [
    "DEQConv",
    "DEQDense",
    "DeepOptEq",
    "ImplicitClassifier",
    "MonDEQConv",
    "MonDEQDense",
    "OptEqConv",
    "OptEqDense",
    "SolverInfo",
    "build_matched",
    "matched_width",
    "param_count",
]
