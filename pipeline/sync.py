"""Frame offsets of unsynchronised videos, estimated from the hand (issue 22).

Camera ``c``'s offset ``o`` means capture frame ``k`` is its video frame ``k + o`` (format v1's
``cameras[].frame_offset``). With a calibrated rig, two views of the same instant agree in 3D: the hand
seen by the reference camera in its frame ``k`` and by camera ``c`` in its frame ``k + o`` triangulate
(two-view DLT) with a small reprojection error only when ``o`` is right. :func:`offset_curve` gives, per
candidate ``o``, the median reprojection error over the frames both see and the 21 joints;
:func:`estimate_offsets` picks the minimum per camera and keeps the curve for the report. It needs a
hand that moves: a still hand agrees at every offset (the curve is then flat, and says so).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .triangulate import reprojection_errors, triangulate_dlt


def offset_curve(P_ref: np.ndarray, P_c: np.ndarray, obs_ref: np.ndarray, obs_c: np.ndarray, max_offset: int,
                 min_frames: int = 3) -> dict[int, Optional[float]]:
    """{offset: median two-view reprojection error (px)} for offsets in ±``max_offset``; ``obs_*`` (F, J, 2)
    image points per video frame, NaN where unseen. None where fewer than ``min_frames`` frames pair up."""
    P = np.stack([P_ref, P_c])
    out: dict[int, Optional[float]] = {}
    for o in range(-max_offset, max_offset + 1):
        errs = []
        for k in range(len(obs_ref)):
            if not 0 <= k + o < len(obs_c):
                continue
            uv = np.stack([obs_ref[k], obs_c[k + o]])
            seen = np.all(np.isfinite(uv), axis=(0, 2))
            if seen.sum() < 6:
                continue
            X = triangulate_dlt(P, np.where(np.isfinite(uv), uv, 0.0), np.repeat(seen[None].astype(float), 2, 0))
            err = reprojection_errors(P, X, np.where(np.isfinite(uv), uv, 0.0))[:, seen]
            errs.append(float(np.median(err)))
        out[o] = round(float(np.median(errs)), 3) if len(errs) >= min_frames else None
    return out


def estimate_offsets(P: np.ndarray, observations: np.ndarray, names: list[str], reference: int = 0,
                     max_offset: int = 10, min_contrast: float = 1.5) -> dict[str, dict]:
    """Per camera: the offset (relative to ``reference``, whose offset is 0) with the smallest error, the
    curve, and how clearly it stands out (``contrast``: the smallest error at least 2 frames from the best
    over the best's). An estimate with ``contrast`` below ``min_contrast`` is ``ambiguous``: reported, not
    to be applied. ``observations`` (F, V, J, 2) per video frame, NaN where unseen."""
    out: dict[str, dict] = {names[reference]: {"offset": 0, "reference": True}}
    for c in range(len(names)):
        if c == reference:
            continue
        curve = offset_curve(P[reference], P[c], observations[:, reference], observations[:, c], max_offset)
        valid = {o: e for o, e in curve.items() if e is not None}
        if not valid:
            out[names[c]] = {"offset": None, "curve": curve, "reason": "the hand is not seen in enough common frames"}
            continue
        best = min(valid, key=valid.get)
        far = [e for o, e in valid.items() if abs(o - best) >= 2]
        contrast = round(min(far) / max(valid[best], 1e-6), 2) if far else None
        out[names[c]] = {"offset": int(best), "error_px": valid[best], "contrast": contrast, "curve": curve,
                         "ambiguous": contrast is None or contrast < min_contrast}
    return out


def format_offsets(est: dict) -> str:
    lines = []
    for name, e in est.items():
        if e.get("reference"):
            lines.append(f"  {name}: reference")
            continue
        if e["offset"] is None:
            lines.append(f"  {name}: not estimated ({e['reason']})")
            continue
        curve = "  ".join(f"{o:+d}:{v:.1f}" for o, v in e["curve"].items() if v is not None)
        flag = " AMBIGUOUS, not applied" if e.get("ambiguous") else ""
        lines.append(f"  {name}: offset {e['offset']:+d} ({e['error_px']:.2f} px; next best x{e['contrast']}){flag}"
                     f" | {curve}")
    return "\n".join(lines)
