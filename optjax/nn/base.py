"""What every equilibrium layer shares: what it keeps of its solves (:class:`SolveSummary`), the
base class that lets Flax's evaluation mode reach it (:class:`EquilibriumModule`), and the
settings, checks and convolutions of the DEQ and monDEQ layers (:class:`BaselineLayer`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike, DTypeLike

from optjax import solvers as _solvers
from optjax.config import ConfigError, positive_int, require
from optjax.convex import activations as _activations
from optjax.engine import backward as _backward
from optjax.engine.equilibrium import equilibrium
from optjax.engine.problem import EquilibriumProblem
from optjax.engine.result import BackwardStats, SolveInfo

__all__ = ["SolveStat", "SolveSummary", "EquilibriumModule"]

_NAN = float("nan")

#: What a layer's ``__call__`` returns: the equilibria, or ``(equilibria, SolveInfo)`` with
#: ``return_info=True`` (Any: the type depends on that flag's value).
Output = Any


class SolveStat(nnx.Variable):
    """One scalar of a layer's :class:`SolveSummary`: updated by every call (also inside
    ``nnx.jit``), never trained (not an ``nnx.Param``).

    Examples:
      >>> import jax
      >>> from flax import nnx
      >>> from optjax.nn import OptEqDense, SolveStat
      >>> layer = OptEqDense(64, 16, rngs=nnx.Rngs(0))
      >>> isinstance(layer.stats.residual_max, SolveStat)
      True
      >>> len(jax.tree.leaves(nnx.state(layer, SolveStat)))   # the summary's scalars
      13
      >>> len(jax.tree.leaves(nnx.state(layer, nnx.Param)))   # W, U, b: not among them
      3
    """


def _stat(value: ArrayLike, dtype: DTypeLike) -> SolveStat:
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
      defects: the problem's :class:`optjax.Defect` bits.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from optjax.nn import OptEqDense
      >>> layer = OptEqDense(64, 16, rngs=nnx.Rngs(0))
      >>> z = layer(jnp.ones((2, 64)))
      >>> int(layer.stats.samples[...]), float(layer.stats.converged_share[...])
      (2, 1.0)
      >>> sorted(layer.stats.as_dict())[:3]
      ['converged_share', 'defects', 'distance_bound_max']
    """

    def __init__(self) -> None:
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

    def record(self, info: SolveInfo) -> None:
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
                 deterministic: bool | None = None) -> None:
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

    def _finish(self, output: Any, info: SolveInfo, return_info: bool) -> Output:
        """Record ``info`` in the summary; return ``output`` (and ``info`` if asked)."""
        self.stats.record(info)
        return (output, info) if return_info else output


# --- shared by the DEQ and monDEQ layers -------------------------------------------------------

CONV_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def param_count(module: nnx.Module) -> int:
    """Total number of scalars in the module's :class:`nnx.Param` leaves.

    Examples:
      >>> from flax import nnx
      >>> from optjax.nn import OptEqDense, param_count
      >>> param_count(nnx.Linear(3, 4, rngs=nnx.Rngs(0)))         # 3 x 4 weights + 4 biases
      16
      >>> param_count(OptEqDense(64, 16, rngs=nnx.Rngs(0)))      # W 32 x 16, U 32 x 64, b 32
      2592
    """
    return int(sum(leaf.size for leaf in jax.tree.leaves(nnx.state(module, nnx.Param))))


# --- convolutions -------------------------------------------------------------------------------


