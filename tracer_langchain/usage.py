"""A callback handler that sums token usage and notes the model name of the LLM calls inside one run."""

from __future__ import annotations

import threading
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult


class UsageCollector(BaseCallbackHandler):
    """Attach to one chain run; after it, `prompt_tokens`, `completion_tokens` and `model` hold what the LLMs reported."""

    run_inline = True

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.model: str | None = None
        self.llm_calls = 0

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        prompt, completion, model = _usage_of(response)
        with self._lock:
            self.llm_calls += 1
            self.model = self.model or model
            if prompt is not None:
                self.prompt_tokens = (self.prompt_tokens or 0) + prompt
            if completion is not None:
                self.completion_tokens = (self.completion_tokens or 0) + completion


def _usage_of(response: LLMResult) -> tuple[int | None, int | None, str | None]:
    """(prompt tokens, completion tokens, model name) of one LLM result, None where not reported."""
    llm_output = response.llm_output or {}
    model = llm_output.get("model_name") or llm_output.get("model")
    for generations in response.generations:
        for generation in generations:
            if isinstance(generation, ChatGeneration):
                message = generation.message
                model = model or message.response_metadata.get("model_name")
                usage = getattr(message, "usage_metadata", None)
                if usage:
                    return usage.get("input_tokens"), usage.get("output_tokens"), model
    token_usage = llm_output.get("token_usage") or {}
    return token_usage.get("prompt_tokens"), token_usage.get("completion_tokens"), model
