"""The CLI reaches every task version: fingerprint prefixes, the only version by default, no fit of nothing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tracer_core import Tracer, TraceStore, identify
from tracer_core.cli.commands import main as cli

SYSTEM = ("system", "Classify the banking query into one intent.")


def version(temperature: float, origin: str):
    return identify(model="openai/stand-in", messages=[SYSTEM, ("user", "x")], routed_text="x",
                    params={"temperature": temperature}, origin=origin)


@pytest.mark.slow
def test_cli_names_and_reaches_task_versions(tmp_path, embedder, banking_subset):
    db = tmp_path / "versions.db"
    a, b, empty = version(0.0, "langchain"), version(1.0, "litellm"), version(0.5, "litellm")
    with TraceStore(db) as store:
        for identity in (a, b, empty):
            store.register_version("support", identity.fingerprint, identity.description(), identity.origin)
        with Tracer("support", store, fingerprint=a.fingerprint, embedder=embedder, auto_refit=False) as tracer:
            tracer.record_many([t for t, _ in banking_subset], [label for _, label in banking_subset])
        with Tracer("support", store, fingerprint=b.fingerprint, embedder=embedder, auto_refit=False) as tracer:
            tracer.record_many([t for t, _ in banking_subset[:5]], [label for _, label in banking_subset[:5]])
    run = CliRunner().invoke
    listed = run(cli, ["tasks", "--db", str(db)])
    assert listed.exit_code == 0
    for identity in (a, b, empty):
        assert identity.fingerprint[:8] in listed.output
    assert "langchain: openai/stand-in" in listed.output and "temperature=1.0" in listed.output

    ambiguous = run(cli, ["fit", "--task", "support", "--db", str(db)])
    assert ambiguous.exit_code == 1 and "has 3 versions; pass --fingerprint" in ambiguous.output
    assert a.fingerprint[:8] in ambiguous.output

    fitted = run(cli, ["fit", "--task", "support", "--fingerprint", a.fingerprint[:6], "--alpha", "0.9", "--db", str(db)])
    assert fitted.exit_code == 0 and "(deployed)" in fitted.output, fitted.output
    routed = run(cli, ["route", "--task", "support", "--fingerprint", a.fingerprint[:6], "--db", str(db),
                       banking_subset[0][0]])
    decision = json.loads(routed.output.strip().splitlines()[-1])
    assert decision["policy_version"] == 1

    nothing = run(cli, ["fit", "--task", "support", "--fingerprint", empty.fingerprint[:8], "--db", str(db)])
    assert nothing.exit_code == 1 and "has no teacher traces" in nothing.output
    with TraceStore(db) as store:
        assert store.policies("support", fingerprint=empty.fingerprint) == []

    status = run(cli, ["status", "--db", str(db)])
    assert status.exit_code == 0 and "v1 deployed" in status.output and "no policy" in status.output
    one = run(cli, ["status", "--task", "support", "--fingerprint", a.fingerprint[:8], "--db", str(db)])
    assert one.exit_code == 0 and "handles" in one.output and a.fingerprint[:8] in one.output

    unknown = run(cli, ["route", "--task", "nope", "--db", str(db), "hello"])
    assert unknown.exit_code == 1 and "task 'nope' has no traces or policies" in unknown.output
