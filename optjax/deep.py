r"""Deep OptEq: a chain of layers with feed-forward and feedback couplings (OPTEQ.md section 4).

Layers :math:`l = 1..L` with states :math:`s_l \in \mathbb{R}^{n_l}` and couplings
:math:`A_l` of shape :math:`(n_{l+1}, n_l)`, :math:`l = 1..L-1`:

.. math::

    s_l = \sigma_l\big(A_{l-1} s_{l-1} + A_l^\top s_{l+1} + b_l\big), \qquad
    b_1 = U x + b \ (\text{the injection}), \quad A_0 = A_L = 0.

This is :math:`s = \sigma(K s + b)` with :math:`K` symmetric block-tridiagonal (:math:`A_l`
below the diagonal, :math:`A_l^\top` above), the prox-gradient step with step 1 on

.. math::

    H(s) = \sum_l \Big[\textstyle\sum_i f_l(s_{l,i}) + \tfrac12\|s_l\|^2 - b_l^\top s_l\Big]
           - \sum_l \langle s_{l+1}, A_l s_l \rangle,

with :math:`f_l` the penalty of :math:`\sigma_l = \operatorname{prox}_{f_l}`. Since
:math:`|s^\top K s| \le \sum_l (\|A_{l-1}\| + \|A_l\|)\|s_l\|^2`,

.. math:: \|K\| \le 1 - m, \qquad m = 1 - \max_l\big(\|A_{l-1}\| + \|A_l\|\big)

(the *convexity margin*): for :math:`m > 0`, :math:`H` is :math:`m`-strongly convex, its
minimiser is the unique equilibrium, and the Jacobi map :math:`s \mapsto \sigma(K s + b)` is an
:math:`(1 - m)`-contraction, so :math:`\|s - s^\star\| \le \|s - \sigma(K s + b)\| / m` at any
:math:`s` (the ``distance_bound`` reported). Two maps share these fixed points:

* Jacobi: all layers at once; prox-gradient with step :math:`1 < 2 / \|I - K\|`, so :math:`H`
  decreases monotonically.
* Gauss--Seidel: layers :math:`1..L` in turn, each using the newest :math:`s_{l-1}` (a forward
  pass with feedback); each layer update exactly minimises :math:`H` over :math:`s_l`
  (block-coordinate descent), so :math:`H` decreases monotonically.

Both are solved with :func:`optjax.implicit.fixed_point`; the implicit gradient depends only on
the fixed point, so both maps give the same gradients. The Jacobian of either map is not
symmetric (:math:`D K` for Jacobi, :math:`D = \operatorname{diag}\sigma'`), so the backward
system is solved with GMRES (default) or fixed-point iteration, not conjugate gradients.

States are handled per sample as one flat vector :math:`(s_1, \dots, s_L)` of length
:math:`\sum_l n_l`; :func:`equilibrium` returns them split per layer.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optjax import activations as _activations
from optjax import backward as _backward
from optjax import linear_map
from optjax import solvers as _solvers
from optjax.config import ConfigError, positive_int, require
from optjax.implicit import fixed_point
from optjax.info import BackwardStats, Status, failure_lines
from optjax.problem import NonconvexError

__all__ = [
    "DeepProblem",
    "DeepSolveInfo",
    "SWEEPS",
    "jacobi_map",
    "gauss_seidel_map",
    "objective",
    "convexity_margin",
    "coupling_norms",
    "normalize",
    "split",
    "equilibrium",
]

SWEEPS = ("jacobi", "gauss_seidel")


def _as_activation(act) -> _activations.Activation:
    if isinstance(act, _activations.Activation):
        return act
    if isinstance(act, str):
        return _activations.get(act)
    raise TypeError(
        "activations must be optjax Activations or registry names such as 'relu'; got "
        f"{type(act).__name__}"
    )


def _array_like(leaf) -> bool:
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeepProblem:
    """A deep OptEq chain of ``L = len(couplings) + 1`` layers (a pytree; activations static).

    Attributes:
      couplings: ``(A_1, ..., A_{L-1})``, ``A_l`` of shape ``(n_{l+1}, n_l)``; ``()`` for one layer.
      input_weight: ``U``, ``(n_1, p)``; ``None`` means ``x`` already is ``U x`` (``p = n_1``).
      biases: ``(b_1, ..., b_L)``, ``b_l`` of shape ``(n_l,)``; ``None`` means zeros.
      activations: one activation (name or :class:`optjax.Activation`) for every layer, or a
        sequence of ``L`` of them (static).
    """

    couplings: tuple
    input_weight: jax.Array | None
    biases: tuple | None = None
    activations: tuple = dataclasses.field(default="relu", metadata=dict(static=True))

    def __post_init__(self):
        couplings = tuple(self.couplings)
        object.__setattr__(self, "couplings", couplings)
        num_layers = len(couplings) + 1
        acts = self.activations
        if isinstance(acts, (str, _activations.Activation)):
            acts = (acts,) * num_layers
        acts = tuple(_as_activation(a) for a in acts)
        if len(acts) != num_layers:
            raise ValueError(
                f"got {len(acts)} activations for {num_layers} layers ({len(couplings)} "
                "couplings); pass one activation, or one per layer"
            )
        object.__setattr__(self, "activations", acts)
        if self.biases is not None:
            biases = tuple(self.biases)
            if len(biases) != num_layers:
                raise ValueError(
                    f"got {len(biases)} biases for {num_layers} layers ({len(couplings)} "
                    "couplings); pass one bias vector per layer, or None"
                )
            object.__setattr__(self, "biases", biases)
        # Pytree unflattening rebuilds the problem with placeholder leaves: check shapes only
        # when the leaves are arrays (or tracers).
        if all(_array_like(leaf) for leaf in jax.tree_util.tree_leaves(self)):
            self._check_shapes()

    def _check_shapes(self):
        u = self.input_weight
        if u is not None and u.ndim != 2:
            raise ValueError(f"input_weight U must be a 2-D (n_1, p) array, got shape {u.shape}")
        n = u.shape[0] if u is not None else None
        for l, a in enumerate(self.couplings, start=1):
            if a.ndim != 2:
                raise ValueError(f"coupling A_{l} must be a 2-D array, got shape {a.shape}")
            if n is not None and a.shape[1] != n:
                raise ValueError(
                    f"coupling A_{l} must have shape (n_{l + 1}, n_{l}) with n_{l} = {n} "
                    f"(the size of layer {l}); got {a.shape}"
                )
            n = a.shape[0]
        if self.biases is not None:
            for l, (b, size) in enumerate(zip(self.biases, self.sizes), start=1):
                if tuple(jnp.shape(b)) != (size,):
                    raise ValueError(
                        f"bias b_{l} must have shape ({size},) (the size of layer {l}); got "
                        f"{tuple(jnp.shape(b))}"
                    )
        for leaf in jax.tree_util.tree_leaves(self):
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise TypeError(f"the problem's arrays must be floating, got {leaf.dtype}")

    @property
    def num_layers(self) -> int:
        return len(self.couplings) + 1

    @property
    def sizes(self) -> tuple[int, ...]:
        """``(n_1, ..., n_L)``."""
        if self.input_weight is not None:
            first = self.input_weight.shape[0]
        elif self.couplings:
            first = self.couplings[0].shape[1]
        elif self.biases is not None:
            first = jnp.shape(self.biases[0])[0]
        else:
            raise ValueError("a one-layer problem without U or biases has no known size")
        return (int(first),) + tuple(int(a.shape[0]) for a in self.couplings)

    @property
    def state_size(self) -> int:
        """Length of the flat per-sample state ``(s_1, ..., s_L)``."""
        return int(sum(self.sizes))

    @property
    def input_features(self) -> int:
        """``p``, the per-sample size of ``x``."""
        if self.input_weight is None:
            return self.sizes[0]
        return int(self.input_weight.shape[1])


# -- per-sample building blocks --------------------------------------------------------------


def split(sizes: Sequence[int], s: jax.Array) -> list[jax.Array]:
    """Split flat states (last axis ``sum(sizes)``) into per-layer arrays."""
    return list(jnp.split(s, np.cumsum(sizes)[:-1].tolist(), axis=-1))


def _terms(problem: DeepProblem, x: jax.Array) -> list[jax.Array]:
    """Per-layer constant terms ``(U x + b_1, b_2, ..., b_L)``; only the first depends on ``x``
    (one sample or a batch)."""
    c1 = x if problem.input_weight is None else x @ problem.input_weight.T
    if problem.biases is None:
        return [c1] + [jnp.zeros((n,), c1.dtype) for n in problem.sizes[1:]]
    return [c1 + problem.biases[0]] + list(problem.biases[1:])


def _update(activations, couplings, terms, states, gauss_seidel: bool) -> list[jax.Array]:
    """One Jacobi or Gauss--Seidel update of all layers (one sample)."""
    num_layers = len(states)
    new = list(states)
    for l in range(num_layers):
        pre = terms[l]
        if l > 0:
            below = new[l - 1] if gauss_seidel else states[l - 1]
            pre = pre + couplings[l - 1] @ below
        if l < num_layers - 1:
            pre = pre + couplings[l].T @ states[l + 1]
        new[l] = activations[l].prox(pre)
    return new


def _energy(activations, couplings, terms, states) -> jax.Array:
    """H for one sample."""
    value = 0.0
    for act, b, s in zip(activations, terms, states):
        value = value + jnp.sum(act.penalty(s)) + 0.5 * jnp.sum(s * s) - jnp.sum(b * s)
    for l, a in enumerate(couplings):
        value = value - jnp.vdot(states[l + 1], a @ states[l])
    return value


def _check_sample(problem: DeepProblem, s, x):
    if jnp.shape(s) != (problem.state_size,):
        raise ValueError(
            f"s must be one flat state of shape ({problem.state_size},) (layer sizes "
            f"{problem.sizes}); got {jnp.shape(s)}"
        )
    if jnp.shape(x) != (problem.input_features,):
        raise ValueError(
            f"x must be one sample of shape ({problem.input_features},); got {jnp.shape(x)}"
        )


def _map(problem: DeepProblem, s, x, gauss_seidel):
    _check_sample(problem, s, x)
    states = split(problem.sizes, s)
    new = _update(problem.activations, problem.couplings, _terms(problem, x), states, gauss_seidel)
    return jnp.concatenate(new)


def jacobi_map(problem: DeepProblem, s: jax.Array, x: jax.Array) -> jax.Array:
    r"""One Jacobi step :math:`s \mapsto \sigma(K s + b)` for one sample (flat ``s``, ``x`` of
    shape ``(p,)``): every layer updated from the old states."""
    return _map(problem, s, x, gauss_seidel=False)


def gauss_seidel_map(problem: DeepProblem, s: jax.Array, x: jax.Array) -> jax.Array:
    r"""One Gauss--Seidel sweep for one sample: layers :math:`1..L` in turn, layer :math:`l`
    using the new :math:`s_{l-1}` and the old :math:`s_{l+1}`; same fixed points as
    :func:`jacobi_map`."""
    return _map(problem, s, x, gauss_seidel=True)


def _batched_states(problem: DeepProblem, s, batch: int | None) -> list[jax.Array]:
    if isinstance(s, (list, tuple)):
        states = [jnp.asarray(v) for v in s]
        want = [(batch, n) for n in problem.sizes]
        got = [v.shape for v in states]
        if len(states) != problem.num_layers or (batch is not None and got != want):
            raise ValueError(
                f"states must be {problem.num_layers} arrays of shapes {want}; got {got}"
            )
        return states
    s = jnp.asarray(s)
    wrong_batch = batch is not None and s.ndim == 2 and s.shape[0] != batch
    if s.ndim != 2 or s.shape[1] != problem.state_size or wrong_batch:
        raise ValueError(
            f"s must have shape (batch, {problem.state_size}) (flat states, layer sizes "
            f"{problem.sizes}), or be a list of per-layer (batch, n_l) arrays; got {s.shape}"
        )
    return split(problem.sizes, s)


def _check_input(problem: DeepProblem, x) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"x must have a floating dtype, got {x.dtype}; convert it with x.astype(float)"
        )
    p = problem.input_features
    if x.ndim != 2 or x.shape[1] != p:
        hint = " (add a batch axis: x[None])" if x.shape == (p,) else ""
        raise ValueError(f"x must have shape (batch, {p}) for this problem; got {x.shape}{hint}")
    return x


def objective(problem: DeepProblem, s, x: jax.Array) -> jax.Array:
    """Per-sample H(s; x), shape ``(B,)``; ``s`` flat ``(B, sum n_l)`` or a list of ``(B, n_l)``.

    ``+inf`` where some ``s_l`` leaves the domain of its penalty (e.g. ``s < 0`` for relu).
    """
    x = _check_input(problem, x)
    states = _batched_states(problem, s, x.shape[0])
    missing = [a.name for a in problem.activations if a.penalty is None]
    if missing:
        raise ValueError(
            f"the objective needs the penalty f of every activation; {missing} have none "
            "(pass penalty= to optjax.activations.from_function)"
        )
    terms = _terms(problem, x)
    return _batch_energy(problem.activations, problem.couplings, terms[0], terms[1:], states)


def _batch_energy(activations, couplings, c1, rest, states) -> jax.Array:
    """H per sample: ``c1`` and ``states`` batched, ``couplings`` and ``rest`` shared."""
    one = lambda c, s: _energy(activations, couplings, [c] + list(rest), s)  # noqa: E731
    return jax.vmap(one)(c1, states)


# -- convexity -------------------------------------------------------------------------------


def coupling_norms(couplings: Sequence[jax.Array]) -> jax.Array:
    """Exact spectral norms ``(||A_1||, ..., ||A_{L-1}||)`` (shape ``(L-1,)``)."""
    if not couplings:
        return jnp.zeros((0,))
    return jnp.stack([linear_map.spectral_norm(a) for a in couplings])


def _layer_sums(norms: jax.Array) -> jax.Array:
    """``||A_{l-1}|| + ||A_l||`` for every layer (``A_0 = A_L = 0``)."""
    padded = jnp.concatenate([jnp.zeros((1,), norms.dtype), norms, jnp.zeros((1,), norms.dtype)])
    return padded[:-1] + padded[1:]


def convexity_margin(problem: DeepProblem) -> jax.Array:
    r""":math:`m = 1 - \max_l(\|A_{l-1}\| + \|A_l\|)` with exact norms (1 for one layer).

    :math:`m \ge 0` implies :math:`I - K \succeq 0` (H convex); :math:`m > 0` makes H
    :math:`m`-strongly convex and the Jacobi map an :math:`(1-m)`-contraction. It is a sufficient
    condition, independent of the activations' slopes."""
    norms = coupling_norms(problem.couplings)
    return 1.0 - jnp.max(_layer_sums(norms))


