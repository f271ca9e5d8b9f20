"""The teacher the demo asks: the local stand-in LLM by default, or a real model through LiteLLM.

Both integrations must send the teacher the same request, so the prompt lives here:
a system message with the Banking77 label list, then the customer's query.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import litellm
from pydantic import SecretStr

from demo_parts.pricing import PRICED_AS, Price, price_of
from tracer_demo.local_teacher import LocalTeacher


def system_prompt(labels: list[str]) -> str:
    return (
        "You classify customer messages sent to a bank into exactly one intent from this list:\n"
        + "\n".join(labels)
        + "\nAnswer with the intent name only, exactly as written in the list."
    )


@dataclass
class Teacher:
    """How to reach the teacher from each integration, and what a call costs."""

    description: str
    litellm_kwargs: dict[str, Any]
    langchain_llm: Any | None  # a LangChain chat model, or None when LangChain cannot reach this model
    price: Price
    stand_in: bool
    server: LocalTeacher | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int | None:
        """Requests the teacher received (known for the stand-in only)."""
        return self.server.request_count if self.server else None

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def stand_in_teacher(table: dict[str, str], latency_s: float) -> Teacher:
    """Start the local OpenAI-compatible teacher on 127.0.0.1 (gold Banking77 intents)."""
    from langchain_openai import ChatOpenAI

    server = LocalTeacher(table, latency_s=latency_s).start()
    price = price_of(PRICED_AS)
    if price is None:  # the cost map ships with litellm; this only guards a stripped install
        price = Price(PRICED_AS, 0.15e-6, 0.60e-6)
    return Teacher(
        description=(
            f"local stand-in teacher at {server.base_url} (answers each Banking77 query with its gold intent, "
            f"{latency_s * 1000:.0f} ms latency) - a stand-in for a real LLM; set TRACER_DEMO_MODEL to use one"
        ),
        litellm_kwargs={"model": "openai/teacher", "api_base": server.base_url, "api_key": "sk-local"},
        langchain_llm=ChatOpenAI(base_url=server.base_url, api_key=SecretStr("sk-local"), model="teacher", max_retries=0),
        price=price,
        stand_in=True,
        server=server,
    )


def real_teacher(model: str) -> Teacher:
    """A real model through LiteLLM, with the provider's usual key (e.g. OPENAI_API_KEY)."""
    check = litellm.validate_environment(model=model)
    if not check.get("keys_in_environment"):
        missing = ", ".join(check.get("missing_keys") or []) or "the provider's API key"
        raise SystemExit(f"TRACER_DEMO_MODEL={model}: set {missing} (or unset TRACER_DEMO_MODEL for the local stand-in)")
    _, provider, _, _ = litellm.get_llm_provider(model=model)
    name = model.split("/", 1)[1] if model.startswith(f"{provider}/") else model
    price = price_of(model) or price_of(name)
    notes = []
    if price is None:
        price = Price(PRICED_AS, *_fallback(PRICED_AS))
        notes.append(f"{model} is not in LiteLLM's cost map; calls are priced as {PRICED_AS}")
    langchain_llm = None
    if provider == "openai":
        from langchain_openai import ChatOpenAI

        langchain_llm = ChatOpenAI(model=name, temperature=0, max_retries=2)
    else:
        notes.append(
            f"LangChain reaches {provider} models through a provider package this demo does not install; "
            "every query goes through LiteLLM"
        )
    return Teacher(
        description=f"{model} through LiteLLM (a real LLM; its answers are checked against the Banking77 gold intents)",
        litellm_kwargs={"model": model, "temperature": 0},
        langchain_llm=langchain_llm,
        price=price,
        stand_in=False,
        notes=notes,
    )


def _fallback(model: str) -> tuple[float, float]:
    price = price_of(model)
    return (price.input_per_token, price.output_per_token) if price else (0.15e-6, 0.60e-6)


def make_teacher(table: dict[str, str], latency_s: float) -> Teacher:
    model = os.environ.get("TRACER_DEMO_MODEL", "").strip()
    return real_teacher(model) if model else stand_in_teacher(table, latency_s)
