"""Every public name of ``optjax`` and ``optjax.nn`` shows a short example in its docstring (an
``Examples:`` section with ``>>>`` lines, as optax and flax write theirs; for a module, in the
module docstring), and every example runs as written and prints what it says.

The examples run as a user sees them: float32 by default (this suite's conftest turns
``jax_enable_x64`` on; it is off here while they run), each docstring with fresh globals (so it
imports what it uses). They print only what does not vary between machines: shapes, dtypes,
booleans, exact integers and well-rounded values.
"""

from __future__ import annotations

import doctest
import io
import re
import types

import jax
import pytest

import optjax
import optjax.nn

PUBLIC = [(f"optjax.{name}", getattr(optjax, name)) for name in optjax.__all__] + \
    [(f"optjax.nn.{name}", getattr(optjax.nn, name)) for name in optjax.nn.__all__]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name, obj", PUBLIC, ids=[name for name, _ in PUBLIC])
def test_docstring_example_runs(name, obj):
    doc = obj.__doc__ or ""
    assert re.search(r"^\s*Examples:\s*$", doc, flags=re.M), \
        f"{name}: its docstring has no 'Examples:' section"
    # The object's own docstring only (a module's, not its members'), with empty globals.
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs={})
    examples = sum(len(test.examples) for test in tests)
    assert examples > 0, f"{name}: no >>> example in its docstring"
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    x64 = jax.config.jax_enable_x64
    with jax.enable_x64(False):  # a user's default: float32
        for test in tests:
            runner.run(test, out=report.write)
    assert jax.config.jax_enable_x64 == x64
    assert runner.failures == 0, (
        f"{name}: {runner.failures} of {runner.tries} examples failed\n{report.getvalue()}")


def test_a_wrong_expected_output_fails():
    """The check is not vacuous: an example whose printed value is wrong fails."""
    module = types.ModuleType("wrong", "Examples:\n  >>> 1 + 1\n  3\n")
    tests = doctest.DocTestFinder(recurse=False).find(module, "wrong", globs={})
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in tests:
        runner.run(test, out=io.StringIO().write)
    assert (runner.tries, runner.failures) == (1, 1)