def normalize(couplings: Sequence[jax.Array], rho: float = 0.95) -> tuple[jax.Array, ...]:
    r"""Rescale the couplings so that :math:`\|A_{l-1}\| + \|A_l\| \le \rho` for every layer.

    With :math:`t_l = \min(1, \rho / (\|A_{l-1}\| + \|A_l\|))`, :math:`A_l` is multiplied by
    :math:`\min(t_l, t_{l+1})`, so layer :math:`l`'s sum becomes at most
    :math:`t_l (\|A_{l-1}\| + \|A_l\|) \le \rho`. Couplings that already satisfy the condition are
    unchanged (the map is idempotent), and a two-layer chain gets :math:`\|A_1\| \le \rho`.
    The norms are exact and treated as constants: no gradient flows through them.
    """
    require(
        isinstance(rho, (int, float)) and not isinstance(rho, bool) and 0 < rho <= 1,
        f"rho must be in (0, 1] (the bound on ||A_(l-1)|| + ||A_l||), got {rho!r}",
    )
    couplings = tuple(couplings)
    if not couplings:
        return ()
    norms = jax.lax.stop_gradient(coupling_norms(couplings))
    sums = _layer_sums(norms)
    t = jnp.minimum(1.0, rho / jnp.maximum(sums, jnp.finfo(sums.dtype).tiny))
    scale = jnp.minimum(t[:-1], t[1:])
    return tuple(a * scale[l].astype(a.dtype) for l, a in enumerate(couplings))


