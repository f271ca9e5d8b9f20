"""Facts of the frontier, per-label, deferral, boundary, input-region and teacher-suspect sections."""

from __future__ import annotations

from collections import Counter

import numpy as np

from tracer_core.decision import REASON_TEXT
from tracer_core.learning.embedder import EmbedFn
from tracer_core.learning.suspects import SuspectsError, teacher_suspects
from tracer_core.learning.suspects_cache import EvidenceCache
from tracer_core.report.calibration import CalibrationRouting
from tracer_core.report.summary import NOT_ROUTED
from tracer_core.serving.guarantee import PER_LABEL_PROMISE

CALIBRATION_SOURCE = "held-out calibration traces (never trained on), routed through the policy"
LIVE_SOURCE = "live traffic: store counts of recorded calls"
EXAMPLES_PER_REASON = 3
BOUNDARY_LABELS = 5
REPORTED_SUSPECTS = 20
MAX_TEXT = 300

REASONS: dict[str, str] = {**{str(k): v for k, v in REASON_TEXT.items()}, NOT_ROUTED: "recorded without a routing decision (imported, or observed before tracer routed)"}


def clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


FRONTIER_NOTE = (
    "Estimates, not certificates: the coverage a policy might reach at each alpha, from one fit's data. Only the "
    "deployed policy's alpha is certified; a fit at another alpha is a new certification attempt that spends its "
    "own share of delta."
)
PER_LABEL_NOTE = (
    "No label is certified on its own: alpha holds for all answered calls together, so one label's observed "
    "agreement can be below alpha while the whole stays above it."
)
LABEL_STATUS = {  # a certificate's per-label status -> what the report calls it, and says on its line
    "certified": ("answered", f"answered ({PER_LABEL_PROMISE})"),
    "too_rare": ("too_rare", "too rare to train: deferred"),
    "not_in_policy": ("not_in_policy", "not in the policy: deferred"),
}


def frontier_facts(cert: dict | None) -> dict:
    """Coverage against alpha from the certificate's frontier: estimates, never certified."""
    points = [dict(p) for p in (cert or {}).get("frontier") or []]
    return {
        "source": "certificate: estimated coverage at each alpha (not certified)",
        "note": FRONTIER_NOTE,
        "certified": False,
        "alpha": (cert or {}).get("alpha"),
        "points": points,
    }


def per_label_facts(routing: CalibrationRouting | None, cert: dict | None, teacher_labels: list[str]) -> dict:
    """One row per label: traffic, handled rate and agreement on calibration, deferral cause, confusions."""
    traffic = Counter(teacher_labels)
    total = len(teacher_labels)
    cert_labels = (cert or {}).get("per_label") or {}
    rows = []
    for label in sorted(set(traffic) | set(cert_labels), key=lambda lab: (-traffic[lab], lab)):
        info = cert_labels.get(label, {})
        status, status_text = LABEL_STATUS.get(info.get("status", "not_in_policy"), (info.get("status"), info.get("status")))
        row = {
            "label": label,
            "traces": traffic[label],
            "share": traffic[label] / total if total else 0.0,
            "n_train": info.get("n_train"),
            "status": status,
            "status_text": status_text,
            "n_calibration": info.get("n_calibration"),
            "handled_rate": None,
            "agreement": info.get("agreement"),
            "agreement_all": info.get("agreement_all"),
            "main_deferral_reason": None,
            "confused_with": [list(pair) for pair in info.get("confused_with", [])],
        }
        if routing is not None:
            row.update(_label_on_calibration(routing, label))
        rows.append(row)
    source = CALIBRATION_SOURCE if routing else "certificate (no deployed policy to route)"
    return {"source": source, "note": PER_LABEL_NOTE, "rows": rows}


def _label_on_calibration(routing: CalibrationRouting, label: str) -> dict:
    mine = np.array([t == label for t in routing.labels], dtype=bool)
    n = int(mine.sum())
    handled = mine & routing.handled
    agrees = routing.agrees
    deferred_reasons = Counter(r for r, m, h in zip(routing.reasons, mine, routing.handled) if m and not h)
    confused = Counter(p for p, m in zip(routing.predicted, mine) if m and p is not None and p != label)
    return {
        "n_calibration": n,
        "handled_rate": float(handled.sum() / n) if n else None,
        "agreement": float(agrees[handled].mean()) if handled.any() else None,
        "agreement_all": float(agrees[mine].mean()) if n else None,
        "main_deferral_reason": deferred_reasons.most_common(1)[0][0] if deferred_reasons else None,
        "confused_with": [[lab, c] for lab, c in confused.most_common(3)],
    }


