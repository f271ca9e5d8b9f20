"""The certificate a fit produces: what was certified, on how much evidence, or why not."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields

DEPLOYED = "deployed"
TOO_FEW_TRACES = "too_few_traces"
NO_SEPARATION = "no_separation"
NOT_CERTIFIED = "not_certified"
FREE_TEXT = "free_text_task"
SINGLE_LABEL = "single_label"
NOT_ATTEMPTED = "not_attempted"  # the schedule or validation said no: the gate did not run, nothing was spent
NOT_BETTER = "not_better"  # an attempt for the gain certified less coverage than the policy in force, which stays


@dataclass
class Certificate:
    """Outcome of `fit()`. `deployed` is True only when the parity gate certified a threshold."""

    task: str
    fingerprint: str
    deployed: bool
    alpha: float
    delta: float
    reason: str
    reason_code: str
    n_traces: int
    version: int | None = None
    n_train: int = 0
    n_validation: int = 0
    n_calibration: int = 0  # calibration traces the gate tested on, all from the calibration pool
    n_pool: int = 0  # traces that were allowed to serve as calibration evidence
    n_train_available: int = 0  # traces that could train or validate; n_train + n_validation of them did
    max_train: int | None = None  # the cap on n_train + n_validation in force (None: no cap)
    n_labels: int = 0
    threshold: float | None = None
    ood_threshold: float | None = None
    coverage: float = 0.0
    agreement: float | None = None
    agreement_lower_bound: float | None = None  # older releases only: a bound at a threshold the data chose, not certified
    p_value: float | None = None
    model: str | None = None
    candidates: dict = field(default_factory=dict)
    per_label: dict = field(default_factory=dict)
    frontier: list = field(default_factory=list)
    calibration_ids: list = field(default_factory=list)
    data_hash: str = ""
    created_at: float = 0.0
    fit_seconds: float = 0.0
    trace_max_id: int = 0
    since_trace_id: int = 0  # only traces with a higher id were used (the newest suspension)
    # the lifetime guarantee (docs/lifetime-guarantee.md); certificates of older releases have the defaults
    attempt: int = 0  # this certification attempt of the task version (1-based); 0: the gate did not run
    delta_spent: float = 0.0  # the level this attempt tested at: delta * 6 / (pi^2 attempt^2); 0 when none
    delta_spent_total: float = 0.0  # spent by the version's attempts 1..attempt (at most delta)
    predicted_coverage: float | None = None  # what validation predicted the gate would certify
    calibration_id_range: list = field(default_factory=list)  # [first, last] trace id of the calibration window
    calibration_period: list = field(default_factory=list)  # [first, last] created_at of those traces (a store fit)
    embedder: dict | None = None  # the fit's embedder: kind, name, dimension, checksum (None: an earlier release)
    artifact_sha256: str = ""  # SHA-256 of the policy artifact as stored ("": an earlier release's policy)
    labels_sha256: str = ""  # SHA-256 of the policy's label list (policy_seal.labels_digest)
    savings_estimate: dict | None = None  # a refusal's estimate of when a fit deploys (learning.savings_estimate)
    # [k, n]: of the n calibration traces deferred for low confidence at the threshold, k got a teacher label the
    # policy found implausible (`Decision.plausible`); the baseline of `serving.relabel` ([]: an earlier release)
    deferred_implausible: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Certificate:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def training_used(self) -> str:
        """Train + validation traces of those available, and the cap when it held some back."""
        trained = self.n_train + self.n_validation
        available = f" of {self.n_train_available:,} available" if self.n_train_available else ""
        capped = self.max_train is not None and trained < self.n_train_available
        return f"{trained:,}{available} traces" + (f" (max_train {self.max_train:,})" if capped else "")

    def calibration_used(self) -> str:
        return f"{self.n_calibration:,} (of {self.n_pool:,} that may calibrate)"

    def evidence(self) -> str:
        """One line: what the fit trained on and what the gate tested on."""
        if not self.n_calibration:
            return f"{self.n_traces:,} traces; no model was trained"
        if self.reason_code == NOT_ATTEMPTED:
            return f"trained on {self.training_used()}; the gate did not run ({self.n_calibration:,} calibration traces unread)"
        return f"trained on {self.training_used()}; calibrated on {self.calibration_used()}"

    def summary(self) -> str:
        """One line a person can read: what is certified and on which traffic, at what cost in delta; or why it refuses."""
        if not self.deployed:
            return f"refused: {self.reason}"
        handles = f"handles {self.coverage:.0%} at >= {self.alpha:.0%} agreement"
        if not self.attempt:  # a certificate of an earlier release: one fit at the full delta
            return f"{handles} (one fit at delta {self.delta}, before lifetime accounting)"
        window = f", trace ids {self.calibration_id_range[0]}-{self.calibration_id_range[1]}" if self.calibration_id_range else ""
        if self.calibration_period:
            first, last = (time.strftime("%Y-%m-%d", time.gmtime(t)) for t in self.calibration_period)
            window += f", recorded {first} to {last} UTC" if first != last else f", recorded {first} UTC"
        return (
            f"{handles} on the traffic its calibration window sampled ({self.n_calibration:,} traces{window}); "
            f"tested at delta {self.delta_spent:.2g} (attempt {self.attempt}), {self.delta_spent_total:.2g} of the "
            f"task version's lifetime delta {self.delta} spent"
        )
