"""The measurements of ``train_step_profile.py``: the data, the warm-up, the profile of one
training step in parts (``--design``), the table of designs timed round robin (``--table``) and
the training loop with certified test solves (``--train``).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optjax.families import deep
from optjax.linalg import linear_map
from _profile_designs import (BATCH, DATA_DIR, DESIGNS, INPUT_SHAPE,  # benchmarks/ is on sys.path
                              NUM_CLASSES, STEPS_PER_EPOCH)
from _profile_model import (_backward_mode, head, init, make_optimizer, make_train_step,
                            param_count, problem_of, solve, stem)


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
