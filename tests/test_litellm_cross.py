"""One prompt is one task: the same system prompt, model and temperature through LangChain and LiteLLM.

Both calls go over real HTTP to the local teacher, which shows they send the same request;
the LiteLLM side is the fingerprint the callback recorded, the LangChain side is computed
as the core contract prescribes (the rendered prompt and ChatOpenAI's `_get_ls_params()`).
"""

from __future__ import annotations

import litellm
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

from tracer_core import identify
from tracer_litellm import TracerCallback

S = "Classify the banking query into its intent. Answer with the label only."


def langchain_fingerprint(prompt: ChatPromptTemplate, model: ChatOpenAI, text: str) -> str:
    ls = model._get_ls_params()
    messages = prompt.invoke({"text": text}).to_messages()
    return identify(
        model=f"{ls['ls_provider']}/{ls['ls_model_name']}",
        messages=[(m.type, m.content) for m in messages],
        routed_text=text,
        params={"temperature": ls.get("ls_temperature"), "max_tokens": ls.get("ls_max_tokens"), "stop": ls.get("ls_stop")},
        origin="langchain",
    ).fingerprint


def test_langchain_and_litellm_reach_the_same_task_version(teacher, db_path, banking_subset, fake_embedder):
    text, label = banking_subset[0]
    prompt = ChatPromptTemplate.from_messages([("system", S), ("human", "{text}")])
    model = ChatOpenAI(model="stand-in", base_url=teacher.base_url, api_key="x", temperature=0)
    assert (prompt | model).invoke({"text": text}).content == label

    callback = TracerCallback(alpha=0.9, db=str(db_path), embedder=fake_embedder, audit_rate=0.0)
    litellm.callbacks = [callback]
    try:
        response = litellm.completion(
            model="openai/stand-in", api_base=teacher.base_url, api_key="x", temperature=0,
            messages=[{"role": "system", "content": S}, {"role": "user", "content": text}],
        )
        callback.flush()
    finally:
        litellm.logging_callback_manager._reset_all_callbacks()
    assert response.choices[0].message.content == label

    langchain_request, litellm_request = teacher.requests
    assert langchain_request["messages"] == litellm_request["messages"]
    assert (langchain_request["model"], langchain_request["temperature"]) == (litellm_request["model"], litellm_request["temperature"])

    recorded = response._hidden_params["tracer"]["fingerprint"]
    assert recorded == langchain_fingerprint(prompt, model, text)
    [version] = callback.registry.store.versions(response._hidden_params["tracer"]["task"])
    assert version["fingerprint"] == recorded
    assert version["description"]["params"] == {"temperature": 0.0}
    assert langchain_fingerprint(prompt, model.model_copy(update={"temperature": 0.7}), text) != recorded
