"""What a teacher call costs, in dollars, from the token usage tracer recorded.

The stand-in teacher is free, but it reports token usage like a real API (whitespace words of
the prompt + 8, and 3 completion tokens). The demo prices those tokens at the list price of a
named model taken from LiteLLM's bundled cost map (`PRICED_AS`, gpt-4o-mini by default), so the
dollar figures say what the same traffic would have cost on that model.
"""

from __future__ import annotations

from dataclasses import dataclass

import litellm

PRICED_AS = "gpt-4o-mini"


@dataclass(frozen=True)
class Price:
    model: str
    input_per_token: float
    output_per_token: float

    def of(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        return (prompt_tokens or 0) * self.input_per_token + (completion_tokens or 0) * self.output_per_token

    def describe(self) -> str:
        return (
            f"{self.model} list price from LiteLLM's cost map: ${self.input_per_token * 1e6:.2f} per 1M input tokens, "
            f"${self.output_per_token * 1e6:.2f} per 1M output tokens"
        )


def price_of(model: str) -> Price | None:
    """The per-token price of `model` (`provider/name` or `name`) in LiteLLM's cost map, or None."""
    names = [model]
    if "/" in model:
        names.append(model.split("/", 1)[1])
    for name in names:
        entry = litellm.model_cost.get(name)
        if entry and entry.get("input_cost_per_token") is not None:
            return Price(name, float(entry["input_cost_per_token"]), float(entry.get("output_cost_per_token") or 0.0))
    return None


@dataclass
class CallCost:
    """Mean recorded cost of one teacher call."""

    calls: int
    prompt_tokens: int
    completion_tokens: int
    dollars: float

    @property
    def per_call(self) -> float:
        return self.dollars / self.calls if self.calls else 0.0


def teacher_call_cost(store, task: str, fingerprint: str, price: Price, *, recorded_cost: bool = False) -> CallCost:
    """Sum the recorded usage of the task's teacher traces and price it.

    `recorded_cost`: prefer the cost LiteLLM computed for the call, when it recorded one (real models).
    """
    calls = prompt = completion = 0
    dollars = 0.0
    for trace in store.iter_traces(task, source="teacher", fingerprint=fingerprint):
        calls += 1
        prompt += trace.prompt_tokens or 0
        completion += trace.completion_tokens or 0
        dollars += trace.cost_usd if recorded_cost and trace.cost_usd else price.of(trace.prompt_tokens, trace.completion_tokens)
    return CallCost(calls, prompt, completion, dollars)
