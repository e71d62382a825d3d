"""Hand detection with MediaPipe Hands (0.10.21, bundled weights, static-image mode).

Per view: every hand MediaPipe finds (landmarks, handedness, score). Per frame, across views:
the hand that is consistent across views is kept; a view where nothing (consistent) was
found is, in a calibrated capture, recovered by triangulating the landmarks of the views that
found it and reprojecting them (marked ``recovered``), and otherwise marked invalid with its
reason. Left hands are flipped to right in the crops (``flipped``).

MediaPipe reports handedness as if the image were mirrored (a selfie camera); captures are
not mirrored, so its label is swapped here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from .capture import Capture
from .crop import DEFAULT_MARGIN, square_box

DETECTED, RECOVERED, INVALID = "detected", "recovered", "invalid"


@dataclass
class Hand:
    """One hand found by MediaPipe in one image."""

    landmarks: np.ndarray  # (21, 2) image pixels, OpenPose order (MediaPipe's order is the same)
    handedness: str  # "right" or "left", for a non-mirrored image
    score: float  # MediaPipe's handedness classification score
    world: Optional[np.ndarray] = None  # (21, 3) MediaPipe's 3D world landmarks, metres, hand-centred


@dataclass
class ViewDetection:
    """The chosen hand of one view (or why there is none)."""

    frame: str
    camera: str
    status: str  # detected, recovered or invalid
    box: np.ndarray = field(default_factory=lambda: np.full(4, np.nan))  # square (x0, y0, x1, y1)
    landmarks: np.ndarray = field(default_factory=lambda: np.full((21, 2), np.nan))
    handedness: str = ""
    score: float = 0.0
    flipped: bool = False
    reason: str = ""
    candidates: int = 0

    def to_json(self) -> dict:
        return {"frame": self.frame, "camera": self.camera, "status": self.status,
                "box": [None if not np.isfinite(v) else float(v) for v in self.box],
                "landmarks": np.where(np.isfinite(self.landmarks), self.landmarks, -1).round(3).tolist()
                if self.status != INVALID else None,
                "handedness": self.handedness, "score": round(float(self.score), 5), "flipped": self.flipped,
                "reason": self.reason, "candidates": self.candidates}

    @classmethod
    def from_json(cls, d: dict) -> "ViewDetection":
        lm = np.full((21, 2), np.nan) if d.get("landmarks") is None else np.asarray(d["landmarks"], float)
        box = np.array([np.nan if v is None else v for v in d["box"]], float)
        return cls(frame=d["frame"], camera=d["camera"], status=d["status"], box=box, landmarks=lm,
                   handedness=d["handedness"], score=d["score"], flipped=d["flipped"], reason=d["reason"],
                   candidates=d.get("candidates", 0))


class MediaPipeHands:
    """MediaPipe Hands in static-image mode; ``__call__(bgr) -> list[Hand]``."""

    name = "mediapipe-hands"

    def __init__(self, max_num_hands: int = 2, min_detection_confidence: float = 0.5, model_complexity: int = 1):
        import mediapipe as mp

        self.params = {"max_num_hands": max_num_hands, "min_detection_confidence": min_detection_confidence,
                       "model_complexity": model_complexity, "mediapipe": mp.__version__}
        self._hands = mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=max_num_hands,
                                               min_detection_confidence=min_detection_confidence,
                                               model_complexity=model_complexity)

    def __call__(self, image_bgr: np.ndarray) -> list[Hand]:
        h, w = image_bgr.shape[:2]
        res = self._hands.process(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
        hands = []
        worlds = res.multi_hand_world_landmarks or [None] * len(res.multi_hand_landmarks or [])
        for lms, cls, wl in zip(res.multi_hand_landmarks or [], res.multi_handedness or [], worlds):
            pts = np.array([[p.x * w, p.y * h] for p in lms.landmark])
            label = cls.classification[0].label.lower()
            world = None if wl is None else np.array([[p.x, p.y, p.z] for p in wl.landmark], np.float64)
            hands.append(Hand(landmarks=pts, handedness="left" if label == "right" else "right",
                              score=float(cls.classification[0].score), world=world))
        return hands

    def close(self) -> None:
        self._hands.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _pick_by_handedness(hands: list[Hand], handedness: str) -> Optional[Hand]:
    same = [h for h in hands if h.handedness == handedness]
    pool = same or hands
    return max(pool, key=lambda h: h.score) if pool else None


def select_consistent(capture: Capture, frame_index: int, candidates: list[list[Hand]],
                      margin: float = DEFAULT_MARGIN, consistency_px: float = 0.2,
                      seed: int = 0) -> list[ViewDetection]:
    """Choose one hand per view, consistent across views, recovering views without one.

    ``consistency_px``: a view's hand must lie within this fraction of its box size (median
    landmark reprojection error) of the multi-view triangulation to count as the same hand.
    """
    from .triangulate import projection_matrices, reprojection_errors, triangulate_ransac

    fid = capture.frame_ids[frame_index]
    flip = capture.handedness == "left"
    views = []
    for cam, hands in zip(capture.cameras, candidates):
        hand = _pick_by_handedness(hands, capture.handedness)
        if hand is None:
            views.append(ViewDetection(fid, cam.name, INVALID, reason="no hand found", flipped=flip))
        else:
            views.append(ViewDetection(fid, cam.name, DETECTED, box=square_box(hand.landmarks, margin),
                                       landmarks=hand.landmarks, handedness=hand.handedness, score=hand.score,
                                       flipped=flip, candidates=len(hands)))
    calibrated = all(c.has_intrinsics and c.has_extrinsics for c in capture.cameras)
    found = [v for v in views if v.status == DETECTED]
    if not calibrated or len(found) < 2:
        if calibrated:
            for v in views:
                if v.status == INVALID:
                    v.reason = f"no hand found, and {len(found)} view(s) with a hand are too few to triangulate"
        return views

    P = projection_matrices(np.stack([c.K for c in capture.cameras]), np.stack([c.R for c in capture.cameras]),
                            np.stack([c.t for c in capture.cameras]))
    uv = np.stack([v.landmarks for v in views])  # (V, 21, 2), NaN where invalid
    conf = np.array([v.score if v.status == DETECTED else 0.0 for v in views])[:, None].repeat(21, 1)
    sizes = np.array([v.box[2] - v.box[0] if v.status == DETECTED else np.nan for v in views])
    threshold = float(np.nanmedian(sizes)) * 0.1
    tri = triangulate_ransac(P, np.nan_to_num(uv), conf, threshold_px=threshold, seed=seed)
    X = tri.joints
    if not np.any(np.all(np.isfinite(X), axis=1)):
        return views
    # re-choose among every candidate of each view: the one closest to the triangulated hand
    for i, (v, hands) in enumerate(zip(views, candidates)):
        best, best_err = None, np.inf
        for hand in hands:
            err = np.nanmedian(reprojection_errors(P[i:i + 1], X, hand.landmarks[None])[0])
            if err < best_err:
                best, best_err = hand, err
        box = square_box(best.landmarks, margin) if best is not None else None
        if best is not None and best_err <= consistency_px * (box[2] - box[0]):
            views[i] = ViewDetection(fid, v.camera, DETECTED, box=box,
                                     landmarks=best.landmarks, handedness=best.handedness, score=best.score,
                                     flipped=flip, candidates=len(hands))
        elif best is not None:
            views[i] = ViewDetection(fid, v.camera, INVALID, flipped=flip, candidates=len(hands),
                                     reason=f"hand found but {best_err:.0f} px from the other views' hand")
    # recover views without a consistent hand by reprojecting the triangulated landmarks
    n_ok = sum(v.status == DETECTED for v in views)
    for i, v in enumerate(views):
        if v.status != INVALID:
            continue
        cam = capture.cameras[i]
        good = np.all(np.isfinite(X), axis=1)
        proj, depth = cam.project(X[good])
        if np.any(depth <= 0):
            v.reason += "; the triangulated hand is behind the camera"
            continue
        box = square_box(proj, margin)
        inside = (box[2] > 0) and (box[3] > 0) and (box[0] < cam.width) and (box[1] < cam.height)
        if not inside:
            v.reason += "; the triangulated hand is outside the image"
            continue
        lm = np.full((21, 2), np.nan)
        lm[good] = proj
        views[i] = ViewDetection(fid, v.camera, RECOVERED, box=box, landmarks=lm, handedness=capture.handedness,
                                 score=0.0, flipped=flip, candidates=v.candidates,
                                 reason=f"{v.reason}; recovered by triangulation from {n_ok} views")
    return views


def read_views(capture: Capture, frame_index: int, times=None) -> list:
    """Every view's image of one frame (through the decoded-image cache), or the
    :class:`~pipeline.capture.CaptureError` reading it raised; ``times`` gets the decode seconds."""
    from .capture import CaptureError
    from .provenance import StageTimes

    times = times if times is not None else StageTimes()
    images: list = []
    for ci in range(capture.num_views):
        try:
            with times("decode"):
                images.append(capture.read_image(ci, frame_index, cached=True))
        except CaptureError as exc:
            images.append(exc)
    return images


def detect_frame(capture: Capture, frame_index: int, detector: MediaPipeHands, margin: float = DEFAULT_MARGIN,
                 images: Optional[list[np.ndarray]] = None, times=None) -> list[ViewDetection]:
    """Detect the hand in every view of one frame (reads the images unless given: per view an image or
    the :class:`~pipeline.capture.CaptureError` that reading it raised). ``times``: a
    :class:`pipeline.provenance.StageTimes` to add the decode, detect and select seconds to."""
    from .capture import CaptureError
    from .provenance import StageTimes

    times = times if times is not None else StageTimes()
    if images is None:
        images = read_views(capture, frame_index, times)
    candidates, unreadable = [], {}
    for ci in range(capture.num_views):
        img = images[ci]
        if isinstance(img, CaptureError):
            candidates.append([])
            unreadable[ci] = str(img)
            continue
        cam = capture.cameras[ci]
        if img.shape[1] != cam.width or img.shape[0] != cam.height:
            candidates.append([])
            unreadable[ci] = (f"image is {img.shape[1]}x{img.shape[0]} but the calibration says "
                              f"{cam.width}x{cam.height}")
            continue
        with times("detect"):
            candidates.append(detector(img))
    with times("select"):
        views = select_consistent(capture, frame_index, candidates, margin)
    for ci, why in unreadable.items():
        views[ci].status = INVALID
        views[ci].reason = f"unusable image: {why}"
        views[ci].box = np.full(4, np.nan)
    return views
