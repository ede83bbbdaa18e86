r"""Certified robustness of the classifiers: a Lipschitz bound from the weights, a certified L2
radius per prediction, and an L2 PGD attack to compare with.

The bound composes the layers' own (docs/maths.md, section 9): the stem (a convolution; its
stride only subsamples, so its norm is at most the stride-1 convolution's) and the ReLUs are
:math:`\|\cdot\|`-Lipschitz with their spectral norms and 1, average pooling over
:math:`k \times k` windows has norm :math:`1/k`, the equilibrium layer has its family's bound
(:meth:`optjax.OptEqProblem.input_lipschitz` and the deep and monDEQ ones; a DEQ has none), and
the dense hidden layer its exact norm. For the head :math:`f_j = \langle h_j, \phi\rangle + b_j`
on features :math:`\phi` with Lipschitz constant :math:`L_\phi`, the margin
:math:`f_y - f_j` moves by at most :math:`\|h_y - h_j\| L_\phi \|\delta\|` under a perturbation
:math:`\delta` of the input, so the prediction :math:`y` cannot change within

.. math:: r(x) = \min_{j \ne y} \frac{f_y(x) - f_j(x)}{\|h_y - h_j\|\, L_\phi},

which is at least the usual :math:`(f_y - \max_{j\ne y} f_j) / (\sqrt 2 L)` with :math:`L` the
bound of the whole logit map (:math:`\|h_y - h_j\| \le \sqrt 2 \|h\|`). Every norm is certified:
exact for dense matrices, an FFT upper bound for zero-padded convolutions. Evaluation mode is
what is certified (the OptEq layers' weights corrected with the certified norm).
"""

from __future__ import annotations

from typing import Any, Sequence, cast

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.typing import ArrayLike

from optjax.config import ConfigError
from optjax.linalg import linear_map
from optjax.linalg.convolution import Conv2D
from optjax.nn.classifiers import ExplicitBlock, ImplicitClassifier
from optjax.nn.deq import DEQConv, DEQDense
from optjax.nn.mondeq import MonDEQConv

__all__ = ["feature_lipschitz", "lipschitz_bound", "certified_radius", "margin_offsets",
           "pgd_l2", "robust_accuracy"]


def _conv_norm(conv: nnx.Conv | nnx.Linear, grid: Sequence[int]) -> jax.Array:
    return Conv2D(conv.kernel.get_value(), tuple(grid)).spectral_norm()


# grid: the layer's (H, W), or None for a dense model
def _layer_bound(model: ImplicitClassifier, grid: Any) -> jax.Array | None:
    layer = model.layer
    if isinstance(layer, (DEQDense, DEQConv)):
        return None  # nothing bounds a DEQ's equilibrium
    if isinstance(layer, ExplicitBlock):
        if model.kind == "dense":
            return (linear_map.spectral_norm(layer.first.kernel.get_value())
                    * linear_map.spectral_norm(layer.second.kernel.get_value()))
        return _conv_norm(layer.first, grid) * _conv_norm(layer.second, grid)
    if isinstance(layer, MonDEQConv):
        return layer.input_lipschitz(tuple(grid))
    return layer.input_lipschitz()


def feature_lipschitz(model: ImplicitClassifier) -> jax.Array | None:
    r"""A certified bound :math:`L_\phi` on the Lipschitz constant (L2, per image) of the map
    from an image to the features the head reads; None for a DEQ (no bound)."""
    h, w, _ = model.input_shape
    if model.kind == "dense":
        return _layer_bound(model, None)
    stride = 2 if min(h, w) >= 16 else 1
    grid = (h // stride, w // stride)
    layer = _layer_bound(model, grid)
    if layer is None:
        return None
    stem = _conv_norm(cast(nnx.Conv, model.stem), (h, w))  # stride-1 norm >= the strided one's
    pool = 1.0 / model.pool
    hidden = linear_map.spectral_norm(cast(nnx.Linear, model.hidden).kernel.get_value())
    return hidden * pool * layer * stem


def _pair_norms(rows: jax.Array, y: jax.Array) -> jax.Array:
    """``||h_y - h_j||`` per image and class ``(B, classes)``, 0 at ``j = y`` with a zero (not
    NaN) gradient there."""
    d = rows[y][:, None, :] - rows[None, :, :]
    squared = jnp.sum(d * d, axis=-1)
    safe = jnp.maximum(squared, jnp.finfo(rows.dtype).tiny)
    return jnp.where(squared > 0, jnp.sqrt(safe), 0.0)


def _head(model: ImplicitClassifier) -> jax.Array:
    return model.head.kernel.get_value()  # (features, classes): column j is h_j


def lipschitz_bound(model: ImplicitClassifier) -> jax.Array | None:
    """A certified bound on the Lipschitz constant (L2) of ``image -> logits`` (the head's norm
    times :func:`feature_lipschitz`); None for a DEQ."""
    features = feature_lipschitz(model)
    if features is None:
        return None
    return linear_map.spectral_norm(_head(model)) * features


def certified_radius(model: ImplicitClassifier, x: jax.Array, y: jax.Array,
                     features: jax.Array | None = None) -> jax.Array:
    """Per image, the L2 radius within which the prediction provably stays ``y`` (the module
    docstring's :math:`r`); 0 where the prediction is already wrong; NaN for a DEQ (no bound).
    ``features``: :func:`feature_lipschitz`, when computed already. Call it on the model in
    evaluation mode (``model.eval()`` or ``nnx.view(model, use_running_average=True)``)."""
    if features is None:
        features = feature_lipschitz(model)
    logits = model(x)
    if features is None:
        return jnp.full(logits.shape[:1], jnp.nan, logits.dtype)
    head = _head(model)
    true = jnp.take_along_axis(logits, y[:, None], axis=1)
    margins = true - logits  # (B, classes), 0 at y
    rows = head.T  # (classes, features)
    pair = _pair_norms(rows, y)
    ratio = margins / jnp.maximum(pair * features, jnp.finfo(logits.dtype).tiny)
    ratio = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), jnp.inf, ratio)
    return jnp.maximum(jnp.min(ratio, axis=1), 0.0)


