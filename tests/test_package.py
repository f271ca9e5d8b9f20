"""The built wheel is what a user installs: it ships the demo data with its licence and runs the Getting
started page's Python example from a folder outside the checkout, with only the installed wheel importable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.test_docs import page_blocks

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                    "demo-out", "site", "*.db", "*.db-wal", "*.db-shm")


def build_wheel(out: Path) -> Path:
    """`pip wheel` of a clean copy of the checkout (no stale build/ folder can leak into it)."""
    src = out / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (out / "dist").glob("tracer_router-*.whl")
    return wheel


def python_api_example() -> str:
    (code,) = [code for kind, code in page_blocks("docs/getting-started.md") if kind == "python"]
    return code


@pytest.mark.slow
def test_wheel_ships_data_and_licences_and_runs_the_python_api_example(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        licence = zf.read(next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))).decode()
    # the demo data, with its CC BY 4.0 licence and attribution beside it
    assert {"tracer_demo/data/banking77_train.jsonl", "tracer_demo/data/BANKING77_LICENSE",
            "tracer_demo/data/README.md", "tracer_demo/local_teacher.py"} <= names
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "License-Expression: Apache-2.0" in metadata
    # only what users import: no tests, examples or benchmarks, nothing left at the old places
    tops = {name.split("/")[0] for name in names}
    assert tops == {"tracer_core", "tracer_langchain", "tracer_litellm", "tracer_demo", wheel.name.split("-py3")[0] + ".dist-info"}
    assert not any(n.startswith(("tracer_core/data/", "tracer_core/local_teacher")) for n in names)

    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "elsewhere"
    run.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRACER_DB")} | {"PYTHONPATH": str(site)}
    # the packages come from the installed wheel, not from the checkout
    prelude = (
        "import sys, tracer_core, tracer_demo\n"
        f"assert all(m.__file__.startswith({str(site)!r}) for m in (tracer_core, tracer_demo)), "
        "(tracer_core.__file__, tracer_demo.__file__)\n"
    )
    done = subprocess.run([sys.executable, "-c", prelude + python_api_example()], cwd=run, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("handles ") and "lifetime delta" in lines[0], done.stdout  # cert.summary()
    assert lines[1].split()[0] in ("True", "False")  # d.handled, d.label, d.reason
    assert (run / "tracer.db").is_file()
    assert "Loading weights" not in done.stderr
