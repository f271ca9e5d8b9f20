"""Plotly figures of the report, rendered as HTML fragments (plotly.js is inlined once by the page)."""

from __future__ import annotations

from tracer_core.errors import TracerError
from tracer_core.report.summary import NOT_ROUTED

HANDLED_COLOR = "#2a9d8f"
DEFERRED_COLOR = "#e76f51"
LIVE_COLOR = "#264653"


def _go():
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise TracerError("the HTML report needs plotly: pip install 'tracer-router[report]'") from None
    return go


def plotly_js() -> str:
    """The full plotly.js bundle, to inline in the page (no CDN)."""
    _go()
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _fragment(fig, div_id: str, height: int = 420) -> str:
    fig.update_layout(template="plotly_white", margin=dict(l=60, r=20, t=40, b=50), height=height)
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})


def frontier_plot(frontier: dict) -> str:
    go = _go()
    points = frontier["points"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[p["alpha"] for p in points], y=[p["coverage"] for p in points], mode="lines+markers",
        line=dict(color="#999"), marker=dict(color=HANDLED_COLOR, size=8), name="estimated coverage (not certified)",
        hovertemplate="alpha %{x:.3f}<br>estimated coverage %{y:.1%}<extra></extra>",
    ))
    if frontier.get("alpha") is not None:
        fig.add_vline(x=frontier["alpha"], line_dash="dot", annotation_text="certified alpha")
    fig.update_layout(title="Estimated coverage against required agreement (alpha): estimates, not certificates",
                      xaxis_title="alpha (required agreement)", yaxis=dict(title="estimated coverage", tickformat=".0%"))
    return _fragment(fig, "plot-frontier")


def evolution_plot(evolution: dict) -> str:
    go = _go()
    fig = go.Figure()
    for key, name, dash in (("versions", "policy versions", "solid"), ("prefixes", "refit on prefixes", "dash")):
        points = evolution[key]
        if not points:
            continue
        fig.add_trace(go.Scatter(x=[p["n_traces"] for p in points], y=[p["coverage"] for p in points],
                                 mode="lines+markers", name=f"coverage ({name})", line=dict(color=HANDLED_COLOR, dash=dash)))
    projection = evolution.get("projection")
    if projection:
        fig.add_trace(go.Scatter(x=[projection["n_traces"]], y=[projection["coverage"]], mode="markers",
                                 name="projection (not certified)",
                                 marker=dict(symbol="star-open", size=14, color=HANDLED_COLOR)))
    fig.update_layout(title="Coverage against traces", xaxis_title="teacher traces",
                      yaxis=dict(title="share", tickformat=".0%", range=[0, 1.05]))
    return _fragment(fig, "plot-evolution")


def deferral_plot(deferrals: dict) -> str:
    go = _go()
    fig = go.Figure()
    for key, name, color in (("calibration", "held-out calibration", DEFERRED_COLOR), ("live", "live traffic", LIVE_COLOR)):
        rows = {reason: row for reason, row in deferrals[key].items() if reason != NOT_ROUTED}
        if rows:
            fig.add_trace(go.Bar(x=list(rows), y=[r["n"] for r in rows.values()], name=name, marker_color=color))
    fig.update_layout(title="Deferrals by reason (calls recorded without routing not shown)", barmode="group",
                      yaxis_title="calls")
    return _fragment(fig, "plot-deferrals")


def region_plot(regions: dict) -> str:
    go = _go()
    fig = go.Figure()
    for handled, name, color in ((True, "handled", HANDLED_COLOR), (False, "deferred", DEFERRED_COLOR)):
        chosen = [p for p in regions["points"] if p["handled"] is handled]
        fig.add_trace(go.Scatter(
            x=[p["x"] for p in chosen], y=[p["y"] for p in chosen], mode="markers", name=name,
            marker=dict(color=color, size=7, opacity=0.75),
            customdata=[[p["label"], p["predicted"] or "-", p["reason"], p["input"]] for p in chosen],
            hovertemplate="LLM label: %{customdata[0]}<br>surrogate: %{customdata[1]}<br>"
                          "%{customdata[2]}<br>%{customdata[3]}<extra></extra>",
        ))
    method = (regions.get("method") or "pca").upper()
    fig.update_layout(title=f"Calibration inputs in embedding space ({method})",
                      xaxis_title=f"{method} 1", yaxis_title=f"{method} 2")
    return _fragment(fig, "plot-regions", height=560)
