"""LiteLLM integration parts on their own: settings, call description, label codec."""

from __future__ import annotations

import litellm
import pytest
from litellm.types.utils import ChatCompletionMessageToolCall, Choices, Function, Message, ModelResponse

import tracer_core.settings
import tracer_litellm
from tracer_core import Reason, structured_label
from tracer_core.decision import Decision, deferred
from tracer_core.errors import TracerError
from tracer_litellm.codec import is_surrogate_response, label_from_response, mark_response, surrogate_response
from tracer_litellm.request import describe_call
from tracer_litellm.settings import SettingsError, TracerSettings

SYSTEM = {"role": "system", "content": "Classify the banking query. Answer with the intent label only."}
HANDLED = Decision(label="card_arrival", handled=True, score=0.97, reason=Reason.HANDLED, policy_version=3)


def call(*messages: dict, **extra) -> dict:
    return {"model": "openai/teacher", "messages": [SYSTEM, *messages], **extra}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# --- settings ---------------------------------------------------------------------------------


def test_settings_from_env_reads_every_variable():
    env = {
        "TRACER_DB": "/tmp/x.db",
        "TRACER_ALPHA": "0.9",
        "TRACER_DELTA": "0.1",
        "TRACER_REFIT_EVERY": "50",
        "TRACER_AUDIT_RATE": "0.2",
        "TRACER_TASK": "intent",
        "TRACER_MODE": "Observe",
    }
    settings = TracerSettings.from_env(env)
    assert settings == TracerSettings(
        db="/tmp/x.db", alpha=0.9, delta=0.1, refit_every=50, audit_rate=0.2, task="intent", mode="observe"
    )


def test_settings_defaults_when_env_is_empty():
    assert TracerSettings.from_env({}) == TracerSettings()
    assert TracerSettings().audit_rate == 0.05


def test_settings_error_is_the_core_one():
    assert tracer_litellm.SettingsError is SettingsError is tracer_core.settings.SettingsError


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TRACER_ALPHA": "high"}, "TRACER_ALPHA"),
        ({"TRACER_ALPHA": "1.5"}, "alpha"),
        ({"TRACER_DELTA": "0"}, "delta"),
        ({"TRACER_REFIT_EVERY": "2.5"}, "TRACER_REFIT_EVERY"),
        ({"TRACER_REFIT_EVERY": "0"}, "refit_every"),
        ({"TRACER_AUDIT_RATE": "1.5"}, "audit_rate"),
        ({"TRACER_AUDIT_RATE": "often"}, "TRACER_AUDIT_RATE"),
        ({"TRACER_MODE": "maybe"}, "mode"),
    ],
)
def test_bad_settings_raise_a_tracer_error_naming_the_setting(env, named):
    with pytest.raises(SettingsError, match=named) as info:
        TracerSettings.from_env(env)
    assert isinstance(info.value, TracerError)


def test_audit_rate_is_checked_by_the_core_table():
    assert TracerSettings(audit_rate=0.0).audit_rate == 0.0
    with pytest.raises(SettingsError, match="audit_rate"):
        TracerSettings(audit_rate=-0.1)


# --- call description -------------------------------------------------------------------------


def test_implicit_task_is_named_after_the_fingerprint():
    info = describe_call(call(user("card got declined")))
    assert info.text == "card got declined"
    assert info.model == "openai/teacher"
    assert info.task == f"litellm-{info.fingerprint[:12]}"
    assert info.blocked is None
    assert info.identity.origin == "litellm"


def test_explicit_task_and_input_come_from_metadata():
    info = describe_call(
        call(user("Query: real text. Answer briefly."), metadata={"tracer_task": "intent", "tracer_input": "real text"})
    )
    assert (info.task, info.text) == ("intent", "real text")
    assert ("user", "Query: {tracer:input}. Answer briefly.") in info.identity.messages


def test_fixed_task_applies_when_the_call_names_none():
    assert describe_call(call(user("x")), fixed_task="support").task == "support"
    assert describe_call(call(user("x"), metadata={"tracer_task": "own"}), fixed_task="support").task == "own"


