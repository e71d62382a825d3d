"""Evaluation math: HaMuCo outputs → 3D joints per mode, and the metric tables (seed Table C).

Three modes, as the paper:

* ``single``: the single-view network, each view on its own, in that view's camera frame;
* ``interaction``: the cross-view (interaction) branch, per view, in that view's camera frame
  (multi-view inference without extrinsics);
* ``fusion``: the interaction outputs of all valid calibrated views rotated into the world frame
  (``R_vᵀ x_v``) and averaged (multi-view inference with extrinsics, seed B.5).

Every prediction is root-relative (joint 9) in metres. A prediction made on a mirrored crop (a
left hand shown to the right-hand model) is mirrored back (x → −x) before it is compared, so all
results are in the frame of the hand as captured. Ground truth in a camera frame is
``R_v (X − X_root)``.

Metrics per mode: MPJPE (root-aligned), NMPJPE (root-aligned, scale from the wrist→middle-MCP
bone), PA-MPJPE (similarity Procrustes), the AUC of the PCK curve over 0–50 mm computed on the
Procrustes-aligned joint errors (FreiHAND protocol), and for the per-view modes the 2D error in
crop pixels. Every sample weighs the same in every mode (a view counts 1 / valid views of its
sample), so single, interaction and fusion are averaged over the same frames alike; ``single`` and ``interaction`` are also broken down per view. Other 3D predictions
(e.g. the triangulated pseudo labels, in the world frame) are scored the same way as ``fusion``.

Everything here is tensor/array math: reading shards, running batches and writing files live in
``pipeline.evaluate``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .alignment import apply_similarity, similarity_procrustes
from .metrics import ROOT_JOINT, error_2d, mpjpe, nmpjpe, pa_mpjpe
from .single_view import BBOX_3D_SIZE

MODES = ("single", "interaction", "fusion")
PCK_THRESHOLDS_MM = np.linspace(0.0, 50.0, 101)


def unflip(joints: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Mirror back (x → −x) the joints (..., 21, 3) of views whose crop was flipped (...,) bool."""
    sign = torch.where(flipped.bool(), -1.0, 1.0).to(joints.dtype)
    return torch.cat([joints[..., :1] * sign[..., None, None], joints[..., 1:]], dim=-1)


