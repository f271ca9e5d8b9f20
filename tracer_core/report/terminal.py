"""Rich tables for `tracer status`: all tasks at a glance, or one task's summary and live counters.

Task names, labels, reasons and paths come from the store (any caller can write them), so every
string cell is a `Text` (never parsed as rich markup) and the console has markup and emoji off.
"""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from tracer_core.identity import label
from tracer_core.report.html import num, pct, usd, when


def plain_console(width: int = 120) -> Console:
    """A console that prints strings as they are: no markup, no emoji codes, no highlighting."""
    return Console(width=width, markup=False, emoji=False, highlight=False)


def plain(value: object) -> Text:
    """Any value as literal text (rich markup in it is shown, not interpreted)."""
    return Text(str(value))


def tasks_table(rows: list[dict], db: str) -> Table:
    """One row per task version: traces, serving policy, coverage, certified level and attempt, last fit, origin."""
    table = Table(title=plain(f"Task versions in {db}"))
    for column in ("task", "version", "traces", "LLM", "surrogate", "policy", "coverage", "certified alpha / delta",
                   "attempt: delta_j / total spent", "last fit", "what it came from"):
        table.add_column(column, justify="right" if column in ("traces", "LLM", "surrogate", "coverage") else "left",
                         no_wrap=column in ("task", "version"))
    for r in rows:
        policy = f"v{r['policy_version']} {r['status']}" if r["policy_version"] is not None else r["status"]
        level = f"{num(r['alpha'])} / {num(r['delta'])}" if r["alpha"] is not None else "-"
        table.add_row(
            plain(r["task"]), r["version"], num(r["traces"]), num(r["teacher"]), num(r["surrogate"]), plain(policy),
            pct(r["coverage"]), level, plain(r["attempt"] or "-"), when(r["last_fit_at"]), plain(r["origin"]),
        )
    return table


def summary_view(s: dict) -> Group:
    """The report's summary section, what is certified and the lifetime promise, and live counters by reason."""
    style = "bold green" if s["deployed"] else "bold red"
    guarantee = s.get("guarantee") or {}
    facts = Table(title=plain(f"Task {s['task']} version {label(s)}"), show_header=False)
    facts.add_column("fact")
    facts.add_column("value")
    for name, value in (
        ("teacher traces", num(s["teacher_traces"])),
        ("policy version", f"{num(s['policy_version'])} ({s['policy_status'] or 'none'})"),
        ("alpha / delta", f"{num(s['alpha'])} / {num(s['delta'])}"),
        ("certified", guarantee.get("certified") or "-"),
        ("certification attempt", guarantee.get("attempt_text") or "-"),
        ("agreement on calibration", guarantee.get("observed") or "-"),
        ("estimated coverage (calibration)", pct(s["coverage"])),
        ("trained on (train + validation)", s["trained_on"] or "-"),
        ("calibration traces (gate)", s["calibrated_on"] or "-"),
        ("embedder it needs", s["embedder"] or "-"),
        ("certificate vouches for the artifact", _verified(s["artifact_verified"])),
        ("LLM calls saved", num(s["llm_calls_saved"])),
        ("dollars saved", usd(s["dollars_saved"], s["unpriced_models"])),
        ("last fit", when(s["last_fit_at"])),
    ):
        facts.add_row(name, plain(value))
    parts: list[RenderableType] = [Text(s["verdict"], style=style), facts]
    if guarantee.get("lifetime"):
        parts.append(Text(f"lifetime guarantee: {guarantee['lifetime']}"))
    if s.get("embedder_hint"):
        parts.append(Text(f"embedder: {s['embedder_hint']}"))
    if s.get("embedder_problem"):
        parts.append(Text(s["embedder_problem"], style="bold red"))
    if s.get("suspension"):
        since = when(s["suspension"]["since"])
        parts.append(Text(f"SUSPENDED since {since}: {s['suspension']['reason']} - every call goes to the LLM",
                          style="bold red"))
    if s.get("monitor"):
        m = s["monitor"]
        parts.append(Text(f"monitor: {m['audits']} audits the policy would have answered, agreement "
                          f"{pct(m['agreement'])}, evidence against alpha {m['wealth']} (suspends at {m['reject_at']})"))
    for hour in s.get("label_free") or []:
        if hour.get("flagged"):
            parts.append(Text(
                f"drift signal in the hour from {when(hour['hour_start'])}: {', '.join(hour['flagged'])} "
                f"({hour['out_of_distribution']} out of distribution, {hour['deferred']} deferred of {hour['calls']} calls)",
                style="yellow",
            ))
    if s["last_fit_refused"]:
        parts.append(Text(f"newest refit refused: {s['last_fit_reason']}", style="yellow"))
    parts.append(live_table(s["live_last_hour"], s["live_all_time"]))
    return Group(*parts)


def _verified(verified: bool | None) -> str:
    if verified is None:
        return "-"
    return "yes (SHA-256 of artifact and labels)" if verified else "unverified (an earlier release's policy; refit to bind it)"


def live_table(hour: dict, total: dict) -> Table:
    """Calls handled by the surrogate and deferred to the LLM (by reason): last hour and all time."""
    table = Table(title="Live calls (store counts)")
    table.add_column("calls")
    table.add_column("last hour", justify="right")
    table.add_column("all time", justify="right")
    table.add_row("handled by surrogate", num(hour["handled"]), num(total["handled"]))
    table.add_row("deferred to LLM", num(hour["deferred"]), num(total["deferred"]))
    for reason in dict.fromkeys([*hour["deferred_by_reason"], *total["deferred_by_reason"]]):
        table.add_row(
            plain(f"  {reason}"), num(hour["deferred_by_reason"].get(reason, 0)), num(total["deferred_by_reason"].get(reason, 0))
        )
    for kind, name in (("cached", "  answered from the caller's cache"), ("unparsed", "  answers that did not parse")):
        if total.get(kind):
            table.add_row(name, num(hour.get(kind, 0)), num(total[kind]))
    table.add_row("handled share", pct(hour["handled_share"]), pct(total["handled_share"]))
    return table