def deferral_facts(routing: CalibrationRouting | None, live: dict, live_examples: dict[str, list[str]]) -> dict:
    """Deferrals by reason on calibration and in live traffic, each with example inputs."""
    calibration: dict[str, dict] = {}
    if routing is not None:
        n = len(routing)
        for i in np.flatnonzero(~routing.handled):
            entry = calibration.setdefault(routing.reasons[i], {"n": 0, "share": 0.0, "examples": []})
            entry["n"] += 1
            if len(entry["examples"]) < EXAMPLES_PER_REASON:
                entry["examples"].append({
                    "input": clip(routing.texts[i]),
                    "label": routing.labels[i],
                    "predicted": routing.predicted[i],
                    "score": float(routing.scores[i]),
                })
        for entry in calibration.values():
            entry["share"] = entry["n"] / n
        calibration = dict(sorted(calibration.items(), key=lambda kv: -kv[1]["n"]))
    live_rows = {
        reason: {"n": count, "examples": [clip(t) for t in live_examples.get(reason, [])]}
        for reason, count in live["deferred_by_reason"].items()
    }
    return {
        "source": {"calibration": CALIBRATION_SOURCE, "live": LIVE_SOURCE},
        "descriptions": REASONS,
        "calibration": calibration,
        "calibration_n": len(routing) if routing is not None else 0,
        "live": live_rows,
        "live_calls": live["calls"],
    }


def boundary_facts(routing: CalibrationRouting | None, top: int = BOUNDARY_LABELS) -> dict:
    """For the labels deferred most, the closest handled/deferred pair sharing the teacher label."""
    pairs = []
    if routing is not None:
        labels = np.array(routing.labels)
        deferred_by_label = Counter(labels[~routing.handled].tolist())
        for label, _ in deferred_by_label.most_common():
            pair = _closest_pair(routing, label)
            if pair is not None:
                pairs.append(pair)
            if len(pairs) == top:
                break
    return {"source": CALIBRATION_SOURCE, "pairs": pairs}


def _closest_pair(routing: CalibrationRouting, label: str) -> dict | None:
    mine = np.array([t == label for t in routing.labels], dtype=bool)
    handled = np.flatnonzero(mine & routing.handled)
    deferred = np.flatnonzero(mine & ~routing.handled)
    if not len(handled) or not len(deferred):
        return None
    sims = routing.vectors[deferred] @ routing.vectors[handled].T
    d, h = np.unravel_index(int(np.argmax(sims)), sims.shape)
    i, j = int(deferred[d]), int(handled[h])
    competitor, competitor_p = _competing_label(routing, i, label)
    return {
        "label": label,
        "similarity": float(sims[d, h]),
        "handled": {"input": clip(routing.texts[j]), "predicted": routing.predicted[j], "score": float(routing.scores[j])},
        "deferred": {
            "input": clip(routing.texts[i]),
            "predicted": routing.predicted[i],
            "score": float(routing.scores[i]),
            "reason": routing.reasons[i],
        },
        "competing_label": competitor,
        "competing_probability": competitor_p,
    }


def _competing_label(routing: CalibrationRouting, i: int, label: str) -> tuple[str | None, float | None]:
    """The surrogate's most probable label other than the teacher's for calibration input `i`."""
    order = np.argsort(-routing.probs[i])
    for k in order:
        if routing.policy_labels[k] != label:
            return routing.policy_labels[k], float(routing.probs[i, k])
    return None, None


def region_facts(routing: CalibrationRouting | None) -> dict:
    """A 2-D projection of the calibration embeddings, each point handled or deferred."""
    if routing is None or len(routing) < 3:
        return {"source": CALIBRATION_SOURCE, "method": None, "points": []}
    coords, method = project_2d(routing.vectors)
    points = [
        {
            "x": float(x), "y": float(y), "handled": bool(h), "label": t, "predicted": p, "reason": r,
            "input": clip(text),
        }
        for (x, y), h, t, p, r, text in zip(
            coords, routing.handled, routing.labels, routing.predicted, routing.reasons, routing.texts
        )
    ]
    return {"source": CALIBRATION_SOURCE, "method": method, "points": points}


def project_2d(vectors: np.ndarray) -> tuple[np.ndarray, str]:
    """UMAP when installed, else PCA."""
    try:
        import umap
    except ImportError:
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=0).fit_transform(vectors), "pca"
    reducer = umap.UMAP(n_components=2, random_state=0, n_neighbors=min(15, len(vectors) - 1))
    return reducer.fit_transform(vectors), "umap"


def suspect_facts(
    teacher: tuple[list[str], list[str], list[int]], embed: EmbedFn, cache: EvidenceCache | None = None
) -> dict:
    """Teacher traces whose label the cross-fitted evidence contradicts (see `tracer_core.learning.suspects`)."""
    source = "all teacher traces, each scored only by models that did not train on it (out-of-fold)"
    try:
        found = teacher_suspects(teacher, embed, limit=REPORTED_SUSPECTS, cache=cache).to_dict()
        if found["sampled_from"] is not None:
            source = (f"a random sample of {found['n_traces']:,} of the {found['sampled_from']:,} teacher traces, "
                      "each scored only by models that did not train on it (out-of-fold)")
    except SuspectsError as exc:
        return {"source": source, "unavailable": str(exc)}
    for suspect in found["suspects"]:
        suspect["input"] = clip(suspect["input"])
        for neighbour in suspect["neighbours"]:
            neighbour["input"] = clip(neighbour["input"])
    return {"source": source, "unavailable": None, **found}
