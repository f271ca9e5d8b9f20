"""How coverage grows with traces: per policy version, prefix refits, plateau and projection."""

from __future__ import annotations

import warnings

import numpy as np

from tracer_core.learning.embedder import EmbedFn
from tracer_core.serving.binding import number
from tracer_core.serving.guarantee import attempt_statement

PREFIX_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
MIN_VERSIONS = 3  # fewer stored versions than this: refit on growing prefixes as well
MIN_PREFIX = 20
PLATEAU_GAIN = 0.01  # coverage gained over the last step below this (1 point) is a plateau


def version_points(policies: list[dict]) -> list[dict]:
    """One point per stored policy version (refused versions handle nothing)."""
    points = []
    for row in sorted(policies, key=lambda r: r["version"]):
        cert = row["certificate"]
        points.append({
            "version": row["version"],
            "n_traces": row["n_traces"],
            "status": row["status"],
            "coverage": float(cert.get("coverage") or 0.0) if cert.get("deployed") else 0.0,
            "level": _level(cert),
            "attempt": attempt_statement(cert) if "delta" in cert else "-",
            "reason_code": cert.get("reason_code"),
        })
    return points


def prefix_points(
    texts: list[str], labels: list[str], ids: list[int], current: dict, embed: EmbedFn,
    fractions: tuple[float, ...] = PREFIX_FRACTIONS,
) -> list[dict]:
    """Fit (without saving) on the first 25/50/75/100% of the teacher traces at the current alpha/delta.

    A prefix holding exactly the current certificate's data reuses that certificate instead of refitting.
    """
    from tracer_core.learning.fit import data_hash, fit_policy

    points = []
    for fraction in fractions:
        n = round(fraction * len(texts))
        if n < MIN_PREFIX:
            continue
        if current.get("data_hash") == data_hash(texts[:n], labels[:n]):
            cert = current
        else:
            _, fitted = fit_policy(
                texts[:n], labels[:n], alpha=current["alpha"], delta=current["delta"], embed=embed, ids=ids[:n]
            )
            cert = fitted.to_dict()
        points.append({
            "fraction": fraction,
            "n_traces": n,
            "coverage": float(cert.get("coverage") or 0.0) if cert.get("deployed") else 0.0,
            "level": _level(cert),
            "deployed": bool(cert.get("deployed")),
            "reason_code": cert.get("reason_code"),
        })
    return points


def _level(cert: dict) -> str:
    alpha, delta = cert.get("alpha"), cert.get("delta")
    return f"{number(alpha)} / {number(delta)}" if isinstance(alpha, float | int) and isinstance(delta, float | int) else "-"


def plateau(points: list[dict]) -> dict:
    """Did the last step of traces still raise coverage? Needs two fits of different sizes."""
    if points and points[-1]["coverage"] == 0.0:
        return {
            "plateau": False, "gain": None, "over_traces": None,
            "message": f"nothing certified yet at {points[-1]['n_traces']:,} traces "
                       f"({points[-1]['reason_code']}): more traces are needed",
        }
    if len(points) < 2 or points[-1]["n_traces"] <= points[-2]["n_traces"]:
        return {"plateau": None, "gain": None, "over_traces": None, "message": "not enough fits to judge a plateau"}
    gain = points[-1]["coverage"] - points[-2]["coverage"]
    span = points[-1]["n_traces"] - points[-2]["n_traces"]
    flat = gain < PLATEAU_GAIN
    verdict = "plateau: more traces stopped helping" if flat else "still improving"
    return {
        "plateau": flat,
        "gain": gain,
        "over_traces": span,
        "message": f"coverage {gain * 100:+.1f}% over the last {span:,} traces: {verdict}",
    }


def project(points: list[dict], factor: float = 2.0) -> dict | None:
    """Coverage projected at `factor` x the traces from the fits that handled something.

    A saturating curve a - b*n^-c with three or more such fits, a log-linear one with two, else None.
    """
    useful = [p for p in points if p["coverage"] > 0.0]
    n = np.array([p["n_traces"] for p in useful], dtype=float)
    cov = np.array([p["coverage"] for p in useful], dtype=float)
    if len(np.unique(n)) < 2:
        return None
    target = float(points[-1]["n_traces"] * factor)
    method, value = "log-linear fit", _log_linear(n, cov, target)
    if len(np.unique(n)) >= 3:
        saturating = _saturating(n, cov, target)
        if saturating is not None:
            method, value = "saturating fit coverage = a - b * n^-c", saturating
    value = float(np.clip(value, 0.0, 1.0))
    return {
        "n_traces": int(target),
        "coverage": value,
        "method": method,
        "message": f"projection (not certified): about {value:.0%} coverage at {int(target):,} traces ({method})",
    }


def _log_linear(n: np.ndarray, cov: np.ndarray, target: float) -> float:
    slope, intercept = np.polyfit(np.log(n), cov, 1)
    return float(intercept + slope * np.log(target))


def _saturating(n: np.ndarray, cov: np.ndarray, target: float) -> float | None:
    from scipy.optimize import curve_fit

    def curve(x, a, b, c):
        return a - b * np.power(x, -c)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (a, b, c), _ = curve_fit(
                curve, n, cov, p0=(min(1.0, cov.max() + 0.05), 1.0, 0.5),
                bounds=([0.0, 0.0, 0.01], [1.0, np.inf, 3.0]), maxfev=5000,
            )
    except (RuntimeError, ValueError):
        return None
    return float(curve(target, a, b, c))


def evolution_facts(
    policies: list[dict],
    teacher: tuple[list[str], list[str], list[int]],
    cert: dict | None,
    embed: EmbedFn,
    fractions: tuple[float, ...] = PREFIX_FRACTIONS,
) -> dict:
    """Versions, prefix refits when versions are few, a plateau verdict and a 2x projection."""
    versions = version_points(policies)
    prefixes: list[dict] = []
    if len(versions) < MIN_VERSIONS and cert is not None:
        prefixes = prefix_points(*teacher, cert, embed, fractions)
    series = prefixes if len(prefixes) > len(versions) else versions
    return {
        "source": "certificates: each fit's coverage on its own calibration traces, its level and attempt "
                  "(prefix refits are neither saved nor deployed, so they are no attempts)",
        "versions": versions,
        "prefixes": prefixes,
        "series": "prefixes" if series is prefixes else "versions",
        "plateau": plateau(series),
        "projection": project(series),
    }
