"""optjax layers inside Flax's own patterns, as the Flax NNX documentation writes them.

For each layer (OptEqDense, OptEqConv, DeepOptEq, DEQDense, MonDEQDense), in a model with BatchNorm
and Dropout and in an ``nnx.Sequential`` without either (the latter for OptEqDense by default, for
every layer with ``--run-slow``): the MNIST tutorial's training loop (``nnx.Optimizer(...,
wrt=nnx.Param)`` with ``optax.chain`` and clipping, ``nnx.MultiMetric``, ``nnx.jit`` train and eval
steps, ``nnx.view`` for the modes) compiles the train step once per batch shape and never again;
evaluation mode reaches the layers through ``nnx.view`` and ``model.eval()``; orbax checkpoints
restore into ``nnx.eval_shape`` and through the pure-dict path with identical outputs; an
``nnx.vmap`` ensemble of two models trains and matches its members run one by one. Float32 and tiny
models on scikit-learn's 8 x 8 digits."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from sklearn.datasets import load_digits

from optjax.nn import DEQDense, DeepOptEq, MonDEQDense, OptEqConv, OptEqDense, SolveStat

WIDTH = 8  # features of every equilibrium state; channels of the convolutional one
CHANNELS = 4
LAYERS = ("opteq_dense", "opteq_conv", "deep_opteq", "deq_dense", "mondeq_dense")
# Layers whose solve is certified in evaluation mode (finite bounds); a DEQ certifies nothing.
CERTIFIED = {"opteq_dense", "opteq_conv", "deep_opteq", "mondeq_dense"}
TRAIN_SIZES = (32, 32, 24, 32, 24)  # two batch sizes, interleaved
EVAL_SIZE = 40


def _equilibrium_layer(name, in_size, rngs):
    # The solvers cheapest to compile (plain iteration forward, a phantom gradient backward):
    # what is tested here is the Flax plumbing, and compilation dominates the run time.
    cheap = dict(solver="fixed_point", backward="phantom", tol=1e-3)
    if name == "opteq_dense":
        return OptEqDense(in_size, WIDTH, rho=0.8, max_steps=50, rngs=rngs, **cheap)
    if name == "opteq_conv":
        return OptEqConv(in_size, CHANNELS, (8, 8), rho=0.8, max_steps=50, rngs=rngs, **cheap)
    if name == "deep_opteq":
        return DeepOptEq(in_size, (WIDTH, WIDTH), max_steps=50, rngs=rngs, **cheap)
    if name == "deq_dense":
        return DEQDense(in_size, WIDTH, activation="tanh", rngs=rngs, **cheap)
    return MonDEQDense(in_size, WIDTH, rngs=rngs, **cheap)


def _flatten(x):
    return x.reshape(x.shape[0], -1)


class TutorialModel(nnx.Module):
    """The tutorial's shape: stem, BatchNorm, relu, Dropout, then the equilibrium layer and a
    linear head. Dense layers see the 64 pixels, the convolutional one the 8 x 8 image."""

    def __init__(self, name, *, rngs):
        self.conv = name == "opteq_conv"
        stem_out = CHANNELS if self.conv else WIDTH
        self.stem = (nnx.Conv(1, CHANNELS, (3, 3), rngs=rngs) if self.conv
                     else nnx.Linear(64, WIDTH, rngs=rngs))
        self.batch_norm = nnx.BatchNorm(stem_out, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.equilibrium = _equilibrium_layer(name, stem_out, rngs)
        self.head = nnx.Linear(16 * CHANNELS if self.conv else WIDTH, 10, rngs=rngs)

    def __call__(self, x):
        x = self.dropout(nnx.relu(self.batch_norm(self.stem(x))))
        x = self.equilibrium(x)
        if self.conv:
            x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
        return self.head(_flatten(x))


def _plain_model(name, *, rngs):
    """The equilibrium layer straight on the pixels and a head: no BatchNorm, no Dropout."""
    if name == "opteq_conv":
        return nnx.Sequential(_equilibrium_layer(name, 1, rngs), _flatten,
                              nnx.Linear(64 * CHANNELS, 10, rngs=rngs))
    return nnx.Sequential(_equilibrium_layer(name, 64, rngs), nnx.Linear(WIDTH, 10, rngs=rngs))


def _build(kind, name, seed):
    rngs = nnx.Rngs(seed)
    return TutorialModel(name, rngs=rngs) if kind == "batchnorm" else _plain_model(name, rngs=rngs)


def _equilibrium_of(model):
    return model.equilibrium if isinstance(model, TutorialModel) else model.layers[0]


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[..., None]
    return images, data.target.astype(np.int32)


def _batch(digits, name, start, size):
    images, labels = digits
    x = images[start:start + size]
    return {"image": jnp.asarray(x if name == "opteq_conv" else x.reshape(size, -1)),
            "label": jnp.asarray(labels[start:start + size])}


def loss_fn(model, batch):
    logits = model(batch["image"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, logits


def _tutorial_run(kind, name, digits):
    """The tutorial's loop; returns what the tests look at."""
    model = _build(kind, name, seed=0)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))
    traces = collections.Counter()  # Python side effects run once per trace

    @nnx.jit
    def train_step(model, optimizer, metrics, batch):
        traces["train"] += 1
        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
        metrics.update(loss=loss, logits=logits, labels=batch["label"])
        optimizer.update(model, grads)

    @nnx.jit
    def eval_step(model, metrics, batch):
        traces["eval"] += 1
        loss, logits = loss_fn(model, batch)
        metrics.update(loss=loss, logits=logits, labels=batch["label"])
        return logits  # (the tutorial returns nothing; the tests compare outputs)

    train_model = nnx.view(model, use_running_average=False, deterministic=False)
    eval_model = nnx.view(model, use_running_average=True, deterministic=True)
    layer = _equilibrium_of(model)
    eval_batch = _batch(digits, name, 1000, EVAL_SIZE)
    record = dict(model=model, eval_model=eval_model, traces=traces, eval_batch=eval_batch,
                  eval_step=eval_step, train_stats=[])

    def summary():
        return {k: float(v) for k, v in layer.stats.as_dict().items()}

    start = 0
    for i, size in enumerate(TRAIN_SIZES):
        train_step(train_model, optimizer, metrics, _batch(digits, name, start, size))
        start += size
        record["train_stats"].append(summary())
        if i == 1:  # evaluate mid-run, with a third batch size
            power = layer.power[...] if hasattr(layer, "power") else None
            batch_stats = model.batch_norm.mean[...] if kind == "batchnorm" else None
            eval_step(eval_model, metrics, eval_batch)
            record["eval_stats"] = summary()
            if power is not None:
                record["power_after_eval"] = (power, layer.power[...])
            if batch_stats is not None:
                record["batch_stats_after_eval"] = (batch_stats, model.batch_norm.mean[...])
    record["train_metrics"] = {k: float(v) for k, v in metrics.compute().items()}
    metrics.reset()
    record["final_power"] = layer.power[...] if hasattr(layer, "power") else None
    record["final_logits"] = eval_step(eval_model, metrics, eval_batch)
    return record


