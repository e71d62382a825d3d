"""Signals of a validation pass during training, on view groups training never uses.

Two kinds, so that a run on real captures (no ground truth) still has a curve to watch:

* label-only, always: ``label_2d_px/single`` and ``label_2d_px/interaction``, the
  confidence-weighted mean distance (crop pixels) between each branch's projected joints and the
  pseudo labels of the held-out views; ``cross_view_mm``, the disagreement of the views' 3D
  predictions: every calibrated view's interaction joints rotated into the world frame, their mean
  distance (mm) to the average of all of them (0 when every view predicts the same hand);
* with ground truth (synthetic captures): ``pa_mpjpe_mm/single``, ``/interaction`` (per view, each
  view weighing 1 / valid views of its group) and ``/fusion``, and the median error of the global
  orientation of the single-view branch ``orientation_deg/single``.

``label_signal`` is what "best" means for a run without ground truth: the interaction branch's 2D
error against the held-out pseudo labels plus the cross-view disagreement in the same units
(mm, with 1 px of a crop counted as ``mm_per_px``), lower is better. Pure math over batches; the
batches come from the caller (``pipeline.evaluate.validation_pass``).
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import torch

from .evaluation import camera_ground_truth, fuse_world, predictions
from .metrics import orientation_error_deg, pa_mpjpe
from .precision import PrecisionChoice, run_in

LABEL_SIGNAL = "label_signal"


def _weighted(total: float, weight: float) -> float:
    return float(total / weight) if weight > 0 else float("nan")


@torch.no_grad()
def validation_signals(model: torch.nn.Module, batches: Iterable[dict], crop_size: int,
                       precision: Optional[PrecisionChoice] = None, mm_per_px: float = 1.0) -> dict[str, float]:
    """Run ``model`` (put in eval mode, then back to the mode it had) over ``batches`` and return the
    signals of the module docstring (NaN where a signal has nothing to measure)."""
    was_training = model.training
    model.eval()
    sums = {k: [0.0, 0.0] for k in ("label_2d_px/single", "label_2d_px/interaction", "cross_view_mm",
                                    "pa_mpjpe_mm/single", "pa_mpjpe_mm/interaction", "pa_mpjpe_mm/fusion")}
    orient: list[np.ndarray] = []
    try:
        for batch in batches:
            out = run_in(precision, model, batch["images"], batch["view_mask"])
            pred = predictions(out, batch, crop_size)
            mask = batch["view_mask"].bool().numpy()
            conf = np.clip(batch["confidence"].numpy().astype(np.float64), 0, None) * mask[..., None]
            kp = batch["keypoints"].numpy().astype(np.float64)
            for branch in ("single", "interaction"):
                d = np.linalg.norm(pred[f"{branch}_2d"] - kp, axis=-1)
                d = np.where(conf > 0, d, 0.0)
                sums[f"label_2d_px/{branch}"][0] += float((d * conf).sum())
                sums[f"label_2d_px/{branch}"][1] += float(conf.sum())
            calibrated = mask & batch["extrinsics_known"].bool().numpy()
            R = batch["extrinsics"][..., :3].float()
            inter = torch.from_numpy(pred["interaction"])
            fused = fuse_world(inter, R, torch.from_numpy(calibrated)).numpy()  # (B, 21, 3)
            world = (inter @ R).numpy()  # (B, V, 21, 3)
            spread = np.linalg.norm(world - fused[:, None], axis=-1).mean(-1) * 1000  # (B, V)
            groups = calibrated.sum(1) >= 2
            use = calibrated & groups[:, None]
            sums["cross_view_mm"][0] += float(np.where(use, spread, 0).sum())
            sums["cross_view_mm"][1] += float(use.sum())
            if "gt_joints_world" in batch:
                gt_world = batch["gt_joints_world"].numpy().astype(np.float64)
                ext = batch["extrinsics"].numpy().astype(np.float64)
                gt_cam = camera_ground_truth(gt_world, ext)  # (B, V, 21, 3)
                B, V = mask.shape
                w = mask / np.maximum(mask.sum(1, keepdims=True), 1)  # a view weighs 1 / valid views
                for branch in ("single", "interaction"):
                    e = pa_mpjpe(pred[branch].reshape(B * V, 21, 3), gt_cam.reshape(B * V, 21, 3)).reshape(B, V)
                    e = np.where(mask, e, 0.0)
                    sums[f"pa_mpjpe_mm/{branch}"][0] += float((e * w).sum()) * 1000
                    sums[f"pa_mpjpe_mm/{branch}"][1] += float((mask.sum(1) > 0).sum())
                ok = calibrated.any(1)
                if ok.any():
                    rel = gt_world - gt_world[:, 9:10]
                    sums["pa_mpjpe_mm/fusion"][0] += float(pa_mpjpe(pred["fusion"][ok], rel[ok]).sum()) * 1000
                    sums["pa_mpjpe_mm/fusion"][1] += float(ok.sum())
                o = orientation_error_deg(pred["single"].reshape(B * V, 21, 3), gt_cam.reshape(B * V, 21, 3))
                orient.append(np.asarray(o).reshape(B, V)[mask])
    finally:
        model.train(was_training)
    res = {k: _weighted(s, w) for k, (s, w) in sums.items()}
    res["orientation_deg/single"] = float(np.median(np.concatenate(orient))) if orient else float("nan")
    res[LABEL_SIGNAL] = label_signal(res, mm_per_px)
    return res


def label_signal(signals: dict[str, float], mm_per_px: float = 1.0) -> float:
    """Lower is better: the interaction branch's 2D error against held-out pseudo labels (as mm at
    ``mm_per_px``) plus the cross-view disagreement (mm); the 2D error alone without calibration."""
    two_d = signals["label_2d_px/interaction"] * mm_per_px
    cross = signals["cross_view_mm"]
    return float(two_d + cross) if np.isfinite(cross) else float(two_d)
