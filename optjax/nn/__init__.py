"""Flax NNX modules wrapping the optjax core.

* :class:`OptEqDense`, :class:`OptEqConv`: unit OptEq layers with norm control, priors, Halpern
  anchors and mixed precision (:mod:`optjax.nn.opteq`, :mod:`optjax.nn.spectral`);
* :class:`DeepOptEq`, :class:`DeepOptEqConv`: the layered chain of docs/maths.md, section 4,
  with dense or convolutional (multi-scale: strided) couplings (:mod:`optjax.nn.deep`);
* :class:`DEQDense`, :class:`DEQConv`, :class:`MonDEQDense`, :class:`MonDEQConv`: baselines in the
  same framework (:mod:`optjax.nn.deq`, :mod:`optjax.nn.mondeq`);
* :class:`ImplicitClassifier`, :func:`build_matched`: image classifiers at matched parameter
  counts (:mod:`optjax.nn.classifiers`).

Every equilibrium layer summarises its last solve in ``layer.stats`` (a :class:`SolveSummary`
of fixed-size :class:`SolveStat` scalars: one ``nnx.jit`` trace per input shape, checkpoints
that restore into ``nnx.eval_shape``) and returns the per-sample :class:`optjax.SolveInfo` on
request (``z, info = layer(x, return_info=True)``).

Every equilibrium layer follows Flax's evaluation mode through its ``use_running_average``
attribute: ``model.eval()``, ``model.train()``, and ``nnx.view(model, use_running_average=...,
deterministic=...)`` (either keyword sets the mode; ``use_running_average`` wins if both are
given), also in models without BatchNorm or Dropout. In evaluation mode the OptEq layers
freeze their power-iteration vector and certify with the exact norm; the other layers behave
the same in both modes.
"""

from optjax.nn.base import SolveStat, SolveSummary
from optjax.nn.deq import DEQConv, DEQDense
from optjax.nn.mondeq import MonDEQConv, MonDEQDense
from optjax.nn.base import param_count
from optjax.nn.classifiers import ImplicitClassifier, build_matched, matched_width
from optjax.nn.deep import DeepOptEq, DeepOptEqConv
from optjax.nn.opteq import OptEqConv, OptEqDense

__all__ = [
    "DEQConv",
    "DEQDense",
    "DeepOptEq",
    "DeepOptEqConv",
    "ImplicitClassifier",
    "MonDEQConv",
    "MonDEQDense",
    "OptEqConv",
    "OptEqDense",
    "SolveStat",
    "SolveSummary",
    "build_matched",
    "matched_width",
    "param_count",
]
