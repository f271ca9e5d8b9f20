"""Every code block in README.md runs: Python and shell blocks in order in one folder, against a
local stand-in teacher; `make` lines as dry runs; the YAML block must match the proxy example."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tracer_demo.local_teacher import LocalTeacher

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def readme_blocks() -> list[tuple[str, str]]:
    return BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))


def test_readme_has_the_blocks_it_promises():
    kinds = [kind for kind, _ in readme_blocks()]
    assert kinds.count("python") == 3 and kinds.count("bash") == 2 and kinds.count("yaml") == 1
    assert set(kinds) <= {"python", "bash", "yaml", "text"}


@pytest.mark.slow
def test_every_readme_block_runs(tmp_path, banking_subset):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("TRACER_DB", None)
    with LocalTeacher(dict(banking_subset)) as teacher:
        env |= {"OPENAI_BASE_URL": teacher.base_url, "OPENAI_API_BASE": teacher.base_url, "OPENAI_API_KEY": "sk-test"}
        for kind, code in readme_blocks():
            if kind == "python":
                done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
                assert done.returncode == 0, f"README python block failed:\n{code}\n{done.stderr[-3000:]}"
            elif kind == "bash" and code.lstrip().startswith("make"):
                for line in code.splitlines():
                    target = line.split("#")[0].split()[1]
                    dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
                    assert dry.returncode == 0, dry.stderr
            elif kind == "bash":
                done = subprocess.run(["bash", "-ec", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
                assert done.returncode == 0, f"README shell block failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            elif kind == "yaml":
                example = yaml.safe_load((ROOT / "examples/litellm_proxy/config.yaml").read_text())
                assert yaml.safe_load(code)["litellm_settings"] == example["litellm_settings"]
        # the teacher was really asked by the LangChain and LiteLLM blocks
        assert teacher.request_count >= 2
    assert (tmp_path / "report.html").stat().st_size > 10_000
    # the single record(), the 1,500 record_many() traces and the routed call recorded with its decision
    assert (tmp_path / "traces.jsonl").read_text().count("\n") == 1502
