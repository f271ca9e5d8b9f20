"""The two places LiteLLM (1.110.x) has no callback hook for, wrapped once per process.

- A sync call runs no callback before it reaches the provider (async calls run
  `async_pre_call_deployment_hook`). Every sync entry point (`litellm.completion`, however it
  was imported, and `Router.completion`) runs `litellm.utils.function_setup` first: the
  wrapper lets the TracerCallbacks in `litellm.callbacks` see the call there and answer it
  with a `mock_response`, as the async hook does. LiteLLM then runs its whole success path
  (logging, cost, other callbacks) on the surrogate's answer.
- Every response, sync, async or streamed, passes `litellm.utils.update_response_metadata`
  before it is returned: the wrapper puts the call's decision in `_hidden_params["tracer"]`
  and records a non-streamed answer right there, so its trace never waits in LiteLLM's
  logging queue (streams are recorded when LiteLLM logs the assembled answer).

The wrappers look the callbacks up on every call, so removing a TracerCallback from
`litellm.callbacks` turns them into pass-throughs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

import litellm
import litellm.utils as litellm_utils
from litellm.types.utils import CallTypes

_MARK = "_tracer_wrapped"


class Gate(Protocol):
    def answer_sync(self, kwargs: dict[str, Any], logging_obj: Any) -> Any | None: ...

    def on_response(self, response: Any, logging_obj: Any, start_time: Any, end_time: Any) -> None: ...


def install() -> None:
    """Wrap `function_setup` and `update_response_metadata` once."""
    _wrap("function_setup", _function_setup)
    _wrap("update_response_metadata", _update_response_metadata)


def _gates() -> list[Gate]:
    from tracer_litellm.callback import TracerCallback

    return [cb for cb in litellm.callbacks if isinstance(cb, TracerCallback)]


def _wrap(name: str, make: Callable[[Callable], Callable]) -> None:
    original = getattr(litellm_utils, name)
    if getattr(original, _MARK, False):
        return
    wrapped = functools.wraps(original)(make(original))
    setattr(wrapped, _MARK, True)
    setattr(litellm_utils, name, wrapped)


def _function_setup(original: Callable) -> Callable:
    def setup(original_function: Any, rules_obj: Any, start_time: Any, *args: Any, is_async_call: bool = True, **kwargs: Any):
        logging_obj, kwargs = original(original_function, rules_obj, start_time, *args, is_async_call=is_async_call, **kwargs)
        if is_async_call or original_function != CallTypes.completion.value or kwargs.get("acompletion"):
            return logging_obj, kwargs
        call = {**kwargs, **({"model": args[0]} if args else {}), **({"messages": args[1]} if len(args) > 1 else {})}
        for gate in _gates():
            answer = gate.answer_sync(call, logging_obj)
            if answer is not None:
                return logging_obj, {**kwargs, "mock_response": answer}
        return logging_obj, kwargs

    return setup


def _update_response_metadata(original: Callable) -> Callable:
    def update(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        names = ("result", "logging_obj", "model", "kwargs", "start_time", "end_time")
        given = dict(zip(names, args)) | kwargs
        for gate in _gates():
            gate.on_response(given.get("result"), given.get("logging_obj"), given.get("start_time"), given.get("end_time"))

    return update
