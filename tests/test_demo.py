"""`examples/demo.py` end to end in a subprocess, on a small configuration (a few intents, a short stream).

The surrogate answering at all depends on a background fit landing before the stream ends;
the configuration leaves it ~600 queries (~30 s) for a fit that takes a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # the whole demo in a subprocess: MiniLM, a stand-in teacher, LangChain and LiteLLM


def test_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    env.pop("TRACER_DEMO_MODEL", None)  # always the local stand-in teacher
    # 6 intents: the first background fit (300 traces) certifies, and 600 more queries give it time to land
    args = ["--queries", "900", "--refit-every", "300", "--every", "300", "--labels", "6", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    output = proc.stdout
    assert proc.returncode == 0, f"stdout:\n{output}\nstderr:\n{proc.stderr[-4000:]}"

    # both integrations reach one task version with no sharing code (same prompt, model and parameters)
    assert re.search(r"every call, LangChain and LiteLLM, reached one task version \([0-9a-f]{16}\); "
                     r"registered by langchain(, litellm)?$", output, re.MULTILINE), output

    # the header and one row per 200 queries
    assert re.search(r"queries\s+traces\s+policy\s+cert\.cov\s+coverage\s+LangChain\s+LiteLLM", output)
    rows = re.findall(r"^\s+(\d[\d,]*)\s+(\d[\d,]*)\s+(v\d+|-)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d[\d,]*)\s+(\S+)\s+\d+s$",
                      output, re.MULTILINE)
    assert [int(r[0].replace(",", "")) for r in rows] == [300, 600, 900], output
    assert any(r[2] != "-" for r in rows), "no policy was deployed during the stream:\n" + output
    assert re.search(r"-> fit v1 on [\d,]+ traces", output)

    # totals: at least one query answered by the surrogate, with its agreement reported
    totals = re.search(r"^TOTAL: (\d+) queries, (\d+) LLM calls saved \(.*\), \$([\d.]+) saved, "
                       r"surrogate agreement ([\d.]+)%$", output, re.MULTILINE)
    assert totals, output
    assert int(totals.group(1)) == 900
    saved = int(totals.group(2))
    assert saved >= 1
    # the surrogate's answers, counted three ways, agree: the totals line, the breakdown and its agreement
    surrogate = re.search(r"answered by tracer's surrogate:\s+([\d,]+) .*agreement with the teacher on them: "
                          r"([\d,]+)/([\d,]+) = ([\d.]+)%", output)
    assert surrogate, output
    answered, agreed, out_of = (int(surrogate.group(k).replace(",", "")) for k in (1, 2, 3))
    assert answered == out_of == saved and 0 <= agreed <= answered
    assert float(totals.group(4)) == float(surrogate.group(4)) == round(100 * agreed / answered, 1)
    assert re.search(r"cost of a teacher call: \$[\d.]+ .*gpt-4o-mini", output)
    # every query the surrogate did not answer reached the stand-in teacher, and no other request did
    llm = re.search(r"answered by the teacher LLM:\s+([\d,]+) .*the stand-in counted ([\d,]+) requests", output)
    assert llm, output
    assert int(llm.group(1).replace(",", "")) == int(llm.group(2).replace(",", "")) == 900 - saved

    # the report, at the printed paths
    html, js = out / "report.html", out / "report.json"
    assert f"report: {html.resolve()}" in output
    assert html.is_file() and html.stat().st_size > 1000
    facts = json.loads(js.read_text(encoding="utf-8"))["summary"]
    versions = [int(v) for v in re.findall(r"-> fit v(\d+) on", output)]
    assert facts["task"] == "banking77-intent" and facts["deployed"] and facts["policy_version"] in versions
    # the store holds one teacher trace per LLM call and one surrogate trace per answer the surrogate gave
    with sqlite3.connect(out / "tracer.db") as db:
        counts = dict(db.execute("SELECT source, count(*) FROM traces GROUP BY source").fetchall())
    assert counts == {"teacher": 900 - saved, "surrogate": saved}
