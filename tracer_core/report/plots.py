"""The report's figures drawn as inline SVG: no plotting library, no script, a few kilobytes each.

Every mark carries a `<title>` (the browser shows it on hover). The input map draws at most
MAX_MAP_POINTS calibration inputs, a fixed-seed random sample beyond that, and says so in its title.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape

import numpy as np

from tracer_core.report.summary import NOT_ROUTED

HANDLED_COLOR = "#2a9d8f"
DEFERRED_COLOR = "#e76f51"
LIVE_COLOR = "#264653"
LINE_COLOR = "#999"
MAX_MAP_POINTS = 2000
WIDTH, LEFT, RIGHT, TOP, BOTTOM = 860, 64, 250, 36, 46  # the legend sits right of the plot area


@dataclass
class Series:
    """Points (x, y, hover text) drawn as markers, optionally joined by a line."""

    name: str
    points: list[tuple[float, float, str]]
    color: str
    line: str | None = None  # None: markers only; else "solid" or "dash"
    marker: str = "circle"  # or "star"
    size: float = 4.5
    opacity: float = 1.0


@dataclass
class Axis:
    title: str
    fmt: Callable[[float], str] = lambda v: f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    fixed: tuple[float, float] | None = None  # the range, when not taken from the data
    marks: list[float] = field(default_factory=list)  # dotted vertical lines (x axis only)


def percent(value: float) -> str:
    return f"{value:.0%}"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values spanning [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _span(values: list[float], fixed: tuple[float, float] | None) -> tuple[float, float]:
    if fixed is not None:
        return fixed
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
    return low - pad, high + pad


def _frame(div_id: str, title: str, height: int, body: str) -> str:
    return (f'<div class="plot" id="{div_id}"><svg class="plot-svg" role="img" viewBox="0 0 {WIDTH} {height}" '
            f'width="100%" style="max-width:{WIDTH}px" xmlns="http://www.w3.org/2000/svg" font-size="12" '
            f'font-family="system-ui,sans-serif"><title>{escape(title)}</title>'
            f'<text x="{LEFT}" y="20" font-size="14" font-weight="600">{escape(title)}</text>{body}</svg></div>')


def _legend(entries: list[tuple[str, str]]) -> str:
    x = WIDTH - RIGHT + 14
    return "".join(f'<rect x="{x}" y="{TOP + 18 * i}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{x + 16}" y="{TOP + 18 * i + 9}">{escape(name)}</text>'
                   for i, (name, color) in enumerate(entries))


def _axes(xs: tuple[float, float], ys: tuple[float, float], x_axis: Axis, y_axis: Axis, height: int,
          x_ticks: list[float] | None) -> tuple[str, Callable[[float], float], Callable[[float], float]]:
    """Grid, tick labels and axis titles, and the data-to-pixel maps."""
    right, bottom = WIDTH - RIGHT, height - BOTTOM

    def px(v: float) -> float:
        return LEFT + (v - xs[0]) / (xs[1] - xs[0] or 1.0) * (right - LEFT)

    def py(v: float) -> float:
        return bottom - (v - ys[0]) / (ys[1] - ys[0] or 1.0) * (bottom - TOP)

    parts = [f'<rect x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{bottom - TOP}" fill="none" stroke="#ddd"/>']
    for v in _ticks(*ys):
        parts.append(f'<line x1="{LEFT}" x2="{right}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#eee"/>'
                     f'<text x="{LEFT - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{escape(y_axis.fmt(v))}</text>')
    for v in _ticks(*xs) if x_ticks is None else x_ticks:
        parts.append(f'<text x="{px(v):.1f}" y="{bottom + 16}" text-anchor="middle">{escape(x_axis.fmt(v))}</text>')
    for v in x_axis.marks:
        parts.append(f'<line x1="{px(v):.1f}" x2="{px(v):.1f}" y1="{TOP}" y2="{bottom}" stroke="#555" '
                     f'stroke-dasharray="2,3"/>')
    parts.append(f'<text x="{(LEFT + right) / 2}" y="{height - 8}" text-anchor="middle">{escape(x_axis.title)}</text>'
                 f'<text transform="translate(14 {(TOP + bottom) / 2}) rotate(-90)" text-anchor="middle">'
                 f"{escape(y_axis.title)}</text>")
    return "".join(parts), px, py


def _marker(series: Series, x: float, y: float, tip: str) -> str:
    tip = f"<title>{escape(tip)}</title>" if tip else ""
    if series.marker == "star":
        r = series.size * 2
        corners = " ".join(f"{x + (r if i % 2 == 0 else r / 2.5) * math.sin(i * math.pi / 5):.1f},"
                           f"{y - (r if i % 2 == 0 else r / 2.5) * math.cos(i * math.pi / 5):.1f}" for i in range(10))
        return f'<polygon points="{corners}" fill="none" stroke="{series.color}" stroke-width="1.5">{tip}</polygon>'
    return (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{series.size}" fill="{series.color}" '
            f'fill-opacity="{series.opacity}">{tip}</circle>')


def chart(div_id: str, title: str, series: list[Series], x_axis: Axis, y_axis: Axis, height: int = 420) -> str:
    """A scatter/line chart of `series` with a legend."""
    points = [p for s in series for p in s.points]
    xs = _span([p[0] for p in points] + x_axis.marks, x_axis.fixed)
    ys = _span([p[1] for p in points], y_axis.fixed)
    frame, px, py = _axes(xs, ys, x_axis, y_axis, height, None)
    parts = [frame]
    for s in series:
        if s.line and len(s.points) > 1:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y, _ in s.points)
            dash = ' stroke-dasharray="6,4"' if s.line == "dash" else ""
            parts.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="2"{dash}/>')
        parts.extend(_marker(s, px(x), py(y), tip) for x, y, tip in s.points)
    parts.append(_legend([(s.name, s.color) for s in series]))
    return _frame(div_id, title, height, "".join(parts))


def bars(div_id: str, title: str, categories: list[str], groups: list[tuple[str, str, list[float]]],
         y_title: str, height: int = 420) -> str:
    """Grouped bars: one group per category, one bar per (name, color, values) entry."""
    top = max([v for _, _, values in groups for v in values] + [1.0])
    frame, px, py = _axes((0.0, float(len(categories))), (0.0, top * 1.08), Axis(""), Axis(y_title), height, [])
    parts = [frame]
    slot = (px(1.0) - px(0.0)) * 0.8 / max(len(groups), 1)
    for c, category in enumerate(categories):
        for g, (name, color, values) in enumerate(groups):
            x = px(c + 0.1) + g * slot
            parts.append(f'<rect x="{x:.1f}" y="{py(values[c]):.1f}" width="{slot * 0.95:.1f}" '
                         f'height="{py(0.0) - py(values[c]):.1f}" fill="{color}"><title>{escape(category)}, '
                         f'{escape(name)}: {values[c]:,.0f}</title></rect>')
        parts.append(f'<text x="{px(c + 0.5):.1f}" y="{height - BOTTOM + 16}" text-anchor="middle" font-size="11">'
                     f"{escape(category)}</text>")
    parts.append(_legend([(name, color) for name, color, _ in groups]))
    return _frame(div_id, title, height, "".join(parts))


def frontier_plot(frontier: dict) -> str:
    points = [(p["alpha"], p["coverage"], f"alpha {p['alpha']:.3f}: estimated coverage {p['coverage']:.1%}")
              for p in frontier["points"]]
    marks = [frontier["alpha"]] if frontier.get("alpha") is not None else []
    return chart("plot-frontier", "Estimated coverage against required agreement (alpha): estimates, not certificates",
                 [Series("estimated coverage (not certified)", points, HANDLED_COLOR, line="solid")],
                 Axis("alpha (required agreement); dotted: the certified alpha", marks=marks),
                 Axis("estimated coverage", percent))


def evolution_plot(evolution: dict) -> str:
    series = [
        Series(f"coverage ({name})", [(p["n_traces"], p["coverage"], f"{p['n_traces']:,} traces: {p['coverage']:.1%}")
                                      for p in evolution[key]], HANDLED_COLOR, line=dash)
        for key, name, dash in (("versions", "policy versions", "solid"), ("prefixes", "refit on prefixes", "dash"))
        if evolution[key]
    ]
    if projection := evolution.get("projection"):
        series.append(Series("projection (not certified)", [(projection["n_traces"], projection["coverage"],
                                                              projection["message"])], LIVE_COLOR, marker="star"))
    return chart("plot-evolution", "Coverage against traces", series, Axis("teacher traces"),
                 Axis("share", percent, fixed=(0.0, 1.05)))


def deferral_plot(deferrals: dict) -> str:
    rows = {key: {r: row["n"] for r, row in deferrals[key].items() if r != NOT_ROUTED} for key in ("calibration", "live")}
    categories = list(dict.fromkeys([*rows["calibration"], *rows["live"]]))
    groups = [(name, color, [float(rows[key].get(c, 0)) for c in categories])
              for key, name, color in (("calibration", "held-out calibration", DEFERRED_COLOR),
                                       ("live", "live traffic", LIVE_COLOR)) if rows[key]]
    return bars("plot-deferrals", "Deferrals by reason (calls recorded without routing not shown)", categories, groups,
                "calls")


def region_plot(regions: dict) -> str:
    points = regions["points"]
    shown = points
    if len(points) > MAX_MAP_POINTS:
        keep = np.sort(np.random.default_rng(0).choice(len(points), MAX_MAP_POINTS, replace=False))
        shown = [points[i] for i in keep]
    method = (regions.get("method") or "pca").upper()
    title = f"Calibration inputs in embedding space ({method})"
    if len(shown) < len(points):
        title += f": a random {len(shown):,} of {len(points):,} shown"
    series = [
        Series(name, [(p["x"], p["y"], f"LLM label: {p['label']}; surrogate: {p['predicted'] or '-'}; {p['reason']}; "
                                       f"{p['input']}") for p in shown if p["handled"] is handled],
               color, opacity=0.7)
        for handled, name, color in ((True, "handled", HANDLED_COLOR), (False, "deferred", DEFERRED_COLOR))
    ]
    return chart("plot-regions", title, series, Axis(f"{method} 1"), Axis(f"{method} 2"), height=560)