def fuse_world(joints_cam: torch.Tensor, rotations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the views' root-relative joints rotated into the world frame.

    joints_cam (B, V, J, 3) camera frames, rotations (B, V, 3, 3) world → camera, mask (B, V) bool
    (views to use) → (B, J, 3); NaN for a group without any usable view.
    """
    world = joints_cam @ rotations  # row vectors: (R_vᵀ x)ᵀ = xᵀ R_v
    w = mask.to(joints_cam.dtype)[..., None, None]
    n = w.sum(1)
    return torch.where(n > 0, (world * w).sum(1) / n.clamp(min=1), torch.full_like(n, float("nan")))


def fuse_reference(joints_cam: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor | int = 0) -> torch.Tensor:
    """Without extrinsics: every valid view's joints similarity-aligned onto the reference view's and
    averaged, in the reference view's camera frame (seed B.5). Scale is re-normalised so the result
    keeps the reference view's size. joints_cam (B, V, J, 3), mask (B, V) → (B, J, 3)."""
    B, V = mask.shape
    ref = torch.as_tensor(reference, device=joints_cam.device).expand(B) if not torch.is_tensor(reference) \
        or reference.dim() == 0 else reference
    target = joints_cam[torch.arange(B), ref]  # (B, J, 3)
    s, R, t = similarity_procrustes(joints_cam, target[:, None])
    aligned = apply_similarity(joints_cam, s, R, t)
    w = mask.to(joints_cam.dtype)[..., None, None]
    return (aligned * w).sum(1) / w.sum(1).clamp(min=1)


def default_reference_view(mask: torch.Tensor) -> torch.Tensor:
    """The first valid view of each group (B, V) → (B,)."""
    return mask.to(torch.int64).argmax(dim=1)


@torch.no_grad()
def predictions(out, batch: dict, crop_size: int, vertices: bool = False) -> dict[str, np.ndarray]:
    """HaMuCo outputs for a batch of view groups → NumPy arrays (metres, crop pixels).

    ``out``: a :class:`model.hamuco.HaMuCoOutput`; ``batch``: ``view_mask`` (B, V), ``extrinsics``
    (B, V, 3, 4), ``extrinsics_known`` (B, V), optional ``flipped`` (B, V). Returns ``single`` and
    ``interaction`` (B, V, 21, 3) camera-frame joints, ``single_2d`` / ``interaction_2d`` (B, V, 21, 2)
    crop pixels, ``fusion`` (B, 21, 3) world-frame joints (NaN without calibrated views),
    ``reference`` (B, 21, 3): the views aligned onto the first valid view (no extrinsics needed);
    with ``vertices``: ``single_vertices`` / ``interaction_vertices`` (B, V, N, 3), ``fusion_vertices`` (B, N, 3).
    """
    mask = batch["view_mask"].bool()
    B, V = mask.shape
    flipped = batch.get("flipped", torch.zeros_like(mask)).bool()
    res: dict[str, np.ndarray] = {}
    for name, mesh in (("single", out.single), ("interaction", out.fused)):
        joints = unflip(mesh.joints_metres().float().view(B, V, 21, 3), flipped)
        res[name] = joints.numpy()
        if vertices:
            verts = unflip((mesh.vertices.float() * (BBOX_3D_SIZE / 2)).view(B, V, -1, 3), flipped)
            res[f"{name}_vertices"] = verts.numpy()
        res[f"{name}_2d"] = mesh.joints_2d_pixels(crop_size).float().view(B, V, 21, 2).numpy()
    R = batch["extrinsics"][..., :3].float()
    calibrated = mask & batch["extrinsics_known"].bool()
    inter = torch.from_numpy(res["interaction"])
    res["fusion"] = fuse_world(inter, R, calibrated).numpy()
    if vertices:
        res["fusion_vertices"] = fuse_world(torch.from_numpy(res["interaction_vertices"]), R, calibrated).numpy()
    res["reference"] = fuse_reference(inter, mask, default_reference_view(mask)).numpy()
    return res


def camera_ground_truth(gt_world: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
    """Root-relative ground truth in each view's camera frame: (N, 21, 3), (N, V, 3, 4) → (N, V, 21, 3)."""
    rel = gt_world - gt_world[:, ROOT_JOINT:ROOT_JOINT + 1]
    return np.einsum("nvij,nkj->nvki", extrinsics[..., :3], rel)


def scores_3d(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample errors (metres) of (N, 21, 3) predictions: mpjpe, nmpjpe, pa_mpjpe, and the
    Procrustes-aligned per-joint errors (N, 21) for PCK/AUC."""
    return {"mpjpe": mpjpe(pred, gt), "nmpjpe": nmpjpe(pred, gt), "pa_mpjpe": pa_mpjpe(pred, gt),
            "pa_joint": pa_mpjpe(pred, gt, per_joint=True)}


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def _nanmedian(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def auc_per_prediction(pa_joint: np.ndarray, max_mm: float = 50.0, steps: int = 100) -> np.ndarray:
    """The AUC of the PCK curve over 0–``max_mm`` of each prediction's Procrustes-aligned joint errors
    (..., 21) metres → (...); NaN where a joint error is NaN. The mean of these over predictions equals
    the AUC of the pooled PCK curve with the same weights (both are linear in the indicator counts)."""
    e = np.asarray(pa_joint, np.float64) * 1000.0
    t = np.linspace(0.0, max_mm, steps)
    with np.errstate(invalid="ignore"):
        pck = (e[..., None] <= t).mean(axis=-2)  # (..., T)
    auc = np.sum((pck[..., 1:] + pck[..., :-1]) * np.diff(t), axis=-1) / 2 / max_mm
    return np.where(np.all(np.isfinite(e), axis=-1), auc, np.nan)


def sample_weights(values: np.ndarray) -> np.ndarray:
    """Weights giving every sample the same total weight: for per-view errors (N, V) each finite view
    of a sample weighs 1 / (its sample's finite views); for per-sample errors (N,) each finite one 1."""
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    if v.ndim == 1:
        return ok.astype(np.float64)
    n = ok.sum(axis=1, keepdims=True)
    return np.where(ok, 1.0 / np.maximum(n, 1), 0.0)


def _weighted_mean(values: np.ndarray, w: np.ndarray) -> float:
    v = np.where(w > 0, np.asarray(values, np.float64), 0.0)
    return float((v * w).sum() / w.sum()) if w.sum() > 0 else float("nan")


def weighted_pck(joint_errors: np.ndarray, w: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """PCK with a weight per sample/view: joint_errors (..., 21), w (...) → (T,) fractions."""
    e = np.asarray(joint_errors, np.float64).reshape(-1, 21)
    ww = np.repeat(np.asarray(w, np.float64).reshape(-1, 1), 21, axis=1)
    ok = np.isfinite(e) & (ww > 0)
    if not ok.any():
        return np.full(len(thresholds), np.nan)
    e, ww = e[ok], ww[ok]
    return np.array([(ww * (e <= t)).sum() / ww.sum() for t in thresholds])


def summarize_3d(per_sample: dict[str, np.ndarray]) -> dict:
    """Per-sample (N,) or per-view (N, V) errors from :func:`scores_3d` → means in mm and the AUC.

    Every sample weighs the same: a per-view error counts 1 / (valid views of its sample), so that the
    per-view modes and the fused mode average over the same samples alike (a plain mean over views
    would favour the frames where more views found the hand, usually the easier ones; that figure is
    kept as ``pa_mpjpe_per_view_mm``). The AUC is of the PCK of the Procrustes-aligned joints, weighted
    the same way.
    """
    w = sample_weights(per_sample["pa_mpjpe"])
    out = {f"{k}_mm": _weighted_mean(per_sample[k], w) * 1000 for k in ("mpjpe", "nmpjpe", "pa_mpjpe")}
    out["pa_mpjpe_median_mm"] = _nanmedian(per_sample["pa_mpjpe"]) * 1000
    out["pa_mpjpe_per_view_mm"] = _nanmean(per_sample["pa_mpjpe"]) * 1000
    t = np.linspace(0.0, 50.0, 100)
    pck = weighted_pck(np.asarray(per_sample["pa_joint"]) * 1000, w, t)
    out["auc_0_50mm"] = float(np.sum((pck[1:] + pck[:-1]) * np.diff(t)) / 2 / 50.0) if w.sum() else float("nan")
    out["count"] = int(np.isfinite(np.asarray(per_sample["pa_mpjpe"])).sum())
    out["samples"] = int((w.reshape(len(w), -1).sum(axis=1) > 0).sum()) if w.size else 0
    return out


@dataclass
class EvaluationRecords:
    """Arrays gathered over an evaluation split (N samples, V views); see :func:`evaluate_records`."""

    view_mask: np.ndarray  # (N, V) bool
    extrinsics: np.ndarray  # (N, V, 3, 4)
    gt_world: np.ndarray  # (N, 21, 3)
    gt_2d: np.ndarray  # (N, V, 21, 2) crop pixels, NaN unknown
    keypoints: np.ndarray  # (N, V, 21, 2) pseudo labels, crop pixels
    confidence: np.ndarray  # (N, V, 21)
    preds: dict[str, np.ndarray] = field(default_factory=dict)  # from predictions(), concatenated
    baselines: dict[str, np.ndarray] = field(default_factory=dict)  # name → (N, 21, 3) world joints
    camera_names: Optional[list[str]] = None

    @classmethod
    def concatenate(cls, parts: list["EvaluationRecords"]) -> "EvaluationRecords":
        cat = lambda xs: np.concatenate(xs, axis=0)  # noqa: E731
        return cls(view_mask=cat([p.view_mask for p in parts]), extrinsics=cat([p.extrinsics for p in parts]),
                   gt_world=cat([p.gt_world for p in parts]), gt_2d=cat([p.gt_2d for p in parts]),
                   keypoints=cat([p.keypoints for p in parts]), confidence=cat([p.confidence for p in parts]),
                   preds={k: cat([p.preds[k] for p in parts]) for k in parts[0].preds},
                   baselines={k: cat([p.baselines[k] for p in parts]) for k in parts[0].baselines},
                   camera_names=parts[0].camera_names)


def per_sample_errors(rec: EvaluationRecords) -> dict[str, dict[str, np.ndarray]]:
    """Per-sample (and per-view) errors in metres / pixels for every mode and baseline.

    Returns ``{"single": {"mpjpe": (N, V), …, "error_2d": (N, V)}, "interaction": …,
    "fusion": {"mpjpe": (N,), …}, "baseline/<name>": …, "baseline/pseudo_labels": {"error_2d": (N, V)}}``;
    NaN where a view is invalid or no ground truth exists.
    """
    N, V = rec.view_mask.shape
    gt_cam = camera_ground_truth(rec.gt_world, rec.extrinsics)  # (N, V, 21, 3)
    valid = rec.view_mask
    out: dict[str, dict[str, np.ndarray]] = {}
    for mode in ("single", "interaction"):
        if mode not in rec.preds:
            continue
        pred = np.where(valid[..., None, None], rec.preds[mode], np.nan)
        s = scores_3d(pred.reshape(N * V, 21, 3), gt_cam.reshape(N * V, 21, 3))
        s = {k: v.reshape((N, V) + v.shape[1:]) for k, v in s.items()}
        e2d = error_2d(rec.preds[f"{mode}_2d"].reshape(N * V, 21, 2), rec.gt_2d.reshape(N * V, 21, 2))
        s["error_2d"] = np.where(valid, e2d.reshape(N, V), np.nan)
        out[mode] = s
    gt_rel = rec.gt_world - rec.gt_world[:, ROOT_JOINT:ROOT_JOINT + 1]
    if "fusion" in rec.preds:
        out["fusion"] = scores_3d(rec.preds["fusion"], gt_rel)
    if "reference" in rec.preds:
        # in the first valid view's camera frame
        ref = valid.argmax(axis=1)
        out["reference"] = scores_3d(rec.preds["reference"], gt_cam[np.arange(N), ref])
    for name, joints in rec.baselines.items():
        out[f"baseline/{name}"] = scores_3d(joints - joints[:, ROOT_JOINT:ROOT_JOINT + 1], gt_rel)
    e2d = error_2d(rec.keypoints.reshape(N * V, 21, 2), rec.gt_2d.reshape(N * V, 21, 2))
    out["baseline/pseudo_labels"] = {"error_2d": np.where(valid, e2d.reshape(N, V), np.nan)}
    return out


def evaluate_records(rec: EvaluationRecords) -> dict:
    """The metric tables: ``{"modes": {mode: {...}}, "per_view": {mode: [{view, …}]}, "baselines": {…},
    "pck": {name: [fraction at each of PCK_THRESHOLDS_MM]}, "samples": N}`` (mm, pixels, AUC in [0, 1])."""
    errs = per_sample_errors(rec)
    N, V = rec.view_mask.shape
    names = rec.camera_names or [f"view{v}" for v in range(V)]
    result: dict = {"samples": int(N), "views": int(V), "valid_views": int(rec.view_mask.sum()),
                    "modes": {}, "per_view": {}, "baselines": {}, "pck": {},
                    "pck_thresholds_mm": PCK_THRESHOLDS_MM.tolist()}
    for mode in ("single", "interaction", "fusion", "reference"):
        if mode not in errs:
            continue
        e = errs[mode]
        table = summarize_3d(e)
        if "error_2d" in e:
            table["error_2d_px"] = _weighted_mean(e["error_2d"], sample_weights(e["error_2d"]))
        result["modes" if mode in MODES else "baselines"][mode if mode in MODES else "multi_view_reference"] = table
        result["pck"][mode] = weighted_pck(np.asarray(e["pa_joint"]) * 1000, sample_weights(e["pa_mpjpe"]),
                                           PCK_THRESHOLDS_MM).tolist()
        if mode in ("single", "interaction"):
            rows = []
            for v in range(V):
                t = summarize_3d({k: e[k][:, v] for k in ("mpjpe", "nmpjpe", "pa_mpjpe", "pa_joint")})
                t["error_2d_px"] = _nanmean(e["error_2d"][:, v])
                rows.append({"view": names[v], **t})
            result["per_view"][mode] = rows
    for name, e in errs.items():
        if not name.startswith("baseline/"):
            continue
        key = name.split("/", 1)[1]
        if "pa_mpjpe" in e:
            result["baselines"][key] = summarize_3d(e)
            result["pck"][name] = weighted_pck(np.asarray(e["pa_joint"]) * 1000, sample_weights(e["pa_mpjpe"]),
                                               PCK_THRESHOLDS_MM).tolist()
        else:
            result["baselines"][key] = {"error_2d_px": _weighted_mean(e["error_2d"], sample_weights(e["error_2d"])),
                                        "error_2d_median_px": _nanmedian(e["error_2d"]),
                                        "count": int(np.isfinite(e["error_2d"]).sum())}
    return result


def ranking_error(errs: dict[str, dict[str, np.ndarray]]) -> np.ndarray:
    """One error per sample (metres) to rank best and worst: fusion PA-MPJPE when calibrated, else
    the mean interaction PA-MPJPE over the valid views."""
    if "fusion" in errs and np.isfinite(errs["fusion"]["pa_mpjpe"]).any():
        return errs["fusion"]["pa_mpjpe"]
    e = errs["interaction"]["pa_mpjpe"]
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.where(np.isfinite(e), e, np.nan), axis=1) if np.isfinite(e).any() \
            else np.full(e.shape[0], np.nan)