_RUNS = {}


def _run(kind, name, digits):
    """One tutorial run per (model kind, layer), shared by the tests that read it."""
    if (kind, name) not in _RUNS:
        with jax.enable_x64(False):  # float32, as the tutorial runs
            _RUNS[kind, name] = dict(_tutorial_run(kind, name, digits), kind=kind, name=name)
    return _RUNS[kind, name]


# Every layer in the model with BatchNorm and Dropout (the DEQ and monDEQ baselines with
# --run-slow); in the plain model, OptEqDense by default and the others with --run-slow
# (compilation costs seconds per run; the plain model's own concern, nnx.view's keywords, is
# checked for every layer below without compiling).
RUNS = [pytest.param(("batchnorm", name), id=f"batchnorm-{name}",
                     marks=pytest.mark.slow if name in ("deq_dense", "mondeq_dense") else ())
        for name in LAYERS] + [
    pytest.param(("plain", name), id=f"plain-{name}",
                 marks=() if name == "opteq_dense" else pytest.mark.slow) for name in LAYERS]


@pytest.fixture(scope="module", params=RUNS)
def run(request, digits):
    return _run(*request.param, digits)


def test_train_step_compiles_once_per_batch_shape(run):
    # Five train steps on batches of two sizes, with an evaluation of a third size in between
    # and one at the end: one trace per train shape, one for the evaluation, none caused by the
    # layer's state.
    assert run["traces"] == {"train": 2, "eval": 1}
    assert np.isfinite(run["train_metrics"]["loss"])
    # The summary follows the last training call: its batch size, every sample solved.
    last = run["train_stats"][-1]
    assert last["samples"] == TRAIN_SIZES[-1]
    assert last["converged_share"] == 1.0 and last["nonfinite_share"] == 0.0
    assert 1 <= last["steps_mean"] <= last["steps_max"]


