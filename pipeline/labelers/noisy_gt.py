"""A synthetic labeler for label-noise studies: projected ground truth plus controlled noise.

Each joint's label is its ground-truth position in the crop, moved by Gaussian noise of
``sigma_px`` pixels per coordinate; with probability ``outlier_rate`` it is replaced by a point
drawn uniformly in the crop (a gross error, as a detector confusing fingers). Confidence:

* ``"informative"``: ``exp(-½ (err / τ)²)`` with ``τ = 3·max(sigma_px, 1)``: it reflects the
  actual error, so outliers get ~0 (what a good labeler's confidence should do);
* ``"uninformative"``: uniform in [0.5, 1], independent of the error.

Deterministic for (seed, frame index). Needs a capture with ground truth.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from model.errors import HamucoError

CONFIDENCE_MODES = ("informative", "uninformative")


@dataclass(frozen=True)
class NoisyGroundTruthLabeler:
    sigma_px: float = 0.0
    outlier_rate: float = 0.0
    confidence: str = "informative"
    seed: int = 0

    name = "noisy-gt"
    weights_sha256 = "none (ground truth)"

    def __post_init__(self):
        if self.confidence not in CONFIDENCE_MODES:
            raise HamucoError(f"noise confidence must be one of {CONFIDENCE_MODES}, not {self.confidence!r}")
        if self.sigma_px < 0 or not 0 <= self.outlier_rate <= 1:
            raise HamucoError("noise sigma must be >= 0 and the outlier rate within [0, 1]")

    @property
    def params(self) -> dict:
        return asdict(self)

    def label_views(self, gt_crop: np.ndarray, crop_size: int, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Ground truth in crop pixels (V, 21, 2) → noisy keypoints (V, 21, 2), confidence (V, 21)."""
        rng = np.random.default_rng([self.seed, frame_index])
        V = gt_crop.shape[0]
        noisy = gt_crop + rng.normal(0.0, self.sigma_px, gt_crop.shape) if self.sigma_px else gt_crop.copy()
        outlier = rng.random((V, 21)) < self.outlier_rate
        noisy = np.where(outlier[..., None], rng.uniform(0, crop_size - 1, gt_crop.shape), noisy)
        err = np.linalg.norm(noisy - gt_crop, axis=-1)
        if self.confidence == "informative":
            conf = np.exp(-0.5 * (err / (3.0 * max(self.sigma_px, 1.0))) ** 2)
        else:
            conf = rng.uniform(0.5, 1.0, (V, 21))
        known = np.all(np.isfinite(gt_crop), axis=-1)
        return (np.where(known[..., None], noisy, 0.0).astype(np.float32),
                np.where(known, conf, 0.0).astype(np.float32))
