"""The README's first example runs as written (solve, certify, differentiate, the jitted solve
carrying the norm), so the first thing a user copies works. The Flax examples are fragments
(``x``, ``y`` are the user's); tests/nn runs the same patterns."""

import pathlib
import re
import subprocess
import sys

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_the_core_example_runs():
    code = BLOCKS[0] + "\nassert bool(info.converged.all()) and grad.shape == W.shape\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
