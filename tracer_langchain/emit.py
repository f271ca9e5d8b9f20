"""A surrogate answer as a chat-model run: what LangSmith, `astream_events` and LangGraph streaming see.

The run is nested under the wrapper's run and goes through the public callback-manager API
the way a chat model reports itself: `on_chat_model_start` with the rendered messages and
invocation parameters, one streamed chunk (`on_llm_new_token`) holding the whole answer,
and `on_llm_end` with an `LLMResult` whose generation carries the answer message and the
`tracer_*` metadata. No provider is called.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from langchain_core.callbacks.manager import (
    AsyncCallbackManager,
    AsyncCallbackManagerForChainRun,
    CallbackManager,
    CallbackManagerForChainRun,
)
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, LLMResult

from tracer_langchain.identity import CallView


def _parts(view: CallView, message: AIMessage, metadata: dict[str, Any]) -> tuple[dict, ChatGenerationChunk, LLMResult]:
    # one id for the streamed chunk and the final message, as a chat model gives them, so a consumer
    # that collects both (LangGraph's messages stream) shows the answer once
    answer = message.model_copy(update={"response_metadata": {**message.response_metadata, **metadata},
                                        "id": message.id or f"run-tracer-{uuid.uuid4().hex}"})
    chunk = AIMessageChunk(
        id=answer.id,
        content=answer.content,
        tool_call_chunks=[
            {"name": c["name"], "args": _json(c["args"]), "id": c["id"], "index": i}
            for i, c in enumerate(answer.tool_calls)
        ],
        response_metadata=answer.response_metadata,
        chunk_position="last",
    )
    start = {
        "invocation_params": view.invocation_params,
        "options": {"stop": view.invocation_params.get("stop")},
        "name": view.name,
        "batch_size": 1,
    }
    result = LLMResult(
        generations=[[ChatGeneration(message=answer, generation_info=dict(metadata))]],
        llm_output={"model_name": view.ls_params.get("ls_model_name"), **metadata},
    )
    return start, ChatGenerationChunk(message=chunk), result


def emit_chat_model_run(run: CallbackManagerForChainRun, view: CallView, message: AIMessage, metadata: dict) -> None:
    """Report a surrogate answer as a chat-model run under `run` (configured as a chat model configures its run)."""
    manager = CallbackManager.configure(run.get_child(), inheritable_metadata={**view.ls_params, **metadata})
    start, chunk, result = _parts(view, message, metadata)
    (llm_run,) = manager.on_chat_model_start(view.serialized or {}, [view.messages], **start)
    llm_run.on_llm_new_token(_token(chunk), chunk=chunk)
    llm_run.on_llm_end(result)


async def aemit_chat_model_run(
    run: AsyncCallbackManagerForChainRun, view: CallView, message: AIMessage, metadata: dict
) -> None:
    manager = AsyncCallbackManager.configure(run.get_child(), inheritable_metadata={**view.ls_params, **metadata})
    start, chunk, result = _parts(view, message, metadata)
    (llm_run,) = await manager.on_chat_model_start(view.serialized or {}, [view.messages], **start)
    await llm_run.on_llm_new_token(_token(chunk), chunk=chunk)
    await llm_run.on_llm_end(result)


def _token(chunk: ChatGenerationChunk) -> str:
    content = chunk.message.content
    return content if isinstance(content, str) else ""


def _json(args: Any) -> str:
    return json.dumps(args, ensure_ascii=False, separators=(",", ":"))
