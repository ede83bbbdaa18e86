"""Importing optjax is clean and does not need jaxopt: jaxopt (unmaintained) is imported only
when one of its reference solvers is asked for, and its DeprecationWarning is filtered by its
message only."""

import subprocess
import sys

import pytest


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_import_is_clean_under_warnings_as_errors():
    out = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c",
         "import optjax, optjax.nn\noptjax.solvers.get('jaxopt_anderson')"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr


def test_only_jaxopts_message_is_filtered():
    """Loading jaxopt leaves the warning filters as it found them, and jaxopt stays quiet."""
    code = (
        "import warnings, jax, optax, flax, chex\n"
        "before = list(warnings.filters)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import optjax\n"
        "    optjax.solvers.get('jaxopt_fixed_point')\n"
        "assert not [w for w in caught if 'JAXopt' in str(w.message)], caught\n"
        "assert list(warnings.filters) == before\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow  # a fresh interpreter importing the whole package, ~11 s: CI runs it
def test_optjax_works_without_jaxopt_and_says_what_to_install():
    """With jaxopt unimportable: import optjax and optjax.nn, the CLI's parser, a default solve
    with its gradient, a Flax layer; asking for a jaxopt solver says what to install."""
    code = (
        "import sys\n"
        "sys.modules['jaxopt'] = None  # import jaxopt now raises ImportError\n"
        "import jax, jax.numpy as jnp\n"
        "import optjax, optjax.nn, optjax.cli\n"
        "from flax import nnx\n"
        "w = 0.9 * jnp.eye(4)\n"
        "p = optjax.OptEqProblem(w, 'tanh')\n"
        "z, info = optjax.equilibrium(p, jnp.ones((2, 4)))\n"
        "assert bool(info.converged.all())\n"
        "g = jax.grad(lambda w: optjax.equilibrium(optjax.OptEqProblem(w, 'tanh'), jnp.ones((2, 4)),"
        " certify=False)[0].sum())(w)\n"
        "assert bool(jnp.all(jnp.isfinite(g)))\n"
        "layer = optjax.nn.OptEqDense(3, 4, rngs=nnx.Rngs(0))\n"
        "assert layer(jnp.ones((2, 3))).shape == (2, 4)\n"
        "optjax.cli.main(['train', '--help'])\n"
    )
    out = _run(code)
    assert out.returncode == 0 and "usage: optjax train" in out.stdout, out.stderr
    assert "jaxopt" not in out.stderr, out.stderr
    refused = _run("import sys\nsys.modules['jaxopt'] = None\nimport optjax\n"
                   "optjax.solvers.get('jaxopt_anderson')")
    assert refused.returncode != 0
    assert "ConfigError" in refused.stderr and "pip install jaxopt" in refused.stderr, \
        refused.stderr