def test_fingerprint_changes_with_prompt_model_params_and_schema_but_not_input():
    base = describe_call(call(user("a")))
    assert describe_call(call(user("b"))).fingerprint == base.fingerprint
    other_prompt = {"model": "openai/teacher", "messages": [{"role": "system", "content": "Other"}, user("a")]}
    assert describe_call(other_prompt).fingerprint != base.fingerprint
    assert describe_call({**call(user("a")), "model": "openai/gpt-4o"}).fingerprint != base.fingerprint
    assert describe_call(call(user("a"), response_format={"type": "json_object"})).fingerprint != base.fingerprint
    assert describe_call(call(user("a"), temperature=0.7)).fingerprint != base.fingerprint
    assert describe_call(call(user("a"), temperature=0)).fingerprint == describe_call(call(user("b"), temperature=0.0)).fingerprint
    assert describe_call(call(user("a"), stream=True, timeout=30)).fingerprint == base.fingerprint


def test_call_kwargs_and_logged_details_name_the_same_task():
    """LiteLLM logs `model` without its provider prefix and parameters under optional_params."""
    before = call(user("a"), response_format={"type": "json_object"}, temperature=0.2, metadata={"tracer_task": "t"})
    logged = {
        "model": "teacher",
        "custom_llm_provider": "openai",
        "messages": before["messages"],
        "optional_params": {"response_format": {"type": "json_object"}, "temperature": 0.2, "extra_body": {}},
        "litellm_params": {"metadata": {"tracer_task": "t", "hidden_params": {}}},
    }
    assert describe_call(before) == describe_call(logged)


def test_proxy_requester_metadata_is_read():
    info = describe_call(call(user("a"), metadata={"requester_metadata": {"tracer_task": "from-client"}}))
    assert info.task == "from-client"


def test_earlier_turns_are_history_one_version_for_every_conversation():
    first = describe_call(call(user("my card?"), assistant("card_arrival"), user("and my pin?")))
    second = describe_call(call(user("hello"), assistant("greeting"), user("top up?"), assistant("top_up"), user("a")))
    assert first.blocked is second.blocked is Reason.CONVERSATION_HISTORY
    assert first.fingerprint == second.fingerprint
    assert first.fingerprint != describe_call(call(user("a"))).fingerprint
    assert first.text == "and my pin?"


def test_declared_few_shot_turns_are_part_of_the_prompt():
    shots = [user("my card?"), assistant("card_arrival")]
    one = describe_call(call(*shots, user("a"), metadata={"tracer_few_shot": True}))
    other = describe_call(call(*shots, user("b"), metadata={"tracer_few_shot": True}))
    assert one.blocked is None
    assert one.fingerprint == other.fingerprint != describe_call(call(user("a"))).fingerprint
    changed = describe_call(call(user("my card?"), assistant("lost_card"), user("a"), metadata={"tracer_few_shot": True}))
    assert changed.fingerprint != one.fingerprint


@pytest.mark.parametrize(
    "messages",
    [
        [user("q"), assistant("a")],
        [
            user("q"),
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]},
            {"role": "tool", "tool_call_id": "1", "content": "42"},
            user("and now?"),
        ],
    ],
)
def test_tool_turns_and_trailing_turns_are_not_routable(messages):
    assert describe_call(call(*messages)).blocked is Reason.NOT_ROUTABLE


def test_image_parts_make_the_call_non_text():
    content = [
        {"type": "text", "text": "first"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "second"},
    ]
    info = describe_call(call({"role": "user", "content": content}))
    assert info.text == "first\nsecond"
    assert info.blocked is Reason.NON_TEXT_CONTENT


def test_several_choices_are_not_routable_and_a_version_of_their_own():
    info = describe_call(call(user("a"), n=2))
    assert info.blocked is Reason.MULTIPLE_CHOICES
    assert info.fingerprint != describe_call(call(user("a"))).fingerprint
    assert describe_call(call(user("a"), n=1)).fingerprint == describe_call(call(user("a"))).fingerprint


def test_per_call_mode_from_metadata():
    assert describe_call(call(user("a"), metadata={"tracer_mode": "off"})).mode == "off"
    assert describe_call(call(user("a"), metadata={"tracer_mode": "observe"})).mode == "observe"
    assert describe_call(call(user("a"))).mode == "on"
    bad = describe_call(call(user("a"), metadata={"tracer_mode": "sometimes"}))
    assert (bad.mode, bad.bad_mode) == ("observe", "sometimes")
    assert describe_call(call(user("a"), cache={"no-cache": True})).mode == "observe"
    assert describe_call(call(user("a"), caching=False)).mode == "on"


