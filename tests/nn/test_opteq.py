"""OptEq layers: norm control, the equilibrium is the minimiser of the module's objective,
gradients, NNX transforms and composition, mixed precision, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optjax
from optjax.convex import priors
from optjax.nn import OptEqConv, OptEqDense, SolveStat
from optjax.nn.spectral import certified_norm


def _dense(**kw):
    kw.setdefault("param_dtype", jnp.float64)
    return OptEqDense(6, 5, 9, rngs=nnx.Rngs(0), **kw)


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape))


def _problem_of(layer, x):
    """The OptEqProblem the layer solved (eval mode: the stored power vector)."""
    layer.use_running_average = True
    w = layer.used_weight()
    return optjax.OptEqProblem(w, layer.activation, layer.input_weight.get_value(),
                               layer.bias.get_value(), prior=layer.prior)


def test_dense_equilibrium_is_the_minimiser_and_certified():
    layer = _dense(tol=1e-12, max_steps=5000, activation="tanh")
    x = _x((4, 6))
    layer.eval()
    z, info = layer(x, return_info=True)
    assert bool(jnp.all(info.converged))
    problem = _problem_of(layer, x)
    # grad F(z*) = z* - T(z*) = 0, and the certificate uses the exact norm of the used W.
    grad = jax.grad(lambda z: jnp.sum(optjax.objective(problem, z, x)))(z)
    assert float(jnp.max(jnp.abs(grad))) < 1e-11
    np.testing.assert_allclose(info.certificate.weight_norm, np.linalg.norm(problem.weight, 2),
                               rtol=1e-12)
    assert float(info.certificate.weight_norm) <= 0.95 * (1 + 1e-6)


@pytest.mark.parametrize("certify", [True, False])
def test_norm_bound_holds_after_100_random_optimizer_steps(certify):
    layer = _dense(rho=0.9, certify=certify)
    layer.train()
    opt = nnx.Optimizer(layer, optax.sgd(0.5), wrt=nnx.Param)
    x = _x((2, 6))

    @nnx.jit
    def step(layer, opt, g):
        layer(x)  # a training-mode call advances the power iteration
        grads = jax.tree_util.tree_map(lambda p: g * jnp.ones_like(p), nnx.state(layer, nnx.Param))
        opt.update(layer, grads)
        _, info = layer(x, return_info=True)
        return info.certificate.weight_norm, info.converged, certified_norm(layer.used_weight())

    rng = np.random.default_rng(1)
    for _ in range(100):
        used_norm, converged, power_normalised = step(layer, opt, jnp.asarray(rng.normal()))
        if certify:  # exact: the certified norm of the weight the solve used
            assert float(used_norm) <= 0.9 * (1 + 1e-9)
            assert bool(jnp.all(converged))
        else:  # the power iteration alone lags behind these large random steps, not past 1
            assert float(power_normalised) < 1.0


def _traced_program(layer, x):
    """The text of the jaxpr of a call (nested jaxprs included)."""
    graphdef, state = nnx.split(layer)
    return str(jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x))


def test_training_mode_computes_no_exact_norm_unless_asked():
    # The exact norm of a dense W is an eigenvalue problem (eigh): by default only evaluation
    # mode pays it; certify=True pays it in training too.
    x = _x((2, 6))
    layer = _dense()
    layer.train()
    assert "eigh" not in _traced_program(layer, x)
    layer.eval()
    assert "eigh" in _traced_program(layer, x)
    always = _dense(certify=True)
    always.train()
    assert "eigh" in _traced_program(always, x)


def test_summary_has_a_fixed_structure_and_reports_failures():
    layer = _dense()
    before = nnx.state(layer, SolveStat)
    assert int(layer.stats.samples[...]) == 0 and np.isnan(layer.stats.residual_max[...])
    x = _x((4, 6)).at[1, 0].set(jnp.nan)  # one sample cannot be solved
    z, info = layer(x, return_info=True)
    after = nnx.state(layer, SolveStat)
    shapes = lambda state: jax.tree.map(lambda a: (a.shape, a.dtype), state)  # noqa: E731
    assert shapes(after) == shapes(before)  # the same variables, whatever the batch
    summary = layer.stats.as_dict()
    assert int(summary["samples"]) == 4
    assert float(summary["nonfinite_share"]) == 0.25 and float(summary["converged_share"]) == 0.75
    assert not bool(info.converged[1]) and np.isnan(summary["residual_max"])
    np.testing.assert_allclose(summary["steps_max"], np.max(info.steps))


def test_gradients_match_finite_differences():
    layer = _dense(tol=1e-13, max_steps=5000, activation="softplus")
    layer.eval()
    x = _x((3, 6))
    target = _x((3, 5), 2)
    def loss(model):
        return jnp.sum(target * model(x))

    grads = nnx.jit(nnx.grad(loss))(layer)
    params = nnx.state(layer, nnx.Param)
    jit_loss = nnx.jit(loss)

    def loss_at(p):
        nnx.update(layer, p)
        return jit_loss(layer)

    direction = jax.tree_util.tree_map(lambda p: jnp.asarray(np.random.default_rng(3).normal(size=p.shape)), params)
    h = 1e-5
    plus = jax.tree_util.tree_map(lambda p, d: p + h * d, params, direction)
    minus = jax.tree_util.tree_map(lambda p, d: p - h * d, params, direction)
    fd = (loss_at(plus) - loss_at(minus)) / (2 * h)
    analytic = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(grads),
                                                   jax.tree_util.tree_leaves(direction)))
    np.testing.assert_allclose(analytic, fd, rtol=1e-6)


def test_nnx_jit_split_merge_optimizer_and_sequential():
    model = nnx.Sequential(
        OptEqDense(6, 5, rngs=nnx.Rngs(0)),
        nnx.Linear(5, 3, rngs=nnx.Rngs(1)),
    )
    x = _x((8, 6)).astype(jnp.float32)
    y = jnp.asarray(np.arange(8) % 3)
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    @nnx.jit
    def step(model, opt):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(15)]
    assert losses[-1] < losses[0]
    stats = model.layers[0].stats  # the summary of the last call, written inside nnx.jit
    assert int(stats.samples[...]) == 8 and float(stats.converged_share[...]) == 1.0
    graphdef, state = nnx.split(model)
    clone = nnx.merge(graphdef, state)
    clone.eval()
    model.eval()
    np.testing.assert_allclose(clone(x), model(x), rtol=1e-6)


@pytest.mark.parametrize("prior", [priors.L1(0.05), priors.Nonnegative(), priors.Quadratic(0.5)],
                         ids=["l1", "nonnegative", "feature"])
def test_priors_change_the_equilibrium_to_the_prior_problem(prior):
    layer = _dense(tol=1e-12, max_steps=5000, prior=prior)
    layer.eval()
    x = _x((3, 6))
    z, info = layer(x, return_info=True)
    assert bool(jnp.all(info.converged))
    problem = _problem_of(layer, x)
    feature = None
    if isinstance(prior, priors.Quadratic):
        plain = optjax.OptEqProblem(problem.weight, problem.activation, problem.input_weight,
                                    problem.bias)
        feature = optjax.operator(plain, jnp.zeros_like(z), x)
    np.testing.assert_allclose(optjax.operator(problem, z, x, feature), z, atol=1e-11)
    if isinstance(prior, priors.Nonnegative):
        assert bool(jnp.all(z >= 0))


@pytest.mark.parametrize("anchor", ["zero", "injection"])
def test_halpern_anchors_need_rho_one(anchor):
    # rho < 1: the equilibrium is unique, an anchor would only slow the solve down.
    with pytest.raises(optjax.ConfigError, match="needs rho=1"):
        _dense(anchor=anchor)
    layer = _dense(tol=1e-4, max_steps=100000, anchor=anchor, rho=1.0)
    layer.eval()
    x = _x((2, 6))
    z, info = layer(x, return_info=True)
    assert info.solver == "halpern" and bool(jnp.all(info.converged))
    problem = _problem_of(layer, x)
    np.testing.assert_allclose(optjax.operator(problem, z, x), z, atol=1e-4)


def test_learned_anchor_is_refused_with_the_reason():
    with pytest.raises(optjax.ConfigError, match="never get a gradient"):
        _dense(anchor="learned", rho=1.0)


def test_mixed_precision_keeps_float32_state_and_matches_float32():
    x = _x((4, 6)).astype(jnp.float32)
    exact = OptEqDense(6, 5, rngs=nnx.Rngs(0), tol=1e-6)
    mixed = OptEqDense(6, 5, rngs=nnx.Rngs(0), tol=1e-2, compute_dtype=jnp.bfloat16)
    exact.eval(), mixed.eval()
    z32, (zmix, info) = exact(x), mixed(x, return_info=True)
    assert zmix.dtype == jnp.float32
    assert info.residual.dtype == jnp.float32
    assert bool(jnp.all(info.converged))
    assert float(jnp.max(jnp.abs(zmix - z32))) < 0.05 * float(jnp.max(jnp.abs(z32)))


def test_bad_input_and_options_are_refused():
    with pytest.raises(optjax.ConfigError, match="rho must be in"):
        OptEqDense(6, 5, rho=1.5, rngs=nnx.Rngs(0))
    with pytest.raises(optjax.NotAProxError):
        OptEqDense(6, 5, activation="gelu", rngs=nnx.Rngs(0))
    with pytest.raises(optjax.ConfigError, match="anchor must be one of"):
        OptEqDense(6, 5, anchor="prior", rngs=nnx.Rngs(0))
    layer = OptEqDense(6, 5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"expects x of shape \(batch, 6\)"):
        layer(jnp.ones((2, 7)))
    conv = OptEqConv(3, 4, (6, 6), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="5 input channels, the layer was built for 3"):
        conv(jnp.ones((2, 6, 6, 5)))
