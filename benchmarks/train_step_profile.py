"""Profile of one compiled training step of convolutional OptEq classifiers, and designs that
train at CPU speed, side by side in one run.

    .venv/bin/python benchmarks/train_step_profile.py                  # profile of "current"
    .venv/bin/python benchmarks/train_step_profile.py --design opteq14_certified
    .venv/bin/python benchmarks/train_step_profile.py --table          # every design, one table
    .venv/bin/python benchmarks/train_step_profile.py --train deep14_7_certified --epochs 1
    .venv/bin/python benchmarks/train_step_profile.py --table dense_before,dense_after

``dense_before`` / ``dense_after`` are the dense OptEq classifier of the Fashion-MNIST dense
comparison (W of 138 x 69 on a dense injection of the flattened image) with the landed and the
current training defaults.

A design is ``image -> stem (plain strided convolutions, relu) -> injection (a linear
convolution) -> equilibrium -> average pooling -> dense head``, built from the core only:
:class:`optjax.OptEqProblem` with a :class:`~optjax.convolution.Conv2D` weight (``W`` kept at
``||W|| <= rho`` by one power-iteration step per call, as the layers do in training, and, with
``certify``, rescaled by the certified FFT norm), or :class:`optjax.deep.DeepProblem` with
:class:`~optjax.convolution.StridedConv2D` / ``Conv2D`` couplings (normalised by
:func:`optjax.deep.normalize` with their certified norms, or power-iteration estimates).
``current_as_is`` is today's ``ImplicitClassifier("opteq", "conv", width=32)`` trained with the
:class:`~optjax.train.config.TrainConfig` defaults (nesterov, tol 1e-3, 50 steps, GMRES 30
steps, certify; the norm's gradient stopped at the norm, as ``OptEqConv`` does); ``current`` stops
it at the weight. Every design runs in float32 with one BLAS thread, as the ``optjax`` command.

**Profile** (``--design``): after ``--warm-steps`` training steps (real Fashion-MNIST if its IDX
files are in ``/usr/share/datasets/fashion-mnist``, else random data of that shape), the median
time of one compiled training step (batch 64) and of compiled sub-functions at the same point,
each as a ratio to one evaluation of T (the batched equilibrium map; for a deep chain, one
sweep): the forward solve (no certificate), the norm (power step; certified norm when the design
certifies) and the certificate, the backward solve ``(I - J^T) v = g``, the parameter VJP
``(dS/dtheta)^T v``, the stem and head (forward and backward) and the optimiser update; with the
forward and backward step counts. The parts are timed separately, so their sum differs from the
step by what XLA fuses or overlaps.

**Table** (``--table``): every design's parameters, step time, its ratio to ``current``'s
(measured in this run), forward / backward steps (mean / max over the batch) and the epoch time
(937 steps of 64) estimated from the step time. Times are wall-clock on a shared machine:
compare ratios, never absolute times across runs.

**Train** (``--train``): the full training loop (AdamW, warm-up then cosine decay, gradient clip
1, learning rate ``--lr``) for ``--epochs`` epochs on the real data; prints the epoch time, then
the test accuracy with certified solves (the exact FFT norms, as the layers in evaluation mode).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optjax
from optjax import backward as _backward
from optjax import deep, linear_map
from optjax._lapack import single_threaded
from optjax.convolution import Conv2D, StridedConv2D

INPUT_SHAPE, NUM_CLASSES, BATCH = (28, 28, 1), 10, 64
STEPS_PER_EPOCH = 60000 // BATCH  # 937
DATA_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


# -- designs -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Design:
    """A convolutional classifier built from the core (see the module docstring).

    ``stem``: ``(kernel, channels, stride)`` convolutions with relu ('SAME' padding).
    ``injection``: ``(kernel, stride)`` of the linear convolution giving ``U x + b``.
    ``family``: ``"opteq"`` (``channels = (c, hidden)``: z has c channels, W maps c -> hidden) or
    ``"deep"`` (``channels``: per layer; ``strides``: per coupling, 2 halves the grid).
    ``pool``: average pooling before the head; ``head``: hidden width of a 2-layer head (0: one
    dense layer). ``norm``: ``"power"`` (one power step per call, no certified norm) or
    ``"certified"`` (the FFT norm each step: rescaled to ``||W|| <= rho`` exactly, bounds;
    ``"certified_at_norm"``: the same with the gradient stopped at the norm, not the weight)."""

    name: str
    family: str
    channels: tuple
    stem: tuple = ()
    injection: tuple = (3, 1)
    strides: tuple = ()
    kernel: int = 3
    pool: int = 2
    head: int = 0
    solver: str = "nesterov"
    tol: float = 1e-3
    max_steps: int = 50
    backward: str = "gmres"
    backward_tol: float | None = None
    backward_steps: int = 30
    norm: str = "power"
    sweep: str = "gauss_seidel"
    rho: float = 0.95
    dense: bool = False  # OptEqDense on the flattened image: channels = (features, hidden)
    note: str = ""

    @property
    def spatial(self) -> tuple[int, int]:
        """The equilibrium's (first layer's) grid."""
        size = INPUT_SHAPE[0]
        for _, _, s in self.stem:
            size //= s
        size //= self.injection[1]
        return (size, size)


_CG = dict(backward="cg", backward_tol=1e-2, backward_steps=20)
# dense OptEq as in the Fashion-MNIST dense benchmark (width 69, hidden 138): as landed
# (Nesterov, GMRES capped at 30, the exact norm every step) and with this work's defaults
# (safeguarded Anderson, CG, the power-iteration norm in training)
_DENSE = dict(dense=True, pool=1, channels=(69, 138))
_FP = dict(solver="fixed_point", backward="fixed_point", backward_tol=1e-2, backward_steps=30)
_STEM = ((3, 32, 2),)  # 28x28x1 -> 14x14x32
DESIGNS = {d.name: d for d in (
    Design("current_as_is", "opteq", (32, 64), norm="certified_at_norm",
           note="today's classifier: 28x28 equilibrium, TrainConfig defaults"),
    Design("current", "opteq", (32, 64), norm="certified",
           note="today's classifier, the norm's gradient stopped at the weight"),
    Design("current_power", "opteq", (32, 64), note="current, no certified norm per step"),
    Design("current_cg", "opteq", (32, 64), **_CG, note="current, power norm, CG to 1e-2"),
    Design("opteq14_gmres", "opteq", (32, 64), stem=_STEM, head=32,
           note="strided stem to 14x14, GMRES (default tol)"),
    Design("opteq14", "opteq", (32, 64), stem=_STEM, head=32, **_CG,
           note="strided stem to 14x14, CG to 1e-2"),
    Design("opteq14_certified", "opteq", (32, 64), stem=_STEM, head=32, norm="certified", **_CG,
           note="recommended 'opteq' conv: opteq14, certified every step"),
    Design("opteq14_tol1e-2", "opteq", (32, 64), stem=_STEM, head=32, tol=1e-2, **_CG),
    Design("opteq14_anderson", "opteq", (32, 64), stem=_STEM, head=32, solver="anderson", **_CG),
    Design("opteq14_w48", "opteq", (48, 96), stem=_STEM, **_CG),
    Design("opteq7", "opteq", (48, 96), stem=((3, 32, 2), (3, 48, 2)), pool=1, **_CG,
           note="equilibrium at 7x7"),
    Design("deep14_7_certified", "deep", (32, 64, 64), stem=_STEM, strides=(2, 1), pool=1,
           norm="certified", **_FP, note="recommended 'deep_opteq' conv: 14x14x32 -> 7x7x64 "
           "-> 7x7x64, differentiable certified FFT norms (as DeepOptEq)"),
    Design("deep14_7", "deep", (32, 64, 64), stem=_STEM, strides=(2, 1), pool=1, **_FP,
           note="deep14_7_certified with power-iteration norms"),
    Design("deep14_7_gmres", "deep", (32, 64, 64), stem=_STEM, strides=(2, 1), pool=1,
           solver="fixed_point", backward="gmres", backward_tol=1e-2, backward_steps=30),
    Design("deep14_7_jacobi", "deep", (32, 64, 64), stem=_STEM, strides=(2, 1), pool=1,
           sweep="jacobi", **_FP),
    Design("deep14_7_2", "deep", (32, 64), stem=_STEM, strides=(2,), pool=1, **_FP,
           note="two layers: 14x14x32 -> 7x7x64"),
    Design("dense_before", "opteq", **_DENSE, norm="certified_at_norm",
           note="dense OptEq (118,552 parameters) with the landed training defaults"),
    Design("dense_after", "opteq", **_DENSE, solver="safeguarded_anderson", **_CG,
           note="dense OptEq with this work's training defaults"),
)}


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


# -- data ----------------------------------------------------------------------------------------
def load_data(seed=0):
    """Standardised Fashion-MNIST if installed, else random data of its shape; and its name."""
    if DATA_DIR.is_dir():
        from optjax.data import load

        data = load("fashion-mnist", DATA_DIR).standardized()
        return (data.x_train, data.y_train, data.x_test, data.y_test), "fashion-mnist"
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4096,) + INPUT_SHAPE).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, size=4096).astype(np.int32)
    return (x, y, x[:1024], y[:1024]), "random"


def batches(x, y, seed, batch=BATCH):
    order = np.random.default_rng(seed).permutation(len(x))
    for i in range(len(x) // batch):
        idx = order[i * batch:(i + 1) * batch]
        yield jnp.asarray(x[idx]), jnp.asarray(y[idx])


def warm_up(design, data, steps, seed=0, lr=3e-3):
    """Params and state after ``steps`` training steps (the solves are easier at init)."""
    params, state = init(design, jax.random.PRNGKey(seed))
    tx = make_optimizer(lr)
    opt_state = tx.init(params)
    step = make_train_step(design, tx)
    metrics = None
    for i, (x, y) in enumerate(batches(data[0], data[1], seed)):
        if i >= steps:
            break
        params, state, opt_state, metrics = step(params, state, opt_state, x, y)
    return params, state, tx, opt_state, step, metrics


# -- the profile ---------------------------------------------------------------------------------
def _stats(v):
    v = np.asarray(v, float)
    return f"{v.mean():.1f} / {v.max():.0f}"


def profile(design, data, *, warm_steps, reps, seed=0):
    params, state, tx, opt_state, train_step, _ = warm_up(design, data, warm_steps, seed)
    x, y = next(batches(data[0], data[1], seed + 1))
    problem, _ = problem_of(design, params, state)
    c = stem(design, params, x)
    map_fn = problem.equilibrium_map()
    theta = problem.parameters()

    # the point and the loss gradient there
    if design.family == "opteq":
        z_head, info = solve(design, problem, c, certify=False)
        flat = z_head
    else:
        states, info = deep.equilibrium(problem, c, solver=design.solver, tol=design.tol,
                                        max_steps=design.max_steps, certify=False)
        z_head = states[-1]
        flat = jnp.concatenate([s.reshape(x.shape[0], -1) for s in states], axis=1)
    data_c = problem.sample_data(c)
    g_head = jax.grad(lambda z: optax.softmax_cross_entropy_with_integer_labels(
        head(design, params, z), y).mean())(z_head)
    g = g_head if design.family == "opteq" else jnp.concatenate(
        [jnp.zeros((x.shape[0], flat.shape[1] - g_head[0].size)),
         g_head.reshape(x.shape[0], -1)], axis=1)
    mode = _backward_mode(design)

    parts = {}
    parts["T (one evaluation)"] = jax.jit(
        lambda z, p, d: jax.vmap(map_fn, in_axes=(0, None, 0))(z, p, d)), (flat, theta, data_c)
    parts["forward solve"] = jax.jit(
        lambda p, c: solve(design, p, c, certify=False)[0]), (problem, c)
    parts["norm (power step)"] = jax.jit(
        lambda prm, s: problem_of(dataclasses.replace(design, norm="power"), prm, s)[0]), \
        (params, state)
    if design.norm.startswith("certified"):
        if design.family == "opteq":
            parts["certified norm"] = jax.jit(linear_map.spectral_norm), (problem.weight,)
        else:
            parts["certified norms"] = jax.jit(deep.coupling_norms), (problem.couplings,)
        conditions = problem.conditions(certify=True)
        parts["certificate"] = jax.jit(
            lambda z, p, d: problem.certificate(z, z, jnp.zeros(z.shape[0]), p, d, conditions)), \
            (flat, theta, data_c)

    def backward_solve(z, p, d, g):
        def one(z_i, d_i, g_i):
            return mode.solve(map_fn.jacobian_transpose(z_i, p, d_i), g_i)
        result = jax.vmap(one)(z, d, g)
        return result.solution, result.steps

    parts["backward solve"] = jax.jit(backward_solve), (flat, theta, data_c, g)
    v, bwd_steps = parts["backward solve"][0](*parts["backward solve"][1])

    def param_vjp(p, d, v):
        return jax.vjp(lambda p, d: jax.vmap(map_fn, in_axes=(0, None, 0))(flat, p, d), p, d)[1](v)

    parts["parameter VJP"] = jax.jit(param_vjp), (theta, data_c, v)

    def explicit(prm, z):  # stem and head, forward and backward, the equilibrium held fixed
        c, stem_vjp = jax.vjp(lambda q: stem(design, q, x), prm)
        loss, grads = jax.value_and_grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(
            head(design, q, z), y).mean())(prm)
        return loss, stem_vjp(c)[0], grads

    parts["stem and head (fwd + bwd)"] = jax.jit(explicit), (params, z_head)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    parts["optimiser update"] = jax.jit(
        lambda gr, st, prm: optax.apply_updates(prm, tx.update(gr, st, prm)[0])), \
        (grads, opt_state, params)
    parts["training step"] = (lambda *a: train_step(*a)[0]), (params, state, opt_state, x, y)

    # round robin: every repetition times every part once, so load drifts hit all alike
    for fn, args in parts.values():
        jax.block_until_ready(fn(*args))
    samples = {name: [] for name in parts}
    for _ in range(reps):
        for name, (fn, args) in parts.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            samples[name].append(time.perf_counter() - t0)
    times = {name: statistics.median(v) for name, v in samples.items()}
    unit = times["T (one evaluation)"]
    _, _, _, metrics = train_step(params, state, opt_state, x, y)
    return dict(design=design, params=param_count(params), times=times, unit=unit,
                forward_steps=np.asarray(info.steps), backward_steps=np.asarray(bwd_steps),
                step_forward_steps=np.asarray(metrics["forward_steps"]),
                step_backward_steps=np.asarray(metrics["backward_steps"]))


def print_profile(result):
    d = result["design"]
    print(f"\n### {d.name}: {d.note or d.family}\n")
    print(f"{result['params']:,} parameters; equilibrium "
          f"{'dense' if d.dense else 'grid ' + str(d.spatial)}, channels "
          f"{d.channels}; solver {d.solver} tol {d.tol:g} (cap {d.max_steps}); backward "
          f"{d.backward} tol {d.backward_tol or 'default'} (cap {d.backward_steps}); norm {d.norm}")
    print(f"forward steps (mean / max): {_stats(result['forward_steps'])}; backward steps: "
          f"{_stats(result['backward_steps'])}\n")
    print("| part | ms | / T |")
    print("|---|---|---|")
    unit = result["unit"]
    total = 0.0
    for name, t in result["times"].items():
        if name != "training step" and name != "T (one evaluation)":
            total += t
        print(f"| {name} | {1e3 * t:.1f} | {t / unit:.1f} |")
    print(f"| (sum of the parts) | {1e3 * total:.1f} | {total / unit:.1f} |")


def table(names, data, *, warm_steps, reps):
    """Every design warmed up, then timed round robin (one step of each per repetition)."""
    runs = {}
    for name in names:
        design = DESIGNS[name]
        params, state, _, opt_state, step, _ = warm_up(design, data, warm_steps)
        runs[name] = dict(design=design, carry=(params, state, opt_state), step=step, times=[],
                          fwd=[], bwd=[], count=param_count(params))
        print(f"  {name}: warmed up", file=sys.stderr, flush=True)
    it = batches(data[0], data[1], 1)
    for _ in range(reps):
        x, y = next(it)
        for run in runs.values():
            t0 = time.perf_counter()
            *carry, metrics = run["step"](*run["carry"], x, y)
            jax.block_until_ready(metrics)
            run["times"].append(time.perf_counter() - t0)
            run["carry"] = tuple(carry)
            run["fwd"].append(np.asarray(metrics["forward_steps"]))
            run["bwd"].append(np.asarray(metrics["backward_steps"]))
    first = "current" if "current" in runs else next(iter(runs))  # the ratios' reference
    base = 1e3 * statistics.median(runs[first]["times"])
    print(f"\n| design | params | ms/step | / {first} | fwd steps (mean / max) | "
          "bwd steps (mean / max) | epoch (937 steps) |")
    print("|---|---|---|---|---|---|---|")
    for name, run in runs.items():
        ms = 1e3 * statistics.median(run["times"])
        ratio = f"{ms / base:.2f}" if base else "-"
        print(f"| {name} | {run['count']:,} | {ms:.{1 if ms < 10 else 0}f} | {ratio} | "
              f"{_stats(np.concatenate(run['fwd']))} | {_stats(np.concatenate(run['bwd']))} | "
              f"{ms * STEPS_PER_EPOCH / 6e4:.1f} min |")


def train(name, data, *, epochs, lr, seed=0):
    design = DESIGNS[name]
    params, state = init(design, jax.random.PRNGKey(seed))
    total = epochs * (len(data[0]) // BATCH)
    tx = make_optimizer(lr, total)
    opt_state = tx.init(params)
    step = make_train_step(design, tx)
    def evaluate(p, s, x):  # certified: the exact (FFT) norms rescale W and bound every sample
        z, info = solve(dataclasses.replace(design, norm="certified"),
                        problem_of(dataclasses.replace(design, norm="certified"), p, s)[0],
                        stem(design, p, x))
        return head(design, p, z), info.converged, info.steps, info.certificate.distance_bound

    evaluate = jax.jit(evaluate)
    print(f"{name}: {param_count(params):,} parameters, {total} steps", flush=True)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        fwd, bwd, losses = [], [], []
        for i, (x, y) in enumerate(batches(data[0], data[1], seed + epoch)):
            params, state, opt_state, m = step(params, state, opt_state, x, y)
            if i % 50 == 0:
                fwd.append(float(np.mean(m["forward_steps"])))
                bwd.append(float(np.mean(m["backward_steps"])))
                losses.append(float(m["loss"]))
                print(f"  step {i}: loss {losses[-1]:.3f}, fwd {fwd[-1]:.1f}, bwd {bwd[-1]:.1f}, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
        jax.block_until_ready(params)
        epoch_time = time.perf_counter() - t0
        correct, converged, steps, bounds = 0, [], [], []
        xt, yt = data[2], data[3]
        for i in range(0, len(xt), 500):
            logits, ok, n, bound = evaluate(params, state, jnp.asarray(xt[i:i + 500]))
            correct += int(jnp.sum(jnp.argmax(logits, -1) == jnp.asarray(yt[i:i + 500])))
            converged.append(np.asarray(ok))
            steps.append(np.asarray(n))
            bounds.append(np.asarray(bound))
        steps, bounds = np.concatenate(steps), np.concatenate(bounds)
        print(f"epoch {epoch + 1}: {epoch_time:.0f} s (includes compilation), test accuracy "
              f"{correct / len(xt):.4f}; training forward / backward steps (mean of every 50th "
              f"step) {np.mean(fwd):.1f} / {np.mean(bwd):.1f}; test: certified solves "
              f"{np.mean(np.concatenate(converged)):.4f}, forward steps {steps.mean():.1f} / "
              f"{steps.max()}, distance bound median {np.median(bounds):.2g} max "
              f"{bounds.max():.2g}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--design", default="current", choices=sorted(DESIGNS))
    parser.add_argument("--table", nargs="?", const="all",
                        help="comma-separated design names, or all")
    parser.add_argument("--train", default=None, choices=sorted(DESIGNS))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warm-steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    with single_threaded():  # as the optjax command: one BLAS thread for the LAPACK calls
        run(args)


def run(args):
    data, source = load_data()
    print(f"optjax {optjax.__version__}, jax {jax.__version__} on {jax.default_backend()}, "
          f"{jax.device_count()} device(s); data: {source}; batch {BATCH}, float32")
    if args.train:
        train(args.train, data, epochs=args.epochs, lr=args.lr)
    elif args.table:
        names = list(DESIGNS) if args.table == "all" else args.table.split(",")
        table(names, data, warm_steps=args.warm_steps, reps=args.reps)
    else:
        print_profile(profile(DESIGNS[args.design], data, warm_steps=args.warm_steps,
                              reps=args.reps))


if __name__ == "__main__":
    main()
