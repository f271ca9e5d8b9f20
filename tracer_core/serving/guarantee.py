"""What a certificate promises, in words that say what each number is (status, report and CLI share them).

What is certified is alpha: agreement with the LLM >= alpha on all the calls the policy answers
together, for the traffic its calibration window sampled. The agreement measured on calibration
is an observation, not a bound. Over a task version's life, each certification attempt spends a
share of delta (attempt j: delta_j). Certificates written before attempts were counted lack
`attempt`, `delta_spent` and `delta_spent_total` and still render ("attempt not recorded").
"""

from __future__ import annotations

from typing import Any

from tracer_core.serving.binding import number

PER_LABEL_PROMISE = "alpha covers all answers together, not this label alone"


def lifetime_statement(delta: float) -> str:
    """The promise over the task version's whole life (every fit, refit, resume and CLI fit)."""
    return (
        "for this task version, the probability that tracer ever deploys a policy whose agreement with the LLM on the "
        f"traffic its calibration window sampled is below alpha is at most delta ({number(delta)}); each certification "
        "attempt spends a share of delta"
    )


def outcome_statement(cert: dict[str, Any]) -> str:
    """One line: what a fit handles and what is certified, or why it was refused."""
    if not cert.get("deployed"):
        return f"refused: {cert.get('reason') or 'no reason recorded'}"
    return (
        f"handles {cert['coverage']:.0%} at >= {cert['alpha'] * 100:g}% agreement "
        f"(certified: alpha {number(cert['alpha'])}, delta {number(cert['delta'])}, over all answered calls together)"
    )


def certified_statement(cert: dict[str, Any]) -> str:
    """What a deployed certificate certifies, or that a refused one certifies nothing."""
    if not cert.get("deployed"):
        return "nothing certified (the fit was refused)"
    return (
        f"agreement with the LLM >= alpha {number(cert['alpha'])} on all answered calls together, "
        "on the traffic its calibration window sampled"
    )


def _attempt(cert: dict[str, Any]) -> int | None:
    """The certificate's attempt number (0: the gate did not run), or None where it was not recorded."""
    attempt = cert.get("attempt")
    return attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None


def attempt_statement(cert: dict[str, Any]) -> str:
    """"attempt j, delta_j spent, total so far", or why there is none."""
    attempt = _attempt(cert)
    if attempt is None:
        return "attempt not recorded (certified before attempts were counted)"
    if attempt == 0:
        return "no certification attempt: the gate did not run, no delta spent"
    spent, total = cert.get("delta_spent"), cert.get("delta_spent_total")
    return (
        f"attempt {attempt}: delta_{attempt} {_share(spent)} spent, {_share(total)} of delta "
        f"{number(cert['delta'])} spent so far"
    )


def attempt_brief(cert: dict[str, Any]) -> str:
    """`attempt_statement` for a table cell: "j: delta_j spent / total so far"."""
    attempt = _attempt(cert)
    if attempt is None:
        return "not recorded"
    if attempt == 0:
        return "none"
    return f"{attempt}: {_share(cert.get('delta_spent'))} / {_share(cert.get('delta_spent_total'))} spent"


def observed_statement(cert: dict[str, Any]) -> str | None:
    """The agreement measured on the calibration calls it would answer: an observation, not a bound."""
    agreement = cert.get("agreement")
    if not cert.get("deployed") or not isinstance(agreement, float | int):
        return None
    return f"observed {agreement:.1%} on the calibration calls it would answer (a measurement, not a bound)"


def guarantee_facts(cert: dict[str, Any] | None) -> dict[str, Any] | None:
    """Every number of a certificate's promise with a sentence saying what it is (None without a certificate)."""
    if not cert:
        return None
    return {
        "alpha": cert.get("alpha"),
        "delta": cert.get("delta"),
        "deployed": bool(cert.get("deployed")),
        "certified": certified_statement(cert),
        "observed_agreement": cert.get("agreement") if cert.get("deployed") else None,
        "observed": observed_statement(cert),
        "attempt": cert.get("attempt"),
        "delta_spent": cert.get("delta_spent"),
        "delta_spent_total": cert.get("delta_spent_total"),
        "attempt_text": attempt_statement(cert),
        "lifetime": lifetime_statement(cert["delta"]) if isinstance(cert.get("delta"), float | int) else None,
    }


def _share(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float | int) and not isinstance(value, bool) else "(not recorded)"
