"""Per-frame errors for the science benchmark (``bench/science.py``, protocol ``bench/PROTOCOL.md``).

Every row of the benchmark is scored on the same frames: the samples of one split of prepared
shards that have at least one valid view, in the order :class:`pipeline.dataset.ShardDataset`
gives them. Each function here returns a dict of arrays in millimetres with ``keys`` (one
``"<shard file>#<sample>"`` per frame) so that rows made by different tasks can be checked to
hold the same frames before they are compared.

* :func:`network_frame_errors`: a network's three modes (``single`` and ``interaction`` per view
  (N, V), ``fusion`` with extrinsics and ``fusion_reference`` without (N,)), and the
  confidence-weighted DLT triangulation of the pseudo labels (N,); and the global-orientation
  error in degrees (``<mode>/orientation_deg``: per view in its camera frame, fusion in the world);
* :func:`baseline_frame_errors`: what needs no training: the pipeline's RANSAC triangulation (the
  ``triangulated`` joints the shard holds), MediaPipe Hands' own 3D world landmarks per camera
  (N, V) and fused over the cameras of a frame (Procrustes-aligned average), and a constant pose.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from model.errors import HamucoError
from model.evaluation import auc_per_prediction, camera_ground_truth, fuse_reference, scores_3d
from model.metrics import ROOT_JOINT, orientation_error_deg
from model.statistics import procrustes_mean_pose

from .dataset import ShardDataset
from .evaluate import evaluate_split

METRICS = ("pa_mpjpe", "nmpjpe", "mpjpe")


def frame_keys(ds: ShardDataset) -> np.ndarray:
    """One key per frame, unique across captures: the capture's prepared directory (named after the
    capture and its hash, the same for every labeler), the shard file and the sample index."""
    keys = []
    for ri, si in ds.items:
        path = Path(ds.readers[ri].path)
        keys.append(f"{path.parent.parent.name}/{path.name}#{si}")
    return np.array(keys)


def _mm(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, np.float64) * 1000.0).astype(np.float32)


def network_frame_errors(model: torch.nn.Module, source, split: str, batch_size: int = 4,
                         progress: bool = False) -> dict[str, np.ndarray]:
    """A network's per-view and per-frame errors (mm) on a split; see the module docstring."""
    ev = evaluate_split(model, source, split=split, confidence="raw", batch_size=batch_size, progress=progress)
    ds = ShardDataset(source, split=split, ground_truth=True)
    out: dict[str, np.ndarray] = {"keys": frame_keys(ds), "view_mask": ev.records.view_mask.astype(bool)}
    if len(out["keys"]) != len(ev.records.view_mask):
        raise HamucoError(f"{source}: {len(out['keys'])} frames listed but {len(ev.records.view_mask)} evaluated")
    names = {"single": "single", "interaction": "interaction", "fusion": "fusion", "reference": "fusion_reference",
             "baseline/triangulation": "dlt"}
    for src, dst in names.items():
        for m in METRICS:
            out[f"{dst}/{m}"] = _mm(ev.errors[src][m])
        out[f"{dst}/auc"] = auc_per_prediction(ev.errors[src]["pa_joint"]).astype(np.float32)
    # global orientation (degrees): per view in its camera frame, and the fused result in the world frame
    rec = ev.records
    N, V = rec.view_mask.shape
    gt_cam = camera_ground_truth(rec.gt_world, rec.extrinsics)
    for mode in ("single", "interaction"):
        pred = np.where(rec.view_mask[..., None, None], rec.preds[mode], np.nan)
        out[f"{mode}/orientation_deg"] = orientation_error_deg(pred.reshape(N * V, 21, 3),
                                                               gt_cam.reshape(N * V, 21, 3)).reshape(N, V) \
            .astype(np.float32)
    gt_rel = rec.gt_world - rec.gt_world[:, ROOT_JOINT:ROOT_JOINT + 1]
    out["fusion/orientation_deg"] = orientation_error_deg(rec.preds["fusion"], gt_rel).astype(np.float32)
    ref = rec.view_mask.argmax(axis=1)  # the views fused without extrinsics land in the first valid view's frame
    out["fusion_reference/orientation_deg"] = orientation_error_deg(rec.preds["reference"],
                                                                    gt_cam[np.arange(N), ref]).astype(np.float32)
    return out


