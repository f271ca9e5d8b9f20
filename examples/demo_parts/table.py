"""Counters for the query stream and the compact table the demo prints every few hundred queries."""

from __future__ import annotations

from dataclasses import dataclass

INTEGRATIONS = ("langchain", "litellm")


@dataclass
class Counts:
    """Queries, surrogate answers and agreeing surrogate answers, per integration."""

    queries: dict[str, int]
    hits: dict[str, int]
    agree: dict[str, int]

    @classmethod
    def empty(cls) -> Counts:
        return cls(dict.fromkeys(INTEGRATIONS, 0), dict.fromkeys(INTEGRATIONS, 0), dict.fromkeys(INTEGRATIONS, 0))

    def add(self, integration: str, hit: bool, agrees: bool) -> None:
        self.queries[integration] += 1
        if hit:
            self.hits[integration] += 1
            self.agree[integration] += agrees

    @property
    def n(self) -> int:
        return sum(self.queries.values())

    @property
    def n_hits(self) -> int:
        return sum(self.hits.values())

    @property
    def n_agree(self) -> int:
        return sum(self.agree.values())

    def coverage(self, integration: str | None = None) -> float | None:
        n = self.n if integration is None else self.queries[integration]
        hits = self.n_hits if integration is None else self.hits[integration]
        return hits / n if n else None

    def agreement(self) -> float | None:
        return self.n_agree / self.n_hits if self.n_hits else None


COLUMNS = [
    ("queries", 8), ("traces", 7), ("policy", 7), ("cert.cov", 9),
    ("coverage", 9), ("LangChain", 10), ("LiteLLM", 8), ("agree", 7),
    ("saved", 7), ("agree.all", 10), ("time", 7),
]

def legend(stand_in: bool) -> str:
    checked = "the teacher's answer (the stand-in answers the gold intent)" if stand_in else "the gold Banking77 intent"
    return "\n".join([
        "  traces     teacher traces recorded so far",
        "  policy     deployed policy version (fits run in the background while queries flow)",
        "  cert.cov   coverage the policy's certificate claims on its held-out traces",
        "  coverage   share of this window's queries answered by the surrogate (then per integration)",
        f"  agree      share of this window's surrogate answers that match {checked}",
        "  saved      LLM calls saved so far; agree.all: agreement over every surrogate answer so far",
    ])


def header() -> str:
    return " ".join(f"{name:>{width}}" for name, width in COLUMNS)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def row(*, total: Counts, window: Counts, traces: int, policy: int | None, cert_coverage: float | None,
        elapsed_s: float) -> str:
    cells = [
        f"{total.n:,}", f"{traces:,}", "-" if policy is None else f"v{policy}", _pct(cert_coverage),
        _pct(window.coverage()), _pct(window.coverage("langchain")), _pct(window.coverage("litellm")),
        _pct(window.agreement()), f"{total.n_hits:,}", _pct(total.agreement()), f"{elapsed_s:.0f}s",
    ]
    return " ".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, COLUMNS))
