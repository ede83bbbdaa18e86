"""A catalogue of bad inputs, one table per area, each in the tests of its layer: the library
(tests/engine/test_bad_inputs.py), the data (tests/data/test_bad_inputs.py), training and the
command line (tests/train/test_bad_inputs.py). Each input must be refused with a message that
says what is wrong AND what to do.

A row is ``Case(id, input, words the message must contain)``. To add an area, append a table of
:class:`Case` and a test function that feeds each input and checks the message with
:func:`assert_says`, as in those files.
"""

import dataclasses
from typing import Any

import pytest


@dataclasses.dataclass(frozen=True)
class Case:
    """A bad input and the words its message must contain (what is wrong, what to do)."""

    id: str
    input: Any
    words: tuple[str, ...]


def params(cases):
    return [pytest.param(case, id=case.id) for case in cases]


def assert_says(message: str, case: Case) -> None:
    flat = " ".join(message.split())
    for words in case.words:
        assert words in flat, f"{case.id}: {words!r} not in:\n{message}"