# -- the solve -------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeepSolveInfo:
    """Per-sample statistics of a deep solve (``margin`` is shared by the batch).

    Attributes:
      steps: solver iterations; evaluations: evaluations of the sweep map.
      residual: ``||s - S(s)||`` at the solver's last point ``s`` (S the sweep map); the
        returned point is ``S(s)``.
      objective: H at the returned point.
      distance_bound: ``||s - s*|| <= r_J / m`` at the returned point, ``r_J`` its Jacobi
        residual and ``m`` the margin (inf when ``m <= 0``).
      converged: residual <= tol, finite, and margin >= 0.
      nonfinite: NaN or Inf in the input, the state or the residual.
      status: :class:`optjax.Status` codes (``NONCONVEX`` when the margin is negative).
      margin: :func:`convexity_margin` of the problem solved.
      tol, max_steps, solver, sweep: the settings used (static).
    """

    steps: jax.Array
    evaluations: jax.Array
    residual: jax.Array
    objective: jax.Array
    distance_bound: jax.Array
    converged: jax.Array
    nonfinite: jax.Array
    status: jax.Array
    margin: jax.Array
    tol: float = dataclasses.field(metadata=dict(static=True))
    max_steps: int = dataclasses.field(metadata=dict(static=True))
    solver: str = dataclasses.field(metadata=dict(static=True))
    sweep: str = dataclasses.field(metadata=dict(static=True))

    def failures(self) -> list[str]:
        """One line per sample that did not converge (concrete values only; works with
        :func:`optjax.check`)."""
        return failure_lines(
            self.status, self.residual, self.steps, self.tol,
            nonconvex=f"convexity margin {float(self.margin):.4g} < 0: some layer has "
            "||A_(l-1)|| + ||A_l|| > 1; rescale with optjax.deep.normalize",
        )