def test_evaluation_mode_reaches_the_layer_through_nnx_view(run):
    model, eval_model = run["model"], run["eval_model"]
    layer, eval_layer = _equilibrium_of(model), _equilibrium_of(eval_model)
    assert eval_layer.use_running_average and not layer.use_running_average
    assert layer.stats.samples is eval_layer.stats.samples  # a view shares the variables
    stats = run["eval_stats"]
    assert stats["samples"] == EVAL_SIZE and stats["converged_share"] == 1.0
    if run["name"] in CERTIFIED:
        assert np.isfinite(stats["distance_bound_max"]) and stats["modulus"] > 0
    else:  # nothing certifies a DEQ's equilibrium
        assert stats["distance_bound_max"] == np.inf
    if run["name"].startswith("opteq"):
        before, after = run["power_after_eval"]
        np.testing.assert_array_equal(after, before)  # frozen in evaluation mode
        assert not np.array_equal(run["final_power"], after)  # training calls move it
        assert 0 < stats["weight_norm"] <= layer.rho * (1 + 1e-6)  # the exact norm, <= rho
        # training mode certifies nothing by default (no exact norm per training call)
        assert all(np.isnan(s["weight_norm"]) and s["distance_bound_max"] == np.inf
                   for s in run["train_stats"])
    if run["kind"] == "batchnorm":  # the same view reached Flax's own BatchNorm
        before, after = run["batch_stats_after_eval"]
        np.testing.assert_array_equal(after, before)


def test_model_eval_and_train_set_the_mode(run):
    model, eval_step = run["model"], run["eval_step"]
    layer = _equilibrium_of(model)
    power = layer.power[...] if hasattr(layer, "power") else None
    metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))
    with jax.enable_x64(False):
        model.eval()
        assert layer.use_running_average
        logits = eval_step(model, metrics, run["eval_batch"])
        model.train()
    assert not layer.use_running_average
    # model.eval() gives the structure nnx.view gave: the compiled step is reused, same output
    assert run["traces"]["eval"] == 1
    np.testing.assert_array_equal(logits, run["final_logits"])
    if power is not None:
        np.testing.assert_array_equal(layer.power[...], power)
    if run["name"] in CERTIFIED:
        assert np.isfinite(float(layer.stats.distance_bound_max[...]))


@pytest.mark.parametrize("name", LAYERS)
def test_nnx_view_keywords_on_a_model_without_batchnorm_or_dropout(name):
    model = _build("plain", name, seed=0)
    layer = _equilibrium_of(model)
    # Flax's own Linear has no mode: only the optjax layer takes these keywords, and must.
    assert _equilibrium_of(nnx.view(model, use_running_average=True, deterministic=True)) \
        .use_running_average
    assert _equilibrium_of(nnx.view(model, deterministic=True)).use_running_average
    assert not _equilibrium_of(
        nnx.view(model, use_running_average=False, deterministic=True)).use_running_average
    assert not layer.use_running_average  # views leave the model alone
    with pytest.raises(ValueError, match="Unused keys"):  # an unknown keyword still errors
        nnx.view(model, use_running_average=True, decode=True)
    with pytest.raises(TypeError, match="must be True, False or None, got 'yes'"):
        nnx.view(model, deterministic="yes")
    assert "use_running_average" in nnx.view_info(model)


def test_checkpoint_round_trips_restore_identical_outputs(run, tmp_path):
    """Orbax's StandardCheckpointer into an ``nnx.eval_shape`` model, and the pure-dict path,
    as the Flax checkpointing guide writes them, for a trained model."""
    model, kind, name = run["model"], run["kind"], run["name"]
    _, state = nnx.split(model)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", state)
    checkpointer.save(tmp_path / "pure", nnx.to_pure_dict(state))
    checkpointer.wait_until_finished()
    with jax.enable_x64(False):
        graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: _build(kind, name, seed=1)))
        restored = nnx.merge(graphdef, checkpointer.restore(tmp_path / "state", abstract_state))

        graphdef, pure_state = nnx.split(nnx.eval_shape(lambda: _build(kind, name, seed=2)))
        nnx.replace_by_pure_dict(pure_state, checkpointer.restore(tmp_path / "pure"))
        from_pure = nnx.merge(graphdef, pure_state)

        metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(),
                                  loss=nnx.metrics.Average("loss"))
        outputs = [run["eval_step"](nnx.view(m, use_running_average=True, deterministic=True),
                                    metrics, run["eval_batch"]) for m in (restored, from_pure)]
    for logits in outputs:
        np.testing.assert_array_equal(logits, run["final_logits"])
    assert run["traces"]["eval"] == 1  # the restored models have the very same structure
    stats = nnx.state(restored, SolveStat)
    assert jax.tree.structure(stats) == jax.tree.structure(nnx.state(model, SolveStat))


