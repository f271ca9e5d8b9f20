"""Learning: embeddings, the surrogate, out-of-distribution checks, the calibration split, the parity gate and its delta spending, fits, certificates, policies and teacher suspects."""