def margin_offsets(model: ImplicitClassifier, y: jax.Array, eps: float) -> jax.Array:
    r"""``(batch, classes)`` offsets :math:`\epsilon \|h_y - h_j\| L_\phi` (0 at ``y``): added
    to the logits of a loss (Tsuzuku, Sato and Sugiyama 2018, with the pairwise bound), they
    ask for margins that certify radius ``eps``; differentiable in the weights through the
    certified norms. A DEQ has no bound: ConfigError."""
    features = feature_lipschitz(model)
    if features is None:
        raise ConfigError("a Lipschitz margin needs a Lipschitz bound, which a DEQ does not "
                          "have; use an OptEq, deep OptEq, monDEQ or explicit model")
    rows = _head(model).T
    return eps * features * _pair_norms(rows, y)


def pgd_l2(model: ImplicitClassifier, x: jax.Array, y: jax.Array, eps: ArrayLike, *,
           steps: int = 100, step_size: ArrayLike | None = None) -> jax.Array:
    r"""An L2 projected-gradient attack on the cross-entropy: :math:`\delta \leftarrow
    \Pi_{\|\delta\| \le \epsilon}(\delta + \alpha\, g / \|g\|)` per image from
    :math:`\delta = 0`, ``steps`` steps of :math:`\alpha = 2.5\epsilon/\text{steps}` by default
    (Madry et al. 2018); returns the perturbed images (gradients through the equilibrium are
    the implicit ones). ``eps`` (and ``step_size``): a number, or one per image."""
    axes = tuple(range(1, x.ndim))
    per_image = (-1,) + (1,) * (x.ndim - 1)
    eps = jnp.reshape(jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1]), per_image)
    alpha = 2.5 * eps / steps if step_size is None else jnp.reshape(
        jnp.broadcast_to(jnp.asarray(step_size, x.dtype), x.shape[:1]), per_image)
    graphdef, state = nnx.split(model)

    # a copy of the model: its statistics may change under this trace
    def loss(x_adv: jax.Array) -> jax.Array:
        logits = nnx.merge(graphdef, state, copy=True)(x_adv)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

    grad = jax.grad(loss)

    def project(delta: jax.Array) -> jax.Array:
        norm = jnp.sqrt(jnp.sum(delta * delta, axis=axes, keepdims=True))
        return delta * jnp.minimum(1.0, eps / jnp.maximum(norm, 1e-30))

    def step(_: Any, delta: jax.Array) -> jax.Array:
        g = grad(x + delta)
        g = g / jnp.maximum(jnp.sqrt(jnp.sum(g * g, axis=axes, keepdims=True)), 1e-30)
        return project(delta + alpha * g)

    # A loop, not a Python unroll: one step is traced and compiled, whatever ``steps`` is.
    return x + jax.lax.fori_loop(0, steps, step, jnp.zeros_like(x))


def robust_accuracy(model: ImplicitClassifier, x: jax.Array, y: jax.Array,
                    epsilons: Sequence[float], *, pgd_steps: int = 100,
                    batch_size: int = 256) -> dict[str, Any]:
    """Clean accuracy, and per ``eps`` the certified accuracy (correct with a certified radius
    ``>= eps``) and the empirical robust accuracy under :func:`pgd_l2`, on ``(x, y)``.

    Returns ``{"clean": float, "certified": {eps: float or None}, "pgd": {eps: float},
    "radius_median": float or None, "lipschitz": float or None}`` (None: no bound, a DEQ).
    The certified accuracy never exceeds the PGD one (a certified prediction cannot be
    attacked), and both never exceed the clean one."""
    if any(hasattr(m, "use_running_average") for _, m in nnx.iter_modules(model)):
        # nnx.view refuses a key no module has (the explicit CNN has no mode-dependent layer)
        model = nnx.view(model, use_running_average=True)
    features = feature_lipschitz(model)
    forward = nnx.jit(lambda m, x: m(x))
    radius = nnx.jit(lambda m, x, y: certified_radius(m, x, y, features))
    attack = nnx.jit(lambda m, x, y, e: pgd_l2(m, x, y, e, steps=pgd_steps))  # one compile
    hits: list[jax.Array] = []  # per batch
    radius_batches: list[jax.Array] = []
    robust: dict[float, list[jax.Array]] = {eps: [] for eps in epsilons}
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        hits.append(jnp.argmax(forward(model, xb), axis=1) == yb)
        radius_batches.append(radius(model, xb, yb))
        for eps in epsilons:
            attacked = attack(model, xb, yb, jnp.asarray(eps, xb.dtype))
            robust[eps].append(jnp.argmax(forward(model, attacked), axis=1) == yb)
    correct = jnp.concatenate(hits)
    radii = jnp.concatenate(radius_batches)
    bound = None if features is None else float(features * linear_map.spectral_norm(_head(model)))
    certified = {eps: (None if features is None else
                       float(jnp.mean(correct & (radii >= eps)))) for eps in epsilons}
    return {"clean": float(jnp.mean(correct)), "certified": certified,
            "pgd": {eps: float(jnp.mean(jnp.concatenate(v))) for eps, v in robust.items()},
            "radius_median": None if features is None else float(jnp.median(radii)),
            "lipschitz": bound}