@pytest.mark.slow  # two models trained under nnx.vmap, ~10 s: CI runs it with the slow checks
def test_vmap_ensemble_of_two_models_with_clipped_updates(digits):
    """Two models as one ``nnx.vmap`` ensemble (split rngs, as the Flax transforms guide creates
    stacked modules), trained under ``nnx.jit`` with ``optax.chain`` and clipping; each member
    matches the same model run alone."""
    name, clip = "opteq_dense", 1e-2
    single = _run("batchnorm", name, digits)  # its compiled eval step runs the members alone
    with jax.enable_x64(False):

        @nnx.split_rngs(splits=2)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create_ensemble(rngs):
            return TutorialModel(name, rngs=rngs)

        ensemble = create_ensemble(nnx.Rngs(0))
        optimizer = nnx.Optimizer(ensemble, optax.chain(optax.clip_by_global_norm(clip),
                                                        optax.sgd(1.0)), wrt=nnx.Param)

        def ensemble_loss(ensemble, batch):
            logits = nnx.vmap(lambda m, x: m(x), in_axes=(0, None))(ensemble, batch["image"])
            labels = jnp.broadcast_to(batch["label"], logits.shape[:2])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        @nnx.jit
        def train_step(ensemble, optimizer, batch):
            loss, grads = nnx.value_and_grad(ensemble_loss)(ensemble, batch)
            optimizer.update(ensemble, grads)
            return loss, optax.tree.norm(grads)

        train_view = nnx.view(ensemble, use_running_average=False, deterministic=False)
        before = nnx.to_pure_dict(nnx.state(ensemble, nnx.Param))  # values, not variables
        loss, grad_norm = train_step(train_view, optimizer, _batch(digits, name, 0, 32))
        after = nnx.to_pure_dict(nnx.state(ensemble, nnx.Param))
        step = optax.tree.norm(jax.tree.map(lambda a, b: a - b, after, before))

        eval_view = nnx.view(ensemble, use_running_average=True, deterministic=True)
        together = nnx.jit(nnx.vmap(lambda m, x: m(x), in_axes=(0, None)))(
            eval_view, single["eval_batch"]["image"])
        graphdef, state = nnx.split(eval_view)
        metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(),
                                  loss=nnx.metrics.Average("loss"))
        members = [nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state)) for i in range(2)]
        alone = [single["eval_step"](member, metrics, single["eval_batch"]) for member in members]
    assert np.isfinite(float(loss)) and float(grad_norm) > clip  # the clip bites
    np.testing.assert_allclose(float(step), clip, rtol=1e-4)  # sgd(1) of the clipped gradient
    assert together.shape == (2, EVAL_SIZE, 10)
    assert not np.allclose(together[0], together[1])  # two different members
    bounds = np.asarray(_equilibrium_of(eval_view).stats.distance_bound_max[...])
    for i, member in enumerate(members):
        # Vmapped over the members, the program has other shapes and kernels than a member run
        # alone: the float32 solves (tol 1e-3) may stop a sample a step apart, so not bitwise.
        # Both states lie within their certified distances r / mu of the one equilibrium (the
        # solves certify in evaluation mode), so the logits are within the head's norm times
        # the sum of the bounds; plus float32 rounding (rtol, atol).
        head = np.linalg.norm(np.asarray(member.head.kernel[...], np.float64), 2)
        bound = head * (bounds[i] + float(_equilibrium_of(member).stats.distance_bound_max[...]))
        assert np.isfinite(bound)
        assert bound < 0.1 * float(np.max(np.abs(together[0] - together[1])))  # still a test
        np.testing.assert_allclose(together[i], alone[i], rtol=1e-5, atol=1e-5 + bound)
    assert single["traces"]["eval"] == 1  # a member has the structure of a single model
    assert _equilibrium_of(eval_view).stats.samples[...].shape == (2,)  # one summary each
