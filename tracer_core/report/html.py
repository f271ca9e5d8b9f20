"""Render report facts as one self-contained HTML page (inline CSS, inline JS, plots as inline SVG)."""

from __future__ import annotations

import datetime
from html import escape

from tracer_core.report import plots
from tracer_core.report.summary import NOT_ROUTED

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0 auto;max-width:1180px;padding:24px;color:#222}
h1{margin-bottom:4px}h2{margin-top:40px;border-bottom:2px solid #eee;padding-bottom:4px}
.source{color:#666;font-size:13px;margin-top:-6px}.verdict{font-size:20px;padding:12px 16px;border-radius:6px}
.ok{background:#e6f4f1;border-left:6px solid #2a9d8f}.refused{background:#fbeee9;border-left:6px solid #e76f51}
table{border-collapse:collapse;margin:8px 0;font-size:14px}th,td{padding:4px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#fafafa}table.sortable th{cursor:pointer;user-select:none}table.sortable th:after{content:" \\2195";color:#bbb}
td.num{text-align:right;font-variant-numeric:tabular-nums}.ex{color:#444;font-style:italic}.note{color:#555}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px;margin:10px 0 18px}.pair div{padding:8px 12px;border-radius:6px}
"""

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v, nx = parseFloat(x), ny = parseFloat(y);
        if (!isNaN(nx) && !isNaN(ny)) return dir * (nx - ny);
        return dir * String(x).localeCompare(String(y));
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  table.dataset.sortable = 'ready';
});
"""


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def num(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.4g}"


def usd(value: float | None, unpriced: list[str] | None = None) -> str:
    """Dollars; where no recorded LLM call has a price (`unpriced`: its models), says so instead of $0.0000."""
    if value is None:
        return f"no price known for {', '.join(unpriced) or 'the LLM'}" if unpriced is not None else "-"
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def when(ts: float | None) -> str:
    return "-" if not ts else datetime.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def table(headers: list[str], rows: list[list], *, sortable: bool = False, table_id: str = "") -> str:
    """An HTML table; cells are (shown, sort value) pairs or plain values (escaped)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            shown, value = cell if isinstance(cell, tuple) else (cell, cell)
            klass = ' class="num"' if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
            sort_value = "" if value is None else value
            cells.append(f'<td{klass} data-v="{escape(str(sort_value))}">{escape(str(shown))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    attrs = (' class="sortable"' if sortable else "") + (f' id="{table_id}"' if table_id else "")
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def section(anchor: str, title: str, source: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2><p class="source">Source: {escape(source)}</p>{body}</section>'


def calibration_note(c: dict) -> str:
    if not c["n"]:
        return ""
    return (f'<p class="note" id="recheck">Re-measured on {c["n"]:,} held-out calibration traces routed through the policy: '
            f'handles {pct(c["coverage"])}, agreeing with the LLM on {pct(c["agreement"])} of those.</p>')


def summary_html(s: dict) -> str:
    klass = "ok" if s["deployed"] and not s.get("suspension") else "refused"
    guarantee = s.get("guarantee") or {}
    rows = [
        ["task", s["task"]],
        ["fingerprint", s["fingerprint"] or "-"],
        ["teacher traces (LLM calls recorded)", num(s["teacher_traces"])],
        ["surrogate traces (calls answered by tracer)", num(s["traces"]["surrogate"])],
        ["policy version", num(s["policy_version"]) + (f" ({s['policy_status']})" if s["policy_status"] else "")],
        ["alpha / delta", f"{num(s['alpha'])} / {num(s['delta'])}"],
        ["certified", guarantee.get("certified") or "-"],
        ["certification attempt", guarantee.get("attempt_text") or "-"],
        ["agreement on calibration", guarantee.get("observed") or "-"],
        ["estimated coverage (share handled)", pct(s["coverage"])],
        ["traces trained on (train + validation)", s["trained_on"] or "-"],
        ["calibration traces the gate tested on", s["calibrated_on"] or "-"],
        ["embedder the policy needs", s["embedder"] or "-"],
        ["certificate vouches for the artifact (SHA-256)",
         "-" if s["artifact_verified"] is None else "yes" if s["artifact_verified"] else "unverified (an earlier release's policy)"],
        ["LLM calls saved so far", num(s["llm_calls_saved"])],
        ["mean recorded LLM cost per call", usd(s["mean_teacher_cost_usd"], s["unpriced_models"])],
        ["dollars saved so far", usd(s["dollars_saved"], s["unpriced_models"])],
        ["last fit", when(s["last_fit_at"])],
    ]
    monitor = s.get("monitor")
    if monitor:
        rows.append(["live-agreement monitor (audits the policy would have answered)",
                     f"{num(monitor['audits'])} audits, agreement {pct(monitor['agreement'])}, "
                     f"evidence {monitor['wealth']} (suspends at {monitor['reject_at']})"])
    extra = ""
    if guarantee.get("lifetime"):
        extra += f'<p class="note" id="lifetime">Lifetime guarantee: {escape(guarantee["lifetime"])}.</p>'
    if s.get("embedder_hint"):
        extra += f'<p class="note" id="embedder-hint">Embedder: {escape(s["embedder_hint"])}.</p>'
    if s.get("embedder_problem"):
        extra += (f'<p class="note" id="embedder">The calibration sections are not re-measured: '
                  f'{escape(s["embedder_problem"])}.</p>')
    if s.get("suspension"):
        extra += (f'<p class="note" id="suspension">Suspended since {when(s["suspension"]["since"])}: '
                  f'{escape(s["suspension"]["reason"])}. Every call goes to the LLM.</p>')
    flagged = [h for h in s.get("label_free") or [] if h.get("flagged")]
    if flagged:
        extra += "".join(
            f'<p class="note">Drift signal in the hour from {when(h["hour_start"])}: {escape(", ".join(h["flagged"]))} '
            f'({h["out_of_distribution"]} out of distribution, {h["deferred"]} deferred of {h["calls"]} calls).</p>'
            for h in flagged)
    if s["last_fit_refused"]:
        extra += f'<p class="note">The newest refit was refused ({escape(s["last_fit_reason"] or "")}); the version above still serves.</p>'
    if not s["deployed"] and s["reason"]:
        extra += f'<p class="note">Why: {escape(s["reason"])}</p>'
    return f'<p class="verdict {klass}" id="verdict">{escape(s["verdict"])}</p>{extra}{table(["", ""], rows)}'


def frontier_html(f: dict) -> str:
    if not f["points"]:
        return '<p class="note">No frontier: the certificate has no frontier estimates.</p>'
    rows = [[num(p["alpha"]), pct(p["coverage"])] for p in f["points"]]
    note = f'<p class="note" id="frontier-note">{escape(f["note"])}</p>'
    return note + plots.frontier_plot(f) + table(["alpha", "estimated coverage (not certified)"], rows)


def evolution_html(e: dict) -> str:
    rows = [[f"v{p['version']}", num(p["n_traces"]), p["status"], pct(p["coverage"]), p["level"], p["attempt"]]
            for p in e["versions"]]
    rows += [[f"prefix {p['fraction']:.0%}", num(p["n_traces"]), "would deploy" if p["deployed"] else p["reason_code"],
              pct(p["coverage"]), p["level"], "not saved: no attempt"] for p in e["prefixes"]]
    if not rows:
        return '<p class="note">No fits yet.</p>'
    notes = f'<p id="plateau"><b>{escape(e["plateau"]["message"])}</b></p>'
    if e["projection"]:
        notes += f'<p id="projection">{escape(e["projection"]["message"])}</p>'
    return notes + plots.evolution_plot(e) + table(["fit", "traces", "status", "coverage", "alpha / delta", "attempt"], rows)


def per_label_html(p: dict) -> str:
    rows = []
    for r in p["rows"]:
        confused = ", ".join(f"{lab} ({n})" for lab, n in r["confused_with"]) or "-"
        rows.append([
            r["label"], r["traces"], (pct(r["share"]), r["share"]), r["status_text"], num(r["n_calibration"]),
            (pct(r["handled_rate"]), r["handled_rate"]), (pct(r["agreement"]), r["agreement"]),
            r["main_deferral_reason"] or "-", confused,
        ])
    headers = ["label", "traces", "share of traffic", "status", "calibration n", "handled", "observed agreement (handled)",
               "main deferral reason", "confused with"]
    note = f'<p class="note" id="per-label-note">{escape(p["note"])} Click a column to sort.</p>'
    return note + table(headers, rows, sortable=True, table_id="per-label")


def deferral_html(d: dict) -> str:
    parts = []
    reasons = list(dict.fromkeys([*d["calibration"], *d["live"]]))
    if not reasons:
        return '<p class="note">No deferrals recorded.</p>'
    if set(reasons) - {NOT_ROUTED}:
        parts.append(plots.deferral_plot(d))
    for reason in reasons:
        cal = d["calibration"].get(reason, {"n": 0, "share": 0.0, "examples": []})
        live = d["live"].get(reason, {"n": 0, "examples": []})
        examples = [f"{e['input']}  [LLM: {e['label']}, surrogate: {e['predicted'] or '-'}, score {e['score']:.2f}]"
                    for e in cal["examples"]] + list(live["examples"])
        items = "".join(f'<li class="ex">{escape(x)}</li>' for x in examples)
        parts.append(
            f'<h3>{escape(reason)}</h3><p>{escape(d["descriptions"].get(reason, ""))}. '
            f'Calibration: {cal["n"]:,} of {d["calibration_n"]:,} ({pct(cal["share"])}); live: {live["n"]:,} calls.</p>'
            f"<ul>{items}</ul>"
        )
    return "".join(parts)


def boundary_html(b: dict) -> str:
    if not b["pairs"]:
        return '<p class="note">No label has both handled and deferred calibration inputs.</p>'
    parts = []
    for p in b["pairs"]:
        competing = f"{p['competing_label']} (p={p['competing_probability']:.2f})" if p["competing_label"] else "-"
        parts.append(
            f"<h3>{escape(p['label'])}</h3><p class=\"note\">cosine similarity {p['similarity']:.2f}; "
            f"competing label for the deferred input: <b>{escape(competing)}</b></p><div class=\"pair\">"
            f"<div class=\"ok\"><b>handled</b> (score {p['handled']['score']:.2f})<br>{escape(p['handled']['input'])}</div>"
            f"<div class=\"refused\"><b>deferred: {escape(p['deferred']['reason'])}</b> (score {p['deferred']['score']:.2f}, "
            f"surrogate said {escape(str(p['deferred']['predicted']))})<br>{escape(p['deferred']['input'])}</div></div>"
        )
    return "".join(parts)


def regions_html(r: dict) -> str:
    if not r["points"]:
        return '<p class="note">No calibration inputs to map (no deployed policy).</p>'
    return plots.region_plot(r)


def suspects_html(s: dict) -> str:
    if s["unavailable"]:
        return f'<p class="note">{escape(s["unavailable"])}</p>'
    parts = [f'<p id="suspect-count">{s["n_suspects"]:,} of {s["n_traces"]:,} teacher traces score at least '
             f'{s["min_score"]:.2f}: the evidence gives another label that much more probability than the '
             "LLM's label.</p>"]
    if s["confused_pairs"]:
        items = "".join(f"<li><code>{escape(p['labels'][0])}</code> vs <code>{escape(p['labels'][1])}</code>: "
                        f"{p['message'].rsplit(': ', 1)[1]}</li>" for p in s["confused_pairs"])
        parts.append(f'<h3>Label pairs to clarify</h3><ul id="confused-pairs">{items}</ul>')
    rows = [
        [(f"{x['score']:.2f}", x["score"]), x["id"], x["input"], x["teacher_label"], x["suggested_label"],
         "; ".join(f"{n['label']} ({n['similarity']:.2f})" for n in x["neighbours"])]
        for x in s["suspects"]
    ]
    if rows:
        parts.append(table(["score", "trace", "input", "LLM label", "evidence says", "nearest traces (similarity)"],
                           rows, sortable=True, table_id="suspects-table"))
    return "".join(parts)


def render_html(facts: dict) -> str:
    """The whole report page."""
    s = facts["summary"]
    sections = [
        section("summary", "1. Summary", "certificate (held-out calibration) and live store counts",
                summary_html(s) + calibration_note(facts["calibration"])),
        section("frontier", "2. Frontier", facts["frontier"]["source"], frontier_html(facts["frontier"])),
        section("evolution", "3. Evolution", facts["evolution"]["source"], evolution_html(facts["evolution"])),
        section("labels", "4. Per label", facts["per_label"]["source"], per_label_html(facts["per_label"])),
        section("deferrals", "5. Why it defers", f"{facts['deferrals']['source']['calibration']}; "
                f"{facts['deferrals']['source']['live']}", deferral_html(facts["deferrals"])),
        section("boundary", "6. Boundary examples", facts["boundary"]["source"], boundary_html(facts["boundary"])),
        section("regions", "7. Input regions", facts["regions"]["source"], regions_html(facts["regions"])),
        section("suspects", "8. Teacher suspects", facts["suspects"]["source"], suspects_html(facts["suspects"])),
    ]
    title = f"tracer report: {s['task']}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1><p class=\"source\">generated {when(facts['generated_at'])}</p>"
        + "".join(sections)
        + f"<script>{SORT_JS}</script></body></html>"
    )
