"""Bad input to the library (tests/_cases.py): each must be refused with a message that says what
is wrong AND what to do. Problems (shapes, dtypes, weights that break convexity, non-prox
activations, priors), the engine's options and solvers (unknown or misspelt, traced or bad
tolerances, combinations that cannot work), deep chains, a failed solve under check, and the
nnx layers' settings and inputs. (The data: tests/data/test_bad_inputs.py; training and the
command line: tests/train/test_bad_inputs.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import optjax
from optjax import solvers
from optjax.convex import priors
from optjax.families import deep
from optjax.families.deq import DEQProblem
from optjax.nn import DeepOptEq, DEQDense, MonDEQDense, OptEqConv, OptEqDense
from tests._cases import Case, assert_says, params

# --- the library ---------------------------------------------------------------------------------
# ``input``: a function that makes the bad call. Small float64 problems (tests run with x64).


def _unit(norm=0.9, **kw):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 4))
    return optjax.OptEqProblem(jnp.asarray(norm * w / np.linalg.norm(w, 2)), "relu", **kw)


X = jnp.ones((2, 6))

LIBRARY = [
    Case("input without a batch axis", lambda: optjax.equilibrium(_unit(), X[0]),
         ("x must have shape (batch,) + (6,)", "add a batch axis: x[None]")),
    Case("integer input", lambda: optjax.equilibrium(_unit(), X.astype(int)),
         ("floating dtype", "x.astype(float)")),
    Case("weights that break convexity", lambda: optjax.equilibrium(_unit(1.5), X),
         ("s_sigma * ||W||^2 = 2.25 > 1", "Rescale W")),
    Case("NaN in the weights", lambda: optjax.equilibrium(
        optjax.OptEqProblem(_unit().weight.at[0, 0].set(jnp.nan), "relu"), X),
         ("NaN or Inf in W", "check the weights")),
    Case("activation that is not a prox", lambda: _unit().__class__(_unit().weight, "gelu"),
         ("not a proximal operator", "Use a prox activation instead")),
    Case("a function as activation", lambda: optjax.OptEqProblem(_unit().weight, jax.nn.relu),
         ("activation must be an optjax Activation", "from_function")),
    Case("negative L1 weight", lambda: priors.L1(-0.1), ("lam >= 0", "got lam = -0.1")),
    Case("empty box", lambda: priors.Box(1.0, -1.0), ("lower <= upper", "box is empty")),
    Case("negative ball radius", lambda: priors.Ball(-1.0), ("radius >= 0", "ball is empty")),
    Case("negative quadratic weight", lambda: priors.Quadratic(-0.5), ("mu >= 0",)),
    Case("quadratic prior without its feature",
         lambda: optjax.equilibrium(_unit(prior=priors.Quadratic(0.5)), X),
         ("needs feature=u",)),
    Case("feature without a quadratic prior",
         lambda: optjax.equilibrium(_unit(), X, feature=jnp.zeros(4)),
         ("feature= is only used by the Quadratic prior",)),
    Case("unknown solver", lambda: optjax.equilibrium(_unit(), X, solver="newton"),
         ("unknown solver 'newton'", "choose one of")),
    Case("misspelt solver option",
         lambda: optjax.equilibrium(_unit(), X, solver="anderson", solver_options={"histroy": 3}),
         ("unknown option(s) for Anderson: 'histroy'", "valid options are")),
    Case("traced tolerance", lambda: jax.jit(lambda t: optjax.equilibrium(_unit(), X, tol=t))(1e-5),
         ("tol is a static setting", "static_argnames")),
    Case("negative tolerance", lambda: optjax.equilibrium(_unit(), X, tol=-1.0),
         ("tol must be a positive finite number",)),
    Case("conjugate gradients with a non-symmetric prior",
         lambda: optjax.equilibrium(_unit(prior=priors.L1(0.1)), X, backward="cg"),
         ("needs a symmetric system", "use backward='gmres'")),
    Case("anchor without Halpern", lambda: optjax.equilibrium(_unit(), X, anchor=jnp.zeros(4)),
         ("anchor= is used by the Halpern solver only", "solver='halpern'")),
    Case("init of the wrong shape", lambda: optjax.equilibrium(_unit(), X, init=jnp.zeros(5)),
         ("init must have shape (4,) or (2, 4)",)),
    Case("objective-based solver on a DEQ",
         lambda: optjax.equilibrium(DEQProblem(0.1 * jnp.eye(3), jnp.tanh), jnp.ones((2, 3)),
                                    solver=next(n for n, c in solvers.SOLVERS.items()
                                                if getattr(c, "needs_objective", False))),
         ("needs an explicit objective that the plain step decreases", "supplies nothing",
          "Solvers that fit: fixed_point, anderson")),
    Case("deep couplings that break convexity",
         lambda: deep.equilibrium(deep.DeepProblem([2 * jnp.eye(3)], None, None, "relu"),
                                  jnp.ones((2, 3))),
         ("convexity margin", "optjax.deep.normalize")),
    Case("deep coupling of the wrong shape",
         lambda: deep.DeepProblem([jnp.ones((3, 4)), jnp.ones((2, 5))], None),
         ("A_2 must have shape (n_3, n_2) with n_2 = 3",)),
    Case("check of a failed solve",
         lambda: optjax.check(optjax.equilibrium(_unit(), X, max_steps=1, tol=1e-12)[1]),
         ("did not reach an equilibrium", "raise max_steps")),
]


@pytest.mark.parametrize("case", params(LIBRARY))
def test_the_library(case):
    with pytest.raises(Exception) as info:
        case.input()
    assert not isinstance(info.value, (AttributeError, KeyError, ZeroDivisionError,
                                       IndexError)), info.value
    assert_says(str(info.value), case)


# --- the layers ----------------------------------------------------------------------------------


def _rngs():
    return nnx.Rngs(0)


LAYERS = [
    Case("negative width", lambda: OptEqDense(4, 3, hidden=-1, rngs=_rngs()),
         ("hidden must be a positive int, got -1",)),
    Case("zero features", lambda: OptEqDense(4, 0, rngs=_rngs()),
         ("features must be a positive int",)),
    Case("rho above one", lambda: OptEqDense(4, 3, rho=1.5, rngs=_rngs()),
         ("rho must be in (0, 1]",)),
    Case("even conv kernel", lambda: OptEqConv(1, 2, (4, 4), kernel_size=2, rngs=_rngs()),
         ("kernel_size must be odd",)),
    Case("anchor with a unique equilibrium", lambda: OptEqDense(4, 3, anchor="zero", rngs=_rngs()),
         ("needs rho=1", "drop the anchor")),
    Case("learned anchor", lambda: OptEqDense(4, 3, anchor="learned", rho=1.0, rngs=_rngs()),
         ("never get a gradient", "use 'zero' or 'injection'")),
    Case("activation that is not a prox", lambda: OptEqDense(4, 3, activation="gelu",
                                                             rngs=_rngs()),
         ("not a proximal operator",)),
    Case("input of the wrong width", lambda: OptEqDense(4, 3, rngs=_rngs())(jnp.ones((2, 5))),
         ("expects x of shape (batch, 4)",)),
    Case("conv input with the wrong channels",
         lambda: OptEqConv(3, 2, (4, 4), rngs=_rngs())(jnp.ones((1, 4, 4, 5))),
         ("5 input channels, the layer was built for 3",)),
    Case("conjugate gradients in a deep chain", lambda: DeepOptEq(4, (3, 2), backward="cg",
                                                                  rngs=_rngs()),
         ("needs a symmetric system", "use backward='gmres'")),
    Case("unknown DEQ activation", lambda: DEQDense(4, 3, activation="nope", rngs=_rngs()),
         ("unknown activation 'nope'",)),
    Case("non-positive monotonicity margin", lambda: MonDEQDense(4, 3, m=0.0, rngs=_rngs()),
         ("m must be a positive number",)),
]


@pytest.mark.parametrize("case", params(LAYERS))
def test_the_layers(case):
    with pytest.raises(Exception) as info:
        case.input()
    assert not isinstance(info.value, (AttributeError, KeyError, ZeroDivisionError,
                                       IndexError)), info.value
    assert_says(str(info.value), case)