def conv2d(z: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 (any odd size) convolution, stride 1, 'SAME' zero padding, of ``(..., H, W, C_in)``
    feature maps (one or a batch) with an ``HWIO`` kernel."""
    single = z.ndim == 3
    z = z[None] if single else z
    out = jax.lax.conv_general_dilated(z, kernel, (1, 1), "SAME", dimension_numbers=CONV_DIMENSIONS)
    return out[0] if single else out


def conv2d_adjoint(y: jax.Array, kernel: jax.Array) -> jax.Array:
    """The exact adjoint of :func:`conv2d` for an odd-sized kernel: the convolution with the
    spatially flipped kernel, input and output channels swapped (the padding is symmetric, so
    'SAME' again). ``<conv2d(x, k), y> = <x, conv2d_adjoint(y, k)>``."""
    require(
        kernel.shape[0] % 2 == 1 and kernel.shape[1] % 2 == 1,
        f"conv2d_adjoint needs an odd kernel size, got {kernel.shape[:2]}",
    )
    return conv2d(y, jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2)))


def resolve_activation(activation: str | Callable) -> Callable:
    """A callable from a registered optjax activation name (kept as the hashable
    :class:`~optjax.Activation`, a static attribute under ``nnx.jit``), a ``jax.nn`` name, or a
    callable."""
    if callable(activation):
        return activation
    if isinstance(activation, str):
        if activation in _activations.available():
            return _activations.get(activation)
        fn = getattr(jax.nn, activation, None)
        if callable(fn):
            return fn
    raise ConfigError(
        f"unknown activation {activation!r}: pass a callable, one of "
        f"{', '.join(_activations.available())}, or a jax.nn function name"
    )


def positive_number(value: Any) -> bool:
    """A real number > 0 (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def check_settings(owner: str, tol: Any, max_steps: Any) -> None:
    """A layer's tolerance and step cap, or a ConfigError naming the owner."""
    require(
        positive_number(tol),
        f"{owner}.tol must be a positive number, got {tol!r}",
    )
    positive_int(owner, "max_steps", max_steps)


def check_input(owner: str, x: Any, feature_shape: Sequence[int | None]) -> jax.Array:
    """``x`` as a floating array of shape ``(batch,) + feature_shape`` (None: any size)."""
    if not hasattr(x, "shape"):
        x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{owner}: x must have a floating dtype, got {x.dtype}")
    if x.ndim != len(feature_shape) + 1 or any(
        want is not None and got != want for got, want in zip(x.shape[1:], feature_shape)
    ):
        want = "(batch, " + ", ".join("?" if w is None else str(w) for w in feature_shape) + ")"
        raise ValueError(f"{owner}: x must have shape {want}, got {tuple(x.shape)}")
    return x


def solve_layer(layer: BaselineLayer, problem: EquilibriumProblem, c: jax.Array,
                init: ArrayLike | None, return_info: bool,
                backward_probe: BackwardStats | None = None) -> Output:
    """Solve ``problem`` for the injections ``c`` with the layer's settings, summarise the
    :class:`optjax.SolveInfo` in ``layer.stats`` and return the equilibria (and the info if
    ``return_info``); ``backward_probe`` as :func:`optjax.equilibrium`'s."""
    if init is not None:
        init = jnp.broadcast_to(jnp.asarray(init, c.dtype), c.shape)
    z, info = equilibrium(problem, c, solver=layer.solver, backward=layer.backward,
                          tol=layer.tol, max_steps=layer.max_steps, init=init,
                          backward_probe=backward_probe)
    return layer._finish(z, info, return_info)


class BaselineLayer(EquilibriumModule):
    """Settings shared by the DEQ and monDEQ layers."""

    if TYPE_CHECKING:  # the monDEQ layers' settings, which _problem_step reads
        alpha: float | None
        splitting: str
        step_size: Callable[..., jax.Array]

    def _setup(self, solver: str | _solvers.Solver, backward: str | _backward.Backward,
               tol: float, max_steps: int) -> None:
        check_settings(type(self).__name__, tol, max_steps)
        self.solver = _solvers.get(solver)
        self.backward = backward if backward == "auto" else _backward.get(backward)
        self.tol = float(tol)
        self.max_steps = int(max_steps)
        self._init_stats()

    def _dtype(self, x: jax.Array, *params: jax.Array) -> Any:
        return jnp.result_type(x.dtype, *(p.dtype for p in params))

    def _problem_step(self, dtype: DTypeLike, *spatial: tuple[int, ...]) -> jax.Array | None:
        """A monDEQ's ``MonDEQProblem.step``: None for Peaceman--Rachford's default (the problem
        computes it from the I - W it builds for the resolvent), else :meth:`step_size`."""
        if self.alpha is None and self.splitting == "peaceman_rachford":
            return None
        return self.step_size(*spatial).astype(dtype)