@functools.lru_cache(maxsize=None)
def _make_map(activations, gauss_seidel: bool):
    """``map_fn(z, params, c1)`` for :func:`optjax.implicit.fixed_point` (one sample)."""

    def map_fn(z, params, c1):
        couplings, rest = params
        sizes = (c1.shape[0],) + tuple(a.shape[0] for a in couplings)
        terms = [c1] + list(rest)
        new = _update(activations, couplings, terms, split(sizes, z), gauss_seidel)
        return jnp.concatenate(new)

    return map_fn


def _resolve_backward(backward, options) -> _backward.Backward:
    mode = _backward.get(backward, **(options or {}))
    if mode.requires_symmetric:
        raise ConfigError(
            f"backward={mode.name!r} needs a symmetric system, but the Jacobian of the deep map "
            "(D K for Jacobi, D = diag(sigma')) is not symmetric; use backward='gmres' or "
            "'fixed_point'"
        )
    return mode


def equilibrium(
    problem: DeepProblem,
    x: jax.Array,
    *,
    sweep: str = "jacobi",
    solver="fixed_point",
    tol: float = 1e-5,
    max_steps: int = 200,
    backward="gmres",
    solver_options: dict | None = None,
    backward_options: dict | None = None,
    init=None,
    backward_probe: BackwardStats | None = None,
) -> tuple[list[jax.Array], DeepSolveInfo]:
    """Solve the deep chain for a batch; return ``([s_1, ..., s_L], info)``, ``s_l`` of shape
    ``(B, n_l)``, differentiable (implicitly) in the problem's arrays and ``x``.

    Args:
      problem: a :class:`DeepProblem`.
      x: inputs ``(B, p)``.
      sweep: ``"jacobi"`` or ``"gauss_seidel"`` (the map iterated; same fixed points and
        gradients).
      solver: an :mod:`optjax.solvers` name or instance. Plain iteration (``"fixed_point"``,
        the default) converges for both sweeps when the margin is positive; the others carry
        no guarantee here: Nesterov assumes a 1-smooth objective while ``||I - K|| <= 2 - m``
        (it can stall with the Jacobi sweep), and Halpern converges but slowly.
      tol: per-sample tolerance on the residual ``||s - S(s)||`` (absolute, l2, flat state).
      max_steps: iteration cap per sample.
      backward: ``"gmres"`` (default), ``"fixed_point"``, ``"phantom"`` or an
        :mod:`optjax.backward` instance (``"cg"`` is refused: the system is not symmetric).
      solver_options, backward_options: options for a solver or mode given by name.
      init: initial states (flat ``(B, sum n_l)`` or per layer); default 0. No gradient.
      backward_probe: see :func:`optjax.backward_probe`.

    Raises:
      NonconvexError: when, outside of tracing, the convexity margin is negative (under ``jit``
        the samples get ``Status.NONCONVEX`` and ``converged = False`` instead).
      ConfigError, ValueError, TypeError: bad options, shapes or dtypes.
    """
    if not isinstance(problem, DeepProblem):
        raise TypeError(f"problem must be an optjax.deep.DeepProblem, got {type(problem).__name__}")
    if sweep not in SWEEPS:
        raise ConfigError(f"sweep must be one of {SWEEPS}, got {sweep!r}")
    positive_int("equilibrium", "max_steps", max_steps)
    require(
        isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol > 0,
        f"tol must be a positive number, got {tol!r}",
    )
    solver_cfg = _solvers.get(solver, **(solver_options or {}))
    backward_cfg = _resolve_backward(backward, backward_options)
    x = _check_input(problem, x)
    batch = x.shape[0]
    dtype = jnp.result_type(x, *jax.tree_util.tree_leaves(problem))

    z0 = None
    if init is not None:
        z0 = jnp.concatenate(_batched_states(problem, init, batch), axis=1).astype(dtype)

    margin = _margin(jax.lax.stop_gradient(problem)).astype(dtype)
    if not isinstance(margin, jax.core.Tracer):
        if float(margin) < -_slack(dtype):
            norms = np.asarray(coupling_norms(problem.couplings))
            raise NonconvexError(
                f"convexity margin 1 - max_l(||A_(l-1)|| + ||A_l||) = {float(margin):.6g} < 0 "
                f"(coupling norms {np.round(norms, 6).tolist()}): H is not guaranteed convex, so "
                "no unique equilibrium is guaranteed. Rescale with "
                "optjax.deep.normalize(couplings, rho)."
            )
    probe = backward_probe if backward_probe is not None else BackwardStats.zeros(batch, dtype)
    return _solve(problem, x.astype(dtype), z0, margin, probe, sweep=sweep, solver=solver_cfg,
                  backward=backward_cfg, tol=float(tol), max_steps=int(max_steps))


