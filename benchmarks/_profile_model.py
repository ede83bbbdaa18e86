"""The model of ``train_step_profile.py``, built from the core only: parameters, the stem, the
equilibrium problem with normalised weights, the head, the solve, the loss, the optimiser and the
compiled training step of a :class:`~_profile_designs.Design`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optjax
from optjax.engine import backward as _backward
from optjax.families import deep
from optjax.linalg.convolution import Conv2D, StridedConv2D
from _profile_designs import INPUT_SHAPE, NUM_CLASSES, STEPS_PER_EPOCH, Design  # on sys.path


# -- parameters ----------------------------------------------------------------------------------
def _conv_init(key, k, c_in, c_out):
    std = math.sqrt(2.0 / (k * k * c_in))
    return std * jax.random.normal(key, (k, k, c_in, c_out), jnp.float32)


def _unit(v):
    return v / (jnp.sqrt(jnp.sum(v * v)) + 1e-30)


def init(design: Design, key):
    """``(params, state)``: trainable arrays, and the power-iteration vectors (state)."""
    keys = iter(jax.random.split(key, 32))
    params, c_in = {"stem": []}, INPUT_SHAPE[2]
    for k, ch, _ in design.stem:
        params["stem"].append({"kernel": _conv_init(next(keys), k, c_in, ch),
                               "bias": jnp.zeros((ch,), jnp.float32)})
        c_in = ch
    if design.dense:
        d, hidden = design.channels
        n_in = int(np.prod(INPUT_SHAPE))
        params["eq"] = {"weight": jax.random.normal(next(keys), (hidden, d)) / math.sqrt(d)}
        params["injection"] = {"kernel": jax.random.normal(next(keys), (n_in, hidden))
                               / math.sqrt(n_in), "bias": jnp.zeros((hidden,), jnp.float32)}
        params["head"] = [{"w": jax.random.normal(next(keys), (d, NUM_CLASSES)) / math.sqrt(d),
                           "b": jnp.zeros((NUM_CLASSES,))}]
        return params, {"v": [_unit(jax.random.normal(next(keys), (d,)))]}
    h, w = design.spatial
    if design.family == "opteq":
        c, hidden = design.channels
        inj_out, eq_out = hidden, c
        params["eq"] = {"kernel": _conv_init(next(keys), design.kernel, c, hidden) / math.sqrt(2)}
        state = {"v": [_unit(jax.random.normal(next(keys), (h, w, c)))]}
    else:
        chans = design.channels
        inj_out = chans[0]
        params["eq"] = {"couplings": [], "biases": [jnp.zeros((ch,), jnp.float32)
                                                    for ch in chans[1:]]}
        state, size = {"v": []}, h
        for c_a, c_b, s in zip(chans[:-1], chans[1:], design.strides):
            params["eq"]["couplings"].append(_conv_init(next(keys), design.kernel, c_a, c_b))
            state["v"].append(_unit(jax.random.normal(next(keys), (size, size, c_a))))
            size //= s
        eq_out = chans[-1]
    k_u, s_u = design.injection
    params["injection"] = {"kernel": _conv_init(next(keys), k_u, c_in, inj_out),
                           "bias": jnp.zeros((inj_out,), jnp.float32)}
    final = h
    for s in design.strides:
        final //= s
    feat = (final // design.pool) ** 2 * eq_out
    dims = (feat, design.head, NUM_CLASSES) if design.head else (feat, NUM_CLASSES)
    params["head"] = [{"w": jax.random.normal(next(keys), (a, b)) / math.sqrt(a),
                       "b": jnp.zeros((b,))} for a, b in zip(dims[:-1], dims[1:])]
    return params, state


def param_count(params) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


# -- the model, in parts -------------------------------------------------------------------------
def _conv(x, kernel, stride):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def stem(design, params, x):
    """The injection ``U x + b`` (stem convolutions with relu, then the linear injection)."""
    if design.dense:
        p = params["injection"]
        return x.reshape(x.shape[0], -1) @ p["kernel"] + p["bias"]
    for (k, ch, s), p in zip(design.stem, params["stem"]):
        x = jax.nn.relu(_conv(x, p["kernel"], s) + p["bias"])
    p = params["injection"]
    return _conv(x, p["kernel"], design.injection[1]) + p["bias"]


def head(design, params, features):
    if design.pool > 1:
        b, h, w, c = features.shape
        p = design.pool
        features = features.reshape(b, h // p, p, w // p, p, c).mean(axis=(2, 4))
    out = features.reshape(features.shape[0], -1)
    for i, layer in enumerate(params["head"]):
        out = out @ layer["w"] + layer["b"]
        if i < len(params["head"]) - 1:
            out = jax.nn.relu(out)
    return out


def _power(op, v):
    """One power step on the frozen op; ``sigma = ||op v||`` differentiable in op (v fixed)."""
    frozen = jax.lax.stop_gradient(op)
    v = jax.lax.stop_gradient(_unit(frozen.transpose(frozen.apply(v))))
    return v, jnp.sqrt(jnp.sum(op.apply(v) ** 2))


def problem_of(design, params, state):
    """``(problem, new_state)``: the equilibrium problem with normalised weights."""
    if design.dense:
        raw = params["eq"]["weight"]
        frozen = jax.lax.stop_gradient(raw)
        v = jax.lax.stop_gradient(_unit(frozen.T @ (frozen @ state["v"][0])))
        weight = raw * jnp.minimum(1.0, design.rho / jnp.sqrt(jnp.sum((raw @ v) ** 2)))
        norm = None
        if design.norm.startswith("certified"):  # the exact norm, as landed: no gradient
            norm = jax.lax.stop_gradient(jnp.linalg.norm(weight, 2))
            weight = weight * jnp.minimum(1.0, design.rho / norm)
            norm = jnp.minimum(norm, design.rho)
        return optjax.OptEqProblem(weight, "relu", weight_norm=norm), {"v": [v]}
    h, w = design.spatial
    if design.family == "opteq":
        raw = Conv2D(params["eq"]["kernel"], (h, w))
        v, sigma = _power(raw, state["v"][0])
        weight = jax.tree_util.tree_map(lambda a: a * jnp.minimum(1.0, design.rho / sigma), raw)
        norm = None
        if design.norm in ("certified", "certified_at_norm"):  # exact rescale, no gradient
            # stopped at the weight; "certified_at_norm" stops the norm instead, as OptEqConv
            # does today, which makes value_and_grad run the eigendecompositions' derivatives
            norm = jax.lax.stop_gradient(weight).spectral_norm() if design.norm == "certified" \
                else jax.lax.stop_gradient(weight.spectral_norm())
            scale = jnp.minimum(1.0, design.rho / norm)
            weight = jax.tree_util.tree_map(lambda a: a * scale, weight)
            norm = norm * scale
        return optjax.OptEqProblem(weight, "relu", weight_norm=norm), {"v": [v]}
    couplings, size = [], h
    for kernel, s in zip(params["eq"]["couplings"], design.strides):
        couplings.append(StridedConv2D(kernel, (size, size), s) if s > 1 else
                         Conv2D(kernel, (size, size)))
        size //= s
    if design.norm == "certified":  # as optjax.nn.DeepOptEq: differentiable certified norms
        norms, new_v = deep.coupling_norms(couplings), state["v"]
    else:
        pairs = [_power(op, v) for op, v in zip(couplings, state["v"])]
        norms, new_v = jnp.stack([n for _, n in pairs]), [v for v, _ in pairs]
    scales = deep.normalization_scales(norms, design.rho)
    couplings = tuple(jax.tree_util.tree_map(lambda a, k=k: a * k, op)
                      for op, k in zip(couplings, scales))
    certified = jax.lax.stop_gradient(scales * norms) if design.norm == "certified" else None
    biases = (jnp.zeros((design.channels[0],)),) + tuple(params["eq"]["biases"])
    return deep.DeepProblem(couplings, None, biases, "relu", sweep=design.sweep,
                            coupling_norms=certified), {"v": new_v}


def _backward_mode(design):
    # on_failure="ignore": the backward statistics come back through the probe instead; the
    # warning's host callback can deadlock the CPU runtime's asynchronous dispatch (seen here
    # once per few thousand steps; jax-ml/jax#25861)
    options = {"max_steps": design.backward_steps, "on_failure": "ignore"}
    if design.backward_tol is not None:
        options["tol"] = design.backward_tol
    return _backward.get(design.backward, **options)


def solve(design, problem, c, probe=None, certify=None):
    certify = design.norm.startswith("certified") if certify is None else certify
    options = dict(solver=design.solver, tol=design.tol, max_steps=design.max_steps,
                   backward=_backward_mode(design), certify=certify, backward_probe=probe)
    if design.family == "opteq":
        return optjax.equilibrium(problem, c, **options)
    states, info = deep.equilibrium(problem, c, **options)
    return states[-1], info


def loss_fn(design, params, state, x, y, probe):
    c = stem(design, params, x)
    problem, new_state = problem_of(design, params, state)
    z, info = solve(design, problem, c, probe)
    logits = head(design, params, z)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (new_state, info, logits)


def make_optimizer(lr=3e-3, total=STEPS_PER_EPOCH, warmup=0.1):
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, int(warmup * total)),
                                                  max(2, total))
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-2))


def make_train_step(design, tx):
    grad_fn = jax.value_and_grad(lambda p, s, x, y, probe: loss_fn(design, p, s, x, y, probe),
                                 argnums=(0, 4), has_aux=True)

    @jax.jit
    def train_step(params, state, opt_state, x, y):
        probe = optjax.backward_probe(x.shape[0])
        (loss, (state, info, logits)), (grads, stats) = grad_fn(params, state, x, y, probe)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = dict(loss=loss, accuracy=jnp.mean(jnp.argmax(logits, -1) == y),
                       forward_steps=info.steps, backward_steps=stats.steps,
                       converged=info.converged, backward_converged=stats.converged)
        return params, state, opt_state, metrics

    return train_step
