"""The certificate a fit produces: what was certified, on how much evidence, or why not."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

DEPLOYED = "deployed"
TOO_FEW_TRACES = "too_few_traces"
NO_SEPARATION = "no_separation"
NOT_CERTIFIED = "not_certified"
FREE_TEXT = "free_text_task"
SINGLE_LABEL = "single_label"


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
    agreement_lower_bound: float | None = None
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
    embedder: dict | None = None  # the fit's embedder: kind, name, dimension, checksum (None: an earlier release)
    artifact_sha256: str = ""  # SHA-256 of the policy artifact as stored ("": an earlier release's policy)
    labels_sha256: str = ""  # SHA-256 of the policy's label list (policy_seal.labels_digest)

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
        return f"trained on {self.training_used()}; calibrated on {self.calibration_used()}"

    def summary(self) -> str:
        """One line a person can read: what it handles at what agreement, or why it refuses."""
        if not self.deployed:
            return f"refused: {self.reason}"
        return (
            f"handles {self.coverage:.0%} at >= {self.alpha:.0%} agreement "
            f"(certified lower bound {self.agreement_lower_bound:.3f}, delta {self.delta})"
        )
