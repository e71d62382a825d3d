"""Intervals for benchmark figures: bootstrap over test frames, seeds averaged first.

A figure of a trained row is the mean over test frames of an error that was first averaged over
the training seeds (``errors`` (S, N): S seeds, N frames). Its 95% interval resamples the frames
(percentile bootstrap); a difference between two rows is resampled on the same frames (paired).
Frames where a row has no value (NaN) are left out of that row's figure; a paired difference uses
the frames both rows have.
"""
from __future__ import annotations

from dataclasses import dataclass

import warnings

import numpy as np

DEFAULT_RESAMPLES = 10_000


@dataclass(frozen=True)
class Interval:
    mean: float  # mean over frames of the seed-averaged per-frame error
    low: float  # 2.5th percentile of the bootstrap means
    high: float  # 97.5th percentile
    seed_std: float  # standard deviation over seeds of the per-seed means (NaN for one seed)
    frames: int  # frames that count

    def to_json(self, digits: int = 2) -> dict:
        r = lambda x: None if not np.isfinite(x) else round(float(x), digits)  # noqa: E731
        return {"mean": r(self.mean), "ci95": [r(self.low), r(self.high)], "seed_std": r(self.seed_std),
                "frames": self.frames}

    def excludes(self, value: float = 0.0) -> bool:
        return bool(self.low > value or self.high < value)


def _as_seeds(errors) -> np.ndarray:
    e = np.asarray(errors, np.float64)
    return e[None] if e.ndim == 1 else e


def _bootstrap(per_frame: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    n = len(per_frame)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(n, 1))
    for i in range(0, resamples, chunk):
        k = min(chunk, resamples - i)
        means[i:i + k] = per_frame[rng.integers(0, n, size=(k, n))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def seed_frame_interval(errors, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """``errors`` (S, N) or (N,): per-seed, per-frame errors → mean, 95% bootstrap CI, seed std."""
    e = _as_seeds(errors)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_frame = np.nanmean(e, axis=0) if e.shape[0] > 1 else e[0]
    ok = np.isfinite(per_frame)
    if not ok.any():
        nan = float("nan")
        return Interval(nan, nan, nan, nan, 0)
    seed_means = np.array([np.nanmean(row[ok]) for row in e])
    std = float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else float("nan")
    lo, hi = _bootstrap(per_frame[ok], resamples, seed)
    return Interval(float(per_frame[ok].mean()), lo, hi, std, int(ok.sum()))


def paired_difference(a, b, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """Row ``a`` minus row ``b`` on the frames both have: (S, N) or (N,) each, seeds averaged first.
    A negative mean with an interval below 0 says ``a`` has the lower error."""
    ea, eb = _as_seeds(a), _as_seeds(b)
    if ea.shape[-1] != eb.shape[-1]:
        raise ValueError(f"paired rows need the same frames: {ea.shape[-1]} against {eb.shape[-1]}")
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fa, fb = np.nanmean(ea, axis=0), np.nanmean(eb, axis=0)
    d = fa - fb
    ok = np.isfinite(d)
    if not ok.any():
        nan = float("nan")
        return Interval(nan, nan, nan, nan, 0)
    std = float("nan")
    if ea.shape[0] == eb.shape[0] and ea.shape[0] > 1:
        std = float(np.std([np.nanmean(x[ok] - y[ok]) for x, y in zip(ea, eb)], ddof=1))
    lo, hi = _bootstrap(d[ok], resamples, seed)
    return Interval(float(d[ok].mean()), lo, hi, std, int(ok.sum()))


def procrustes_mean_pose(poses: np.ndarray, iterations: int = 5) -> np.ndarray:
    """The generalised-Procrustes mean of root-relative poses (N, J, 3): every pose similarity-aligned
    onto the running mean, then averaged; the most favourable constant predictor under PA-MPJPE."""
    from .metrics import _procrustes_align

    p = np.asarray(poses, np.float64)
    p = p[np.all(np.isfinite(p.reshape(len(p), -1)), axis=1)]
    if not len(p):
        raise ValueError("no finite pose to average")
    mean = p[0].copy()
    for _ in range(iterations):
        aligned = _procrustes_align(p, np.broadcast_to(mean, p.shape).copy())
        mean = aligned.mean(axis=0)
        mean -= mean.mean(axis=0)
    return mean
