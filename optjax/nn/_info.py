"""What an equilibrium layer keeps of its solves (:class:`SolveSummary`), and the base class
that lets Flax's evaluation mode reach it (:class:`EquilibriumModule`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["SolveStat", "SolveSummary", "EquilibriumModule"]

_NAN = float("nan")


class SolveStat(nnx.Variable):
    """One scalar of a layer's :class:`SolveSummary`: updated by every call (also inside
    ``nnx.jit``), never trained (not an ``nnx.Param``)."""


def _stat(value, dtype) -> SolveStat:
    return SolveStat(jnp.asarray(value, dtype))


class SolveSummary(nnx.Module):
    r"""Scalars describing a layer's last solve (float32, or int32 for ``samples`` and
    ``defects``); every equilibrium layer holds one as ``layer.stats``. Read one with
    ``layer.stats.residual_max[...]``, all with :meth:`as_dict`.

    **Why a fixed-size summary.** Its shapes and dtypes are fixed at construction, whatever the
    batch size and whether or not the layer has been called, so

    * ``nnx.jit`` traces a step once per input shape: calls with other batch sizes (an
      evaluation batch, a last partial batch) leave the state's structure unchanged and never
      make another step retrace;
    * checkpoints restore the Flax way: ``nnx.eval_shape`` of a fresh model has the same state
      tree as a trained one (orbax ``StandardCheckpointer``, ``nnx.to_pure_dict`` /
      ``nnx.replace_by_pure_dict``);
    * it is not a parameter (optimizers built with ``wrt=nnx.Param`` ignore it) nor a running
      statistic (``nnx.BatchStat``); filter it with :class:`SolveStat`.

    **Per-sample statistics are opt-in, as a returned value**: ``z, info = layer(x,
    return_info=True)`` gives the :class:`optjax.SolveInfo` of that call (steps, evaluations,
    status, certificate per sample). A returned value is an ordinary output of the traced
    function: it costs nothing when not asked for, changes no state, and works under
    ``nnx.jit``, ``nnx.vmap`` and ``nnx.value_and_grad(..., has_aux=True)`` alike. Keeping it in
    the module instead (a variable shaped like the batch, or ``sow`` outside ``nnx.capture``,
    which Flax deprecates) makes the state change shape after the first call.

    Attributes:
      samples: batch size of the last call (0: never called; every other field is then NaN).
      steps_mean, steps_max: solver iterations per sample.
      evaluations_mean, evaluations_max: evaluations of the problem's map per sample (one T
        each for OptEq).
      residual_max: the largest :math:`\\|z - S(z)\\|` (NaN if a sample was non-finite).
      converged_share: the fraction of samples whose status is CONVERGED.
      nonfinite_share: the fraction of samples where NaN or Inf was met.
      suboptimality_bound_max, distance_bound_max: the largest certified bounds
        :math:`r^2 / (2\\mu)` and :math:`r / \\mu` (inf where nothing was certified, e.g. an
        OptEq layer in training mode, or a DEQ).
      weight_norm: the :math:`\\|W\\|` the certificate used (NaN if none was computed).
      modulus: the strong-convexity (or contraction) modulus :math:`\\mu` of the certificate.
      defects: the problem's :class:`optjax.problem.Defect` bits.
    """

    def __init__(self):
        f32, i32 = jnp.float32, jnp.int32
        self.samples = _stat(0, i32)
        self.steps_mean = _stat(_NAN, f32)
        self.steps_max = _stat(_NAN, f32)
        self.evaluations_mean = _stat(_NAN, f32)
        self.evaluations_max = _stat(_NAN, f32)
        self.residual_max = _stat(_NAN, f32)
        self.converged_share = _stat(_NAN, f32)
        self.nonfinite_share = _stat(_NAN, f32)
        self.suboptimality_bound_max = _stat(_NAN, f32)
        self.distance_bound_max = _stat(_NAN, f32)
        self.weight_norm = _stat(_NAN, f32)
        self.modulus = _stat(_NAN, f32)
        self.defects = _stat(0, i32)

    def record(self, info) -> None:
        """Overwrite every field with the summary of ``info`` (an :class:`optjax.SolveInfo`)."""
        info = jax.lax.stop_gradient(info)
        f32 = jnp.float32
        batch = int(info.steps.shape[0])
        self.samples.set_value(jnp.asarray(batch, jnp.int32))
        self.defects.set_value(jnp.asarray(info.defects, jnp.int32))
        cert = info.certificate
        self.weight_norm.set_value(jnp.asarray(cert.weight_norm, f32))
        self.modulus.set_value(jnp.asarray(cert.modulus, f32))
        if batch == 0:  # nothing to average; keep the NaN of "no sample"
            return
        for name, values, reduce in (
            ("steps_mean", info.steps, jnp.mean), ("steps_max", info.steps, jnp.max),
            ("evaluations_mean", info.evaluations, jnp.mean),
            ("evaluations_max", info.evaluations, jnp.max),
            ("residual_max", cert.residual, jnp.max),
            ("converged_share", info.converged, jnp.mean),
            ("nonfinite_share", info.nonfinite, jnp.mean),
            ("suboptimality_bound_max", cert.suboptimality_bound, jnp.max),
            ("distance_bound_max", cert.distance_bound, jnp.max),
        ):
            getattr(self, name).set_value(reduce(jnp.asarray(values, f32)))

    def as_dict(self) -> dict[str, jax.Array]:
        """Every field as ``{name: scalar array}``."""
        return {name: var.get_value() for name, var in vars(self).items()
                if isinstance(var, SolveStat)}


class EquilibriumModule(nnx.Module):
    """Base of the equilibrium layers: the summary, the mode, and the ``return_info`` output.

    A layer's mode is its ``use_running_average`` attribute (``False``: training), the
    attribute of Flax's ``BatchNorm``, so ``model.eval()``, ``model.train()`` and
    ``nnx.view(model, use_running_average=..., deterministic=...)`` all reach it. ``nnx.view``
    also takes ``deterministic`` (Dropout's keyword) for these layers, so a model whose only
    mode-dependent layers are optjax layers accepts the same ``nnx.view`` call as one with
    BatchNorm and Dropout. What the mode changes is the layer's business: the OptEq layers
    freeze their power-iteration vector and certify exactly in evaluation mode; the others
    behave the same in both.
    """

    def _init_stats(self) -> None:
        self.use_running_average = False  # training mode until model.eval() / nnx.view
        self.stats = SolveSummary()

    def set_view(self, use_running_average: bool | None = None,
                 deterministic: bool | None = None):
        """Class method used by ``nnx.view``.

        Args:
          use_running_average: if True, evaluation mode (for OptEq layers: the power-iteration
            vector is frozen and the certificate uses the exact norm); if False, training mode.
          deterministic: sets the same mode when use_running_average is not given, so that
            nnx.view(model, deterministic=True) also puts these layers in evaluation mode.
        """
        mode = use_running_average if use_running_average is not None else deterministic
        if mode is not None and not isinstance(mode, bool):
            raise TypeError(
                f"{type(self).__name__}: use_running_average and deterministic must be True, "
                f"False or None, got {mode!r}")
        if mode is not None:
            self.use_running_average = mode

    def _finish(self, output, info, return_info: bool):
        """Record ``info`` in the summary; return ``output`` (and ``info`` if asked)."""
        self.stats.record(info)
        return (output, info) if return_info else output