def test_calls_without_user_text_are_not_described():
    assert describe_call({"model": "openai/teacher", "messages": [SYSTEM]}) is None
    assert describe_call({"model": "openai/teacher", "messages": []}) is None
    assert describe_call({"model": "openai/teacher", "input": "embedding text"}) is None


def test_forced_tool_is_the_label_carrier():
    tools = [{"type": "function", "function": {"name": "classify", "parameters": {}}}]
    info = describe_call(call(user("q"), tools=tools, tool_choice={"type": "function", "function": {"name": "classify"}}))
    assert info.tool_name == "classify"
    assert describe_call(call(user("q"), tools=tools, tool_choice="required")).tool_name == "classify"
    assert describe_call(call(user("q"), tools=tools, tool_choice="auto")).tool_name is None


# --- codec ------------------------------------------------------------------------------------


def test_label_is_the_stripped_content():
    info = describe_call(call(user("q")))
    response = ModelResponse(choices=[Choices(message=Message(role="assistant", content="  card_arrival\n"))])
    assert label_from_response(response, info) == "card_arrival"
    empty = ModelResponse(choices=[Choices(message=Message(role="assistant", content="  "))])
    assert label_from_response(empty, info) is None


def tool_response(arguments: str) -> ModelResponse:
    call_ = ChatCompletionMessageToolCall(id="c1", type="function", function=Function(name="classify", arguments=arguments))
    return ModelResponse(choices=[Choices(message=Message(role="assistant", content=None, tool_calls=[call_]))])


def test_tool_arguments_are_one_label_however_they_are_spaced():
    tools = [{"type": "function", "function": {"name": "classify", "parameters": {}}}]
    info = describe_call(call(user("q"), tools=tools, tool_choice="required"))
    spaced, compact = tool_response('{"z": 1, "label": "x"}'), tool_response('{"label":"x","z":1}')
    assert label_from_response(spaced, info) == label_from_response(compact, info) == structured_label({"label": "x", "z": 1})
    assert label_from_response(spaced, info) == '{"label":"x","z":1}'
    other = describe_call(call(user("q"), tools=tools, tool_choice={"type": "function", "function": {"name": "other"}}))
    assert label_from_response(spaced, other) is None


def test_json_answers_use_the_structured_encoding():
    info = describe_call(call(user("q"), response_format={"type": "json_object"}))
    response = ModelResponse(choices=[Choices(message=Message(role="assistant", content='{"label": "x"}'))])
    assert label_from_response(response, info) == '{"label":"x"}'


def test_surrogate_response_is_a_free_cache_hit_carrying_the_decision():
    info = describe_call(call(user("q")))
    response = surrogate_response("card_arrival", info, HANDLED)
    assert response.choices[0].message.content == "card_arrival"
    assert response.usage.total_tokens == 0  # type: ignore[attr-defined]  # set at run time
    assert is_surrogate_response(response)
    assert response._hidden_params["cache_hit"] is True
    assert response._hidden_params["response_cost"] == 0.0
    assert response._hidden_params["tracer"] == {
        "handled": True, "reason": "handled", "policy_version": 3, "task": info.task, "fingerprint": info.fingerprint,
    }
    assert label_from_response(response, info) == "card_arrival"
    assert litellm.completion_cost(completion_response=response, model="gpt-4o-mini") == 0.0


def test_a_deferred_response_is_marked_but_not_a_cache_hit():
    info = describe_call(call(user("q")))
    response = ModelResponse(choices=[Choices(message=Message(role="assistant", content="x"))])
    mark_response(response, info, deferred(Reason.AUDIT, policy_version=2, label="x"))
    assert response._hidden_params["tracer"]["handled"] is False
    assert response._hidden_params["tracer"]["reason"] == "audit"
    assert "cache_hit" not in response._hidden_params
    assert not is_surrogate_response(response)


def test_surrogate_tool_answer_round_trips_to_the_same_label():
    tools = [{"type": "function", "function": {"name": "classify", "parameters": {}}}]
    info = describe_call(call(user("q"), tools=tools, tool_choice="required"))
    label = structured_label({"label": "card_arrival"})
    response = surrogate_response(label, info, HANDLED)
    assert response.choices[0].finish_reason == "tool_calls"
    assert label_from_response(response, info) == label
