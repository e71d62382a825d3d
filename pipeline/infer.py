"""Run a trained HaMuCo network on new data: multi-camera captures, or images and videos in the wild.

* :func:`infer_capture`: per frame, MediaPipe detection with cross-view selection (as data
  preparation), crops, one network pass over all valid views, and the fused 3D hand: in the world
  frame with the capture's extrinsics, else in a reference view's camera frame (seed B.5). Frames
  without a hand in any view, and views skipped for a reason (unreadable image, image size ≠
  calibration, no hand), are listed in the ``skipped`` report, never dropped silently.
* :func:`infer_images`: every hand MediaPipe finds in each image (or video frame) is cropped
  and run as a single view; left hands are mirrored into the right-hand model and mirrored back.

Outputs (:func:`write_predictions`): JSON, or HDF5 with one dataset per field; overlays of the
predicted 2D skeleton on the input images on request.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from model.atomic import atomic_path, atomic_write_bytes
from model.errors import HamucoError
from model.hand_model import OPENPOSE_PARENTS
from model.inference import HandPrediction, infer

from .capture import CaptureError, decode_image
from .crop import DEFAULT_MARGIN, apply_affine, crop_affine, invert_affine, square_box, warp_crop
from .detect import MediaPipeHands, detect_frame
from .prepare import DetectorParams, crop_views, open_capture

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
BONES = [(p, j) for j, p in enumerate(OPENPOSE_PARENTS) if p >= 0]  # OpenPose order


@dataclass
class InferenceRecord:
    """One hand: where it was seen and what the network says (see :class:`HandPrediction`)."""

    source: str  # capture root or image/video path
    frame: str  # frame id (captures), frame number (videos) or "" (images)
    prediction: HandPrediction
    views: list[str]  # camera names, or ["image"]
    joints_2d_image: np.ndarray  # (V, 21, 2) predicted joints in each input image, NaN for invalid views
    boxes: np.ndarray  # (V, 4) square hand boxes (x0, y0, x1, y1) in image pixels that were cropped, NaN invalid
    handedness: str = "right"  # a left hand's crops were mirrored for the network

    def to_json(self) -> dict:
        return {"source": self.source, "frame": self.frame, "views": self.views, "handedness": self.handedness,
                "joints_2d_image": np.where(np.isfinite(self.joints_2d_image), self.joints_2d_image, None).tolist(),
                "boxes": np.where(np.isfinite(self.boxes), self.boxes, None).tolist(),
                **self.prediction.to_json()}


@dataclass
class InferenceResult:
    records: list[InferenceRecord] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {source, frame, camera, reason}


def _to_image(pred_crop_px: np.ndarray, affine: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(affine)):
        return np.full((21, 2), np.nan)
    return apply_affine(pred_crop_px, invert_affine(affine))


def infer_capture(model, capture_ref: str | os.PathLike, frames: Optional[Sequence[int]] = None,
                  use_extrinsics: bool = True, reference_view: Optional[str] = None,
                  detector: DetectorParams = DetectorParams(), vertices: bool = False,
                  overlay_dir: Optional[str | os.PathLike] = None, progress: bool = True,
                  allow_external_paths: bool = False, precision=None) -> InferenceResult:
    """3D hands of the frames of a capture (directory or ``hanco:<root>#<seq>``)."""
    capture = open_capture(str(capture_ref), allow_external_paths)
    names = [c.name for c in capture.cameras]
    ref_index = None
    if reference_view is not None:
        if reference_view not in names:
            raise HamucoError(f"{capture.root}: no camera named {reference_view!r} (cameras: {', '.join(names)})")
        ref_index = names.index(reference_view)
    calibrated = use_extrinsics and all(c.has_extrinsics for c in capture.cameras)
    ext = np.stack([np.hstack([c.R, c.t[:, None]]) for c in capture.cameras]) if calibrated else None
    result = InferenceResult()
    size = model.image_size
    frames = range(capture.num_frames) if frames is None else frames
    with MediaPipeHands(detector.max_num_hands, detector.min_detection_confidence, detector.model_complexity) as det:
        for fi in tqdm(list(frames), desc=f"infer {capture.name}", unit="frame", disable=not progress):
            fid = capture.frame_ids[fi]
            views = detect_frame(capture, fi, det, detector.margin)
            crops, affines, valid, entries = crop_views(capture, fi, views, size)
            for e in entries:
                if e["action"] == "skipped":
                    result.skipped.append({"source": str(capture.root), "frame": fid, "camera": e["camera"],
                                           "reason": e["reason"]})
            if not valid.any():
                result.skipped.append({"source": str(capture.root), "frame": fid, "camera": "*",
                                       "reason": "no hand found in any view"})
                continue
            ref = ref_index if ref_index is not None and valid[ref_index] else None
            if ref_index is not None and ref is None:
                result.skipped.append({"source": str(capture.root), "frame": fid, "camera": names[ref_index],
                                       "reason": "reference view has no hand; the first valid view is used"})
            flipped = np.array([v.flipped for v in views])
            pred = infer(model, crops[..., ::-1], valid, flipped, ext, ref, vertices=vertices, precision=precision)
            uv = np.stack([_to_image(pred.joints_2d[ci], affines[ci]) if valid[ci] else np.full((21, 2), np.nan)
                           for ci in range(len(views))])
            boxes = np.stack([v.box if valid[ci] else np.full(4, np.nan) for ci, v in enumerate(views)])
            result.records.append(InferenceRecord(str(capture.root), fid, pred, names, uv, boxes, capture.handedness))
            if overlay_dir is not None:
                for ci in np.flatnonzero(valid):
                    img = capture.read_image(ci, fi)
                    draw_skeleton(img, uv[ci])
                    _write_png(Path(overlay_dir) / f"{capture.name}_{fid}_{names[ci]}.png", img)
    if not result.records:
        n = len(list(frames))
        views = [s for s in result.skipped if s["camera"] != "*"]
        raise HamucoError(f"{capture.root}: no hand found in any view of any of the {n} frame(s) ({len(views)} of "
                          f"{n * capture.num_views} views skipped; first reason: "
                          f"{views[0]['reason'] if views else '-'})")
    return result


def _frames_of(path: Path) -> Iterable[tuple[str, np.ndarray]]:
    if path.suffix.lower() in VIDEO_SUFFIXES:
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise HamucoError(f"{path}: cannot open the video")
        n = 0
        try:
            while True:
                ok, img = cap.read()
                if not ok:
                    break
                yield str(n), img
                n += 1
        finally:
            cap.release()
        if n == 0:
            raise HamucoError(f"{path}: the video has no readable frame")
        return
    try:
        img = decode_image(path)
    except CaptureError as exc:
        raise HamucoError(f"{path}: not a readable image ({exc.reason})") from None
    yield "", img


def infer_images(model, sources: Sequence[str | os.PathLike], detector: DetectorParams = DetectorParams(),
                 vertices: bool = False, overlay_dir: Optional[str | os.PathLike] = None,
                 progress: bool = True, precision=None) -> InferenceResult:
    """Every hand in images or videos, each as a single view (camera frame of that image)."""
    paths = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        elif p.is_file():
            paths.append(p)
        else:
            raise HamucoError(f"{p}: no such image, video or directory")
    if not paths:
        raise HamucoError(f"no image or video among {', '.join(map(str, sources))}")
    size = model.image_size
    result = InferenceResult()
    with MediaPipeHands(detector.max_num_hands, detector.min_detection_confidence, detector.model_complexity) as det:
        for path in tqdm(paths, desc="infer", unit="file", disable=not progress):
            for frame, img in _frames_of(path):
                hands = det(img)
                if not hands:
                    result.skipped.append({"source": str(path), "frame": frame, "camera": "image",
                                           "reason": "no hand found"})
                    continue
                drawn = img.copy() if overlay_dir is not None else None
                for hand in hands:
                    box = square_box(hand.landmarks, DEFAULT_MARGIN)
                    flip = hand.handedness == "left"
                    A = crop_affine(box, size, flip=flip)
                    crop = warp_crop(img, A, size)[..., ::-1]
                    pred = infer(model, crop[None], None, np.array([flip]), None, None, vertices=vertices,
                                 precision=precision)
                    uv = _to_image(pred.joints_2d[0], A)[None]
                    result.records.append(InferenceRecord(str(path), frame, pred, ["image"], uv, box[None],
                                                          hand.handedness))
                    if drawn is not None:
                        draw_skeleton(drawn, uv[0])
                if drawn is not None:
                    _write_png(Path(overlay_dir) / f"{path.stem}{'_' + frame if frame else ''}.png", drawn)
    if not result.records:
        raise HamucoError(f"no hand found in {len(paths)} file(s): {', '.join(str(p) for p in paths[:3])}")
    return result


def draw_skeleton(img: np.ndarray, uv: np.ndarray, color=(60, 200, 60)) -> None:
    if not np.all(np.isfinite(uv)):
        return
    pts = np.round(uv).astype(int)
    t = max(1, img.shape[0] // 200)
    for a, b in BONES:
        cv2.line(img, tuple(pts[a]), tuple(pts[b]), color, t, cv2.LINE_AA)
    for p in pts:
        cv2.circle(img, tuple(p), t + 1, (40, 40, 220), -1, cv2.LINE_AA)


def _write_png(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise HamucoError(f"{path}: could not encode the overlay")
    atomic_write_bytes(path, lambda fh: fh.write(buf.tobytes()))


def write_predictions(result: InferenceResult, path: str | os.PathLike, provenance: dict) -> Path:
    """``.json``: a list of records; ``.h5``: arrays stacked over records (same views per record)."""
    path = Path(path)
    if path.suffix == ".json":
        doc = {"format": "hamuco-predictions", "version": 1, "provenance": provenance,
               "records": [r.to_json() for r in result.records], "skipped": result.skipped}
        data = json.dumps(doc, indent=1).encode()
        atomic_write_bytes(path, lambda fh: fh.write(data))
        return path
    if path.suffix not in (".h5", ".hdf5"):
        raise HamucoError(f"{path}: choose a .json or .h5 output")
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = "hamuco-predictions"
        f.attrs["provenance"] = json.dumps(provenance)
        f.attrs["skipped"] = json.dumps(result.skipped)
        recs = result.records
        str_dt = h5py.string_dtype()
        f.create_dataset("source", data=np.array([r.source for r in recs], dtype=object), dtype=str_dt)
        f.create_dataset("frame", data=np.array([r.frame for r in recs], dtype=object), dtype=str_dt)
        f.create_dataset("coordinate_frame", data=np.array([r.prediction.coordinate_frame for r in recs], dtype=object),
                         dtype=str_dt)
        f.create_dataset("handedness", data=np.array([r.handedness for r in recs], dtype=object), dtype=str_dt)
        f.create_dataset("joints", data=np.stack([r.prediction.joints for r in recs]).astype(np.float32))
        f.create_dataset("joints_2d_image", data=np.stack([r.joints_2d_image for r in recs]).astype(np.float32))
        f.create_dataset("boxes", data=np.stack([r.boxes for r in recs]).astype(np.float32))
        for name in ("view_joints", "pose", "shape", "camera", "view_mask"):
            f.create_dataset(name, data=np.stack([getattr(r.prediction, name) for r in recs]))
        if recs[0].prediction.vertices is not None:
            f.create_dataset("vertices", data=np.stack([r.prediction.vertices for r in recs]).astype(np.float32))
    return path


__all__ = ["infer_capture", "infer_images", "write_predictions", "InferenceResult", "InferenceRecord"]
