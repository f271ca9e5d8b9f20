"""LiteLLM integration parts on their own: settings, call description, label codec."""

from __future__ import annotations

import json

import litellm
import pytest
from litellm.types.utils import ChatCompletionMessageToolCall, Choices, Function, Message, ModelResponse

from tracer_core.errors import TracerError
from tracer_litellm.codec import is_surrogate_response, label_from_response, surrogate_response
from tracer_litellm.request import describe_call
from tracer_litellm.settings import SettingsError, TracerSettings

SYSTEM = {"role": "system", "content": "Classify the banking query. Answer with the intent label only."}


def call(*messages: dict, **extra) -> dict:
    return {"model": "openai/teacher", "messages": [SYSTEM, *messages], **extra}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


# --- settings ---------------------------------------------------------------------------------


def test_settings_from_env_reads_every_variable():
    env = {
        "TRACER_DB": "/tmp/x.db",
        "TRACER_ALPHA": "0.9",
        "TRACER_DELTA": "0.1",
        "TRACER_REFIT_EVERY": "50",
        "TRACER_TASK": "intent",
        "TRACER_MODE": "Observe",
    }
    settings = TracerSettings.from_env(env)
    assert settings == TracerSettings(db="/tmp/x.db", alpha=0.9, delta=0.1, refit_every=50, task="intent", mode="observe")


def test_settings_defaults_when_env_is_empty():
    assert TracerSettings.from_env({}) == TracerSettings()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TRACER_ALPHA": "high"}, "TRACER_ALPHA"),
        ({"TRACER_ALPHA": "1.5"}, "alpha"),
        ({"TRACER_DELTA": "0"}, "delta"),
        ({"TRACER_REFIT_EVERY": "2.5"}, "TRACER_REFIT_EVERY"),
        ({"TRACER_REFIT_EVERY": "0"}, "refit_every"),
        ({"TRACER_MODE": "maybe"}, "mode"),
    ],
)
def test_bad_settings_raise_a_tracer_error_naming_the_setting(env, named):
    with pytest.raises(SettingsError, match=named) as info:
        TracerSettings.from_env(env)
    assert isinstance(info.value, TracerError)


# --- call description -------------------------------------------------------------------------


def test_implicit_task_is_named_after_the_fingerprint():
    info = describe_call(call(user("card got declined")))
    assert info.text == "card got declined"
    assert info.model == "openai/teacher"
    assert info.task == f"litellm-{info.fingerprint[:12]}"
    assert info.routable


def test_explicit_task_and_input_come_from_metadata():
    info = describe_call(
        call(user("ignored wrapper text"), metadata={"tracer_task": "intent", "tracer_input": "real text"})
    )
    assert (info.task, info.text) == ("intent", "real text")


def test_fixed_task_applies_when_the_call_names_none():
    assert describe_call(call(user("x")), fixed_task="support").task == "support"
    assert describe_call(call(user("x"), metadata={"tracer_task": "own"}), fixed_task="support").task == "own"


def test_fingerprint_changes_with_prompt_model_and_schema_but_not_input():
    base = describe_call(call(user("a")))
    assert describe_call(call(user("b"))).fingerprint == base.fingerprint
    other_prompt = {"model": "openai/teacher", "messages": [{"role": "system", "content": "Other"}, user("a")]}
    assert describe_call(other_prompt).fingerprint != base.fingerprint
    assert describe_call({**call(user("a")), "model": "openai/gpt-4o"}).fingerprint != base.fingerprint
    schema = call(user("a"), response_format={"type": "json_object"})
    assert describe_call(schema).fingerprint != base.fingerprint
    few_shot = call(user("my card?"), {"role": "assistant", "content": "card_arrival"}, user("a"))
    assert describe_call(few_shot).fingerprint != base.fingerprint


def test_call_kwargs_and_logged_details_name_the_same_task():
    """LiteLLM logs `model` without its provider prefix and the schema under optional_params."""
    before = call(user("a"), response_format={"type": "json_object"}, metadata={"tracer_task": "t"})
    logged = {
        "model": "teacher",
        "custom_llm_provider": "openai",
        "messages": before["messages"],
        "optional_params": {"response_format": {"type": "json_object"}, "extra_body": {}},
        "litellm_params": {"metadata": {"tracer_task": "t", "hidden_params": {}}},
    }
    assert describe_call(before) == describe_call(logged)


def test_proxy_requester_metadata_is_read():
    info = describe_call(call(user("a"), metadata={"requester_metadata": {"tracer_task": "from-client"}}))
    assert info.task == "from-client"


def test_text_parts_are_joined_and_non_text_parts_dropped():
    content = [
        {"type": "text", "text": "first"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "second"},
    ]
    assert describe_call(call({"role": "user", "content": content})).text == "first\nsecond"


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([user("q"), {"role": "assistant", "content": "a"}], "not_ending_with_user_message"),
        (
            [
                user("q"),
                {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]},
                {"role": "tool", "tool_call_id": "1", "content": "42"},
                user("and now?"),
            ],
            "tool_conversation",
        ),
    ],
)
def test_conversations_that_are_not_a_single_question_are_not_routable(messages, reason):
    info = describe_call(call(*messages))
    assert not info.routable
    assert info.reason == reason


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
    response = ModelResponse(choices=[Choices(message=Message(role="assistant", content="  card_arrival\n"))])
    assert label_from_response(response) == "card_arrival"
    empty = ModelResponse(choices=[Choices(message=Message(role="assistant", content="  "))])
    assert label_from_response(empty) is None


def test_label_of_a_forced_tool_call_is_its_canonical_arguments():
    call_ = ChatCompletionMessageToolCall(
        id="c1", type="function", function=Function(name="classify", arguments='{"z": 1, "label": "x"}')
    )
    response = ModelResponse(choices=[Choices(message=Message(role="assistant", content=None, tool_calls=[call_]))])
    assert label_from_response(response, "classify") == json.dumps({"label": "x", "z": 1})
    assert label_from_response(response, "other") is None


def test_surrogate_response_is_a_zero_cost_marked_answer():
    info = describe_call(call(user("q")))
    response = surrogate_response("card_arrival", info, score=0.97, policy_version=3)
    assert response.choices[0].message.content == "card_arrival"
    assert response.usage.total_tokens == 0  # type: ignore[attr-defined]  # set at run time
    assert is_surrogate_response(response)
    assert response._hidden_params["tracer_surrogate"]["policy_version"] == 3
    assert label_from_response(response) == "card_arrival"
    assert litellm.completion_cost(completion_response=response, model="gpt-4o-mini") == 0.0


def test_surrogate_tool_answer_round_trips_to_the_same_label():
    tools = [{"type": "function", "function": {"name": "classify", "parameters": {}}}]
    info = describe_call(call(user("q"), tools=tools, tool_choice="required"))
    label = json.dumps({"label": "card_arrival"})
    response = surrogate_response(label, info, score=0.9, policy_version=1)
    assert response.choices[0].finish_reason == "tool_calls"
    assert label_from_response(response, "classify") == label
