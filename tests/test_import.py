"""Importing optjax raises no DeprecationWarning: jaxopt's is filtered by its message only."""

import subprocess
import sys


def test_import_is_clean_under_warnings_as_errors():
    out = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", "import optjax"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr


def test_only_jaxopts_message_is_filtered():
    """Importing optjax leaves the warning filters as it found them, and jaxopt stays quiet."""
    code = (
        "import warnings, jax, optax, flax, chex\n"
        "before = list(warnings.filters)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import optjax\n"
        "assert not [w for w in caught if 'JAXopt' in str(w.message)], caught\n"
        "assert list(warnings.filters) == before\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