def _slack(dtype) -> float:
    return 64 * float(jnp.finfo(dtype).eps)


_margin = jax.jit(convexity_margin)


@functools.partial(jax.jit, static_argnames=("sweep", "solver", "backward", "tol", "max_steps"))
def _solve(problem, x, z0, margin, probe, *, sweep, solver, backward, tol, max_steps):
    """The solve and its statistics, compiled once per configuration (also when called eagerly)."""
    batch, dtype = x.shape[0], x.dtype
    terms = [t.astype(dtype) for t in _terms(problem, x)]
    c1, rest = terms[0], tuple(terms[1:])
    couplings = tuple(a.astype(dtype) for a in problem.couplings)
    if z0 is None:
        z0 = jnp.zeros((batch, problem.state_size), dtype)
    anchor = jnp.zeros_like(z0) if solver.uses_anchor else None

    map_fn = _make_map(problem.activations, gauss_seidel=sweep == "gauss_seidel")
    z_star, stats = fixed_point(
        map_fn, solver, backward, tol, max_steps, (couplings, rest), c1, z0, anchor, probe
    )
    states = split(problem.sizes, z_star)

    # Certificate of the returned point (no gradient): H and the Jacobi-residual distance bound.
    frozen = jax.lax.stop_gradient
    jacobi = _make_map(problem.activations, gauss_seidel=False)
    zs = frozen(z_star)
    image = jax.vmap(jacobi, (0, None, 0))(zs, frozen((couplings, rest)), frozen(c1))
    r_jacobi = jnp.linalg.norm(zs - image, axis=1)
    positive = margin > 0
    distance = jnp.where(positive, r_jacobi / jnp.where(positive, margin, 1.0), jnp.inf)
    if all(a.penalty is not None for a in problem.activations):
        energy = _batch_energy(
            problem.activations, frozen(couplings), frozen(c1), frozen(rest), frozen(states)
        )
    else:
        energy = jnp.full((batch,), jnp.nan, dtype)

    nonfinite = ~(
        jnp.all(jnp.isfinite(x), axis=1) & jnp.all(jnp.isfinite(z_star), axis=1)
        & jnp.isfinite(stats.residual)
    )
    status = jnp.where(
        margin < -_slack(dtype),
        Status.NONCONVEX,
        jnp.where(nonfinite, Status.NONFINITE,
                  jnp.where(stats.residual <= tol, Status.CONVERGED, Status.MAX_STEPS)),
    ).astype(jnp.int32)
    info = DeepSolveInfo(
        steps=stats.steps,
        evaluations=stats.evaluations,
        residual=stats.residual,
        objective=energy,
        distance_bound=distance,
        converged=status == Status.CONVERGED,
        nonfinite=nonfinite,
        status=status,
        margin=margin,
        tol=tol,
        max_steps=max_steps,
        solver=solver.name,
        sweep=sweep,
    )
    return states, info