def training_mean_pose(source, split: str = "train") -> np.ndarray:
    """The Procrustes mean of the root-relative ground-truth poses of a split (21, 3), metres."""
    ds = ShardDataset(source, split=split, ground_truth=True)
    poses = []
    for reader in ds.readers:
        if "gt_joints_world" not in reader.ground_truth_fields:
            raise HamucoError(f"{reader.path}: no ground truth, so no mean pose can be taken from it")
    for ri, si in ds.items:
        g = np.asarray(ds.readers[ri].field("gt_joints_world")[si], np.float64)
        poses.append(g - g[ROOT_JOINT])
    return procrustes_mean_pose(np.stack(poses))


def _capture_of(reader, cache: dict):
    from .capture import load_capture

    src = str(reader.attrs["source_capture"])
    if src not in cache:
        if not Path(src).exists():
            raise HamucoError(f"{reader.path}: its source capture {src} is not there (MediaPipe's 3D baseline "
                              "reads the capture's images)")
        cache[src] = load_capture(src)
    return cache[src]


def mediapipe_world(capture, frame_index: int, detector) -> np.ndarray:
    """MediaPipe's 3D world landmarks of the capture's hand in every camera of a frame: (V, 21, 3)
    metres, root-relative (joint 9), NaN where MediaPipe found no hand of the capture's handedness
    (or none at all) or the image cannot be read."""
    from .capture import CaptureError
    from .detect import _pick_by_handedness

    out = np.full((capture.num_views, 21, 3), np.nan)
    for ci in range(capture.num_views):
        try:
            img = capture.read_image(ci, frame_index)
        except CaptureError:
            continue
        hand = _pick_by_handedness([h for h in detector(img) if h.world is not None], capture.handedness)
        if hand is not None:
            out[ci] = hand.world - hand.world[ROOT_JOINT]
    return out


