"""Demo material for trying tracer without an LLM bill: Banking77 traces and a stand-in teacher.

Nothing here is needed to use tracer in production. `banking77_rows()` reads the bundled
Banking77 train split (10,003 `{"input", "label"}` rows, CC BY 4.0: see `data/README.md`);
`tracer_demo.local_teacher.LocalTeacher` is a local OpenAI-compatible server that answers
each query with its label (`python -m tracer_demo.local_teacher`).
"""

from __future__ import annotations

import json
from importlib.resources import files
from importlib.resources.abc import Traversable

__all__ = ["banking77_path", "banking77_rows"]


def banking77_path() -> Traversable:
    """The bundled Banking77 train split, one `{"input", "label"}` JSON object per line."""
    return files(__name__).joinpath("data", "banking77_train.jsonl")


def banking77_rows() -> list[dict[str, str]]:
    """Every row of the bundled Banking77 train split, in file order."""
    with banking77_path().open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
