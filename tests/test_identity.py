"""One task identity, one label encoding, one registry, one table of setting constraints."""

from __future__ import annotations

import numpy as np
import pytest

from tests import clustered
from tracer_core import Reason, TaskIdentity, TraceStore, identify, registry_for, structured_label, text_label
from tracer_core.errors import TracerError
from tracer_core.identity import ROUTED
from tracer_core.settings import SettingsError, check

SYSTEM = ("system", "Classify the banking query into one intent.")


def call(text: str, **overrides) -> TaskIdentity:
    options = {"model": "openai/gpt-4o-mini", "messages": [SYSTEM, ("user", text)], "routed_text": text,
               "params": {"temperature": 0}}
    options.update(overrides)
    return identify(**options)


def test_the_routed_text_is_not_part_of_the_version():
    a, b = call("I lost my card"), call("Where is my money?")
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    assert a.messages == (("system", SYSTEM[1]), ("user", ROUTED))


def test_what_the_llm_sees_is_part_of_the_version():
    base = call("x").fingerprint
    assert call("x", model="openai/gpt-4o").fingerprint != base
    assert call("x", params={"temperature": 0.7}).fingerprint != base
    assert call("x", messages=[("system", "Other prompt."), ("user", "x")]).fingerprint != base
    assert call("x", schema={"response_format": {"type": "json_object"}}).fingerprint != base
    assert call("x", variables={"granularity": "coarse"}).fingerprint != call("x", variables={"granularity": "fine"}).fingerprint


def test_equivalent_calls_are_one_version():
    assert call("x", params={"temperature": 0}).fingerprint == call("x", params={"temperature": 0.0}).fingerprint
    assert call("x", params={"temperature": 0, "n": 1, "top_p": None}).fingerprint == call("x").fingerprint
    assert call("x", messages=[("system", SYSTEM[1]), ("human", "x")]).fingerprint == call("x").fingerprint
    assert call("x", params={"temperature": 0, "max_completion_tokens": 5}).fingerprint == call(
        "x", params={"temperature": 0, "max_tokens": 5}).fingerprint
    # the routed text inside a template: only the text is replaced
    templated = call("x", messages=[SYSTEM, ("user", "Query: x")])
    assert templated.messages[-1] == ("user", f"Query: {ROUTED}")


def test_conversations_share_one_blocked_version():
    first = call("thanks", messages=[SYSTEM, ("user", "hi"), ("assistant", "card_arrival"), ("user", "thanks")],
                 history=[1, 2])
    second = call("and now?", messages=[SYSTEM, ("user", "yo"), ("assistant", "x"), ("user", "a"), ("assistant", "b"),
                                         ("user", "and now?")], history=[1, 2, 3, 4])
    assert first.fingerprint == second.fingerprint != call("thanks").fingerprint
    assert first.history and first.blocked == Reason.CONVERSATION_HISTORY
    assert call("thanks").blocked is None


def test_content_the_surrogate_cannot_see_blocks_routing():
    parts = [{"type": "text", "text": "what is on this receipt?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
    identity = call("what is on this receipt?", messages=[SYSTEM, ("user", parts)])
    assert identity.non_text and identity.blocked == Reason.NON_TEXT_CONTENT


def test_a_pinned_fingerprint_wins():
    assert call("x", pinned="mytask-v2").fingerprint == "mytask-v2"


def test_one_label_encoding():
    assert structured_label('{"label": "x", "b": 1}') == structured_label({"b": 1, "label": "x"}) == '{"b":1,"label":"x"}'
    assert text_label("  card_arrival \n") == "card_arrival"
    assert structured_label("not json") == "not json"


def test_registry_shares_one_tracer_per_version(tmp_path):
    db = tmp_path / "r.db"
    registry = registry_for(db)
    assert registry_for(str(db)) is registry
    identity = call("x", origin="litellm")
    a = registry.tracer("t", identity, alpha=0.9, embedder=clustered.embed)
    assert registry.tracer("t", call("y", origin="langchain"), alpha=0.9) is a
    assert a.fingerprint == identity.fingerprint
    assert registry.tracer("t", call("x", params={"temperature": 1.0})) is not a
    with pytest.raises(TracerError, match="already routed in this process with alpha 0.9"):
        registry.tracer("t", identity, alpha=0.95)
    registry.flush()  # versions are registered in the background
    with TraceStore(db) as store:
        rows = {v["fingerprint"]: v for v in store.versions("t")}
    assert rows[identity.fingerprint]["origin"] == "litellm"
    assert rows[identity.fingerprint]["description"]["model"] == "openai/gpt-4o-mini"
    registry.store.close()


def test_one_table_of_setting_constraints():
    assert check("alpha", np.float32(0.9)) == 0.9 and check("refit_every", np.int64(5)) == 5
    for name, value in (("alpha", 1.0), ("delta", 0), ("alpha", float("nan")), ("refit_every", True),
                        ("refit_every", 0), ("audit_rate", 1.5), ("alpha", "0.9")):
        with pytest.raises(SettingsError, match=name):
            check(name, value)