def baseline_frame_errors(source, split: str, mean_pose: np.ndarray, detector=None,
                          progress: bool = False) -> dict[str, np.ndarray]:
    """Errors (mm) of the baselines that need no training on the frames of a split: ``ransac``,
    ``mediapipe`` (N, V), ``mediapipe_fused`` (N,), ``constant`` (N,, PA-MPJPE only: a constant has
    no orientation to score). ``detector``: a :class:`pipeline.detect.MediaPipeHands` (made here if
    None). Also ``mediapipe_found`` (N, V): where MediaPipe gave world landmarks."""
    from .detect import MediaPipeHands

    ds = ShardDataset(source, split=split, confidence="raw", ground_truth=True)
    own = detector is None
    detector = detector or MediaPipeHands()
    captures: dict = {}
    N, V = len(ds.items), None
    gt_rel, ransac, mp_world, ext_all, valid = [], [], [], [], []
    try:
        for ri, si in tqdm(ds.items, desc="baselines", unit="frame", disable=not progress):
            reader = ds.readers[ri]
            if "gt_joints_world" not in reader.ground_truth_fields:
                raise HamucoError(f"{reader.path}: no ground truth; the benchmark needs captures with ground truth")
            cap = _capture_of(reader, captures)
            fid = reader.field("frame_ids")[si]
            fid = fid.decode() if isinstance(fid, bytes) else str(fid)
            try:
                frame_index = cap.frame_ids.index(fid)
            except ValueError:
                raise HamucoError(f"{reader.path}: frame {fid} is not in its capture {cap.root}") from None
            names = list(reader.camera_names)
            order = [c.name for c in cap.cameras]
            if names != order:
                raise HamucoError(f"{reader.path}: cameras {names} differ from its capture's {order}")
            g = np.asarray(reader.field("gt_joints_world")[si], np.float64)
            gt_rel.append(g - g[ROOT_JOINT])
            tri = np.asarray(reader.field("triangulated")[si], np.float64)
            ransac.append(tri - tri[ROOT_JOINT])
            ext_all.append(np.asarray(reader.field("extrinsics")[si], np.float64))
            valid.append(np.asarray(reader.field("view_valid")[si], bool))
            mp_world.append(mediapipe_world(cap, frame_index, detector))
            V = len(names)
    finally:
        if own:
            detector.close()
    if not N:
        raise HamucoError(f"{source}: the {split!r} split has no frame with a valid view")
    gt_rel_a, ext = np.stack(gt_rel), np.stack(ext_all)
    gt_cam = camera_ground_truth(gt_rel_a, ext)  # (N, V, 21, 3)
    mp = np.stack(mp_world)  # (N, V, 21, 3)
    found = np.all(np.isfinite(mp.reshape(N, V, -1)), axis=-1)
    out: dict[str, np.ndarray] = {"keys": frame_keys(ds), "view_mask": np.stack(valid), "mediapipe_found": found}
    s = scores_3d(np.stack(ransac), gt_rel_a)
    for m in METRICS:
        out[f"ransac/{m}"] = _mm(s[m])
    out["ransac/auc"] = auc_per_prediction(s["pa_joint"]).astype(np.float32)
    s = scores_3d(mp.reshape(N * V, 21, 3), gt_cam.reshape(N * V, 21, 3))
    for m in METRICS:
        out[f"mediapipe/{m}"] = _mm(s[m].reshape(N, V))
    out["mediapipe/auc"] = auc_per_prediction(s["pa_joint"]).reshape(N, V).astype(np.float32)
    # fused: every camera's landmarks similarity-aligned onto the first camera that found the hand, averaged
    ref = found.argmax(axis=1)
    fused = fuse_reference(torch.from_numpy(np.nan_to_num(mp)), torch.from_numpy(found), torch.from_numpy(ref)).numpy()
    fused[~found.any(axis=1)] = np.nan
    s = scores_3d(fused, gt_cam[np.arange(N), ref])
    for m in METRICS:
        out[f"mediapipe_fused/{m}"] = _mm(s[m])
    out["mediapipe_fused/auc"] = auc_per_prediction(s["pa_joint"]).astype(np.float32)
    const = np.broadcast_to(np.asarray(mean_pose, np.float64), gt_rel_a.shape)
    s = scores_3d(const, gt_rel_a)
    out["constant/pa_mpjpe"] = _mm(s["pa_mpjpe"])
    out["constant/auc"] = auc_per_prediction(s["pa_joint"]).astype(np.float32)
    return out


def save_frames(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``.npz`` atomically (temporary file in the same directory, then rename)."""
    from model.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_frames(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def pooled(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Frames of several captures as one set (keys must differ; every part must hold the same arrays)."""
    if not parts:
        raise HamucoError("nothing to pool")
    names = set(parts[0])
    for p in parts[1:]:
        if set(p) != names:
            raise HamucoError(f"cannot pool frame tables with different rows: {sorted(names ^ set(p))}")
    out = {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}
    if "keys" in out and len(set(out["keys"].tolist())) != len(out["keys"]):
        raise HamucoError("cannot pool frame tables that share frames (the same key twice); tables written "
                          "before keys named their capture (2026-11-29) must be remade: delete the frames/ directory")
    return out


def per_frame(errors: np.ndarray, view_mask: Optional[np.ndarray] = None) -> np.ndarray:
    """(N,) as is; (N, V) → the mean over the views with a value (NaN where none)."""
    e = np.asarray(errors, np.float64)
    if e.ndim == 1:
        return e
    if view_mask is not None:
        e = np.where(view_mask, e, np.nan)
    with np.errstate(all="ignore"):
        n = np.isfinite(e).sum(axis=1)
        return np.where(n > 0, np.nansum(np.nan_to_num(e, nan=0.0) * np.isfinite(e), axis=1) / np.maximum(n, 1),
                        np.nan)
