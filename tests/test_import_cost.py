"""`import tracer_core`, the integrations and the `tracer` command's startup load no heavy library: the
embedding model (torch, sentence-transformers), scikit-learn, SciPy and psycopg come in only when a call
needs them. Each check runs in a fresh interpreter and looks at `sys.modules` (not at a clock)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "sentence_transformers", "sklearn", "scipy", "psycopg")

# run `code`, then print which HEAVY top-level packages it loaded
PROBE = """
import contextlib, io, json, sys
{code}
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))
"""

TRACER_HELP = """
from tracer_core.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    main(["--help"], prog_name="tracer", standalone_mode=False)
assert "Usage: tracer" in out.getvalue(), out.getvalue()
"""


def heavy_modules_loaded(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(code=code, heavy=HEAVY)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("code", ["import tracer_core", "import tracer_langchain", "import tracer_litellm", TRACER_HELP],
                         ids=["tracer_core", "tracer_langchain", "tracer_litellm", "tracer --help"])
def test_startup_loads_nothing_heavy(code):
    assert heavy_modules_loaded(code) == []


def test_the_probe_sees_a_heavy_import():
    """The check can fail: a fit's module that does need scikit-learn is seen loading it."""
    assert "sklearn" in heavy_modules_loaded("from tracer_core.learning.surrogate import fit_logistic\n"
                                             "import numpy as np\n"
                                             "fit_logistic(np.eye(2, dtype=np.float32), np.array([0, 1]), 2)")
