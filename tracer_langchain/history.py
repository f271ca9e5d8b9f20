"""`with_tracer(RunnableWithMessageHistory(...))`: the session's history, through the runnable's public fields.

Before routing, the session history is loaded the way `RunnableWithMessageHistory` loads it
(`get_session_history` called with the config's `configurable` values of its
`history_factory_config`), so a call with earlier turns is seen as carrying history. A
surrogate answer never runs the runnable, so the turn is appended to the history here, as
the runnable would have done.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.history import RunnableWithMessageHistory

from tracer_langchain.text import is_message_list


def session_history(runnable: RunnableWithMessageHistory, config: RunnableConfig) -> BaseChatMessageHistory:
    """The chat message history of this call's session."""
    configurable = config.get("configurable") or {}
    keys = [spec.id for spec in runnable.history_factory_config]
    missing = [k for k in keys if k not in configurable]
    parameters = list(inspect.signature(runnable.get_session_history).parameters)
    if missing and parameters:
        raise KeyError(f"config['configurable'] lacks {missing} needed to load the session history")
    if len(keys) == 1:
        return runnable.get_session_history(configurable[keys[0]]) if parameters else runnable.get_session_history()
    return runnable.get_session_history(**{k: configurable[k] for k in keys})


def input_messages(runnable: RunnableWithMessageHistory, value: Any) -> list[BaseMessage]:
    """The new messages of a turn (what the runnable appends to the history before the answer)."""
    if isinstance(value, Mapping):
        key = runnable.input_messages_key or (next(iter(value)) if len(value) == 1 else "input")
        value = value[key]
    if isinstance(value, str):
        return [HumanMessage(value)]
    if isinstance(value, BaseMessage):
        return [value]
    return list(value) if is_message_list(value) else []


def append_turn(history: BaseChatMessageHistory, runnable: RunnableWithMessageHistory, value: Any, output: Any) -> None:
    """Add a surrogate-answered turn to the session history."""
    if isinstance(output, Mapping) and runnable.output_messages_key:
        output = output[runnable.output_messages_key]
    answer = output if isinstance(output, BaseMessage) else AIMessage(content=str(output))
    history.add_messages([*input_messages(runnable, value), answer])
