"""Capture validation: every problem at once, each located by file, frame and camera."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from tqdm import tqdm

from .capture import IMAGE_SUFFIXES, Capture, CaptureError, GroundTruth, Problem, decode_image, parse_capture, scan_video


@dataclass
class ValidationReport:
    capture: str
    problems: list[Problem] = field(default_factory=list)
    views_checked: int = 0
    hand_reprojection_px: dict = field(default_factory=dict)  # per camera, with hand_frames (check_calibration_with_hands)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {"capture": self.capture, "ok": self.ok, "errors": len(self.errors),
                "warnings": len(self.warnings), "views_checked": self.views_checked,
                **({"hand_reprojection_px": self.hand_reprojection_px} if self.hand_reprojection_px else {}),
                "problems": [p.to_dict() for p in self.problems]}

    def format(self, limit: int = 200) -> str:
        lines = [f"{self.capture}: {'OK' if self.ok else 'INVALID'} ({len(self.errors)} errors, "
                 f"{len(self.warnings)} warnings, {self.views_checked} views checked)"]
        if self.hand_reprojection_px:
            lines.append("  hand reprojection per camera (median px): " + ", ".join(
                f"{k} {'–' if v is None else v}" for k, v in self.hand_reprojection_px.items()))
        for p in self.problems[:limit]:
            lines.append(f"  {p}")
        if len(self.problems) > limit:
            lines.append(f"  ... {len(self.problems) - limit} more (use --json for all)")
        return "\n".join(lines)


def _check_image(path: Path, camera, frame: str, problems: list[Problem]) -> None:
    if not path.is_file():
        problems.append(Problem("error", "frame_missing", "image file is missing", str(path), frame, camera.name))
        return
    if path.stat().st_size == 0:
        problems.append(Problem("error", "image_empty", "image file is empty (0 bytes)", str(path), frame,
                                camera.name))
        return
    try:
        img = decode_image(path, cv2.IMREAD_UNCHANGED)
    except CaptureError as exc:
        problems.append(Problem("error", "image_unreadable", exc.reason, str(path), frame, camera.name))
        return
    h, w = img.shape[:2]
    if (w, h) != (camera.width, camera.height):
        problems.append(Problem("error", "image_size_mismatch",
                                f"image is {w}x{h} but the calibration says {camera.width}x{camera.height}",
                                str(path), frame, camera.name))


def _check_video(capture: Capture, cam_index: int, problems: list[Problem]) -> int:
    camera = capture.cameras[cam_index]
    path = capture.root / camera.video
    if not path.is_file():
        problems.append(Problem("error", "video_missing", "video file is missing", str(path), camera=camera.name))
        return 0
    scan = scan_video(path)
    n = scan.decoded
    indices = [capture.video_index(cam_index, k) for k in range(capture.num_frames)]
    if n:
        cap = cv2.VideoCapture(str(path))
        try:
            ok, img = cap.read()
        finally:
            cap.release()
        h, w = img.shape[:2] if ok else (camera.height, camera.width)
        if (w, h) != (camera.width, camera.height):
            problems.append(Problem("error", "image_size_mismatch",
                                    f"video frames are {w}x{h} but the calibration says "
                                    f"{camera.width}x{camera.height}", str(path), capture.frame_ids[0],
                                    camera.name))
    mapped = capture.video_frames is not None or camera.frame_offset != 0
    if n == 0:
        problems.append(Problem("error", "video_unreadable", "no frame of the video can be decoded (truncated "
                                "or corrupt file)", str(path), camera=camera.name))
    else:
        why = (f"the video declares {scan.declared} frames but only {n} decode (truncated or corrupt)"
               if scan.declared > n else f"the video has only {n} frames")
        for fid, index in zip(capture.frame_ids, indices):
            if not 0 <= index < n:
                problems.append(Problem("error", "frame_missing" if scan.declared <= n else "video_frame_unreadable",
                                        why + (f" (this frame is video frame {index})" if mapped else ""), str(path),
                                        fid, camera.name))
        if not mapped and n > capture.num_frames:
            problems.append(Problem("warning", "frame_extra", f"the video has {n - capture.num_frames} frames more "
                                    f"than the {capture.num_frames} listed", str(path), camera=camera.name))
    by_index = dict(zip(indices, capture.frame_ids))
    for index, message in sorted(scan.damaged.items()):
        if index in by_index:
            problems.append(Problem("error", "video_frame_damaged", f"frame decodes with errors ({message})",
                                    str(path), by_index[index], camera.name))
    return sum(0 <= i < n for i in indices)


def _extra_files(capture: Capture, cam_index: int, problems: list[Problem]) -> None:
    camera = capture.cameras[cam_index]
    pattern = camera.images
    prefix, _, suffix = pattern.partition("{frame}")
    folder = (capture.root / prefix).parent if not prefix.endswith("/") else capture.root / prefix
    if not folder.is_dir():
        return
    listed = {str(capture.root / pattern.format(frame=f)) for f in capture.frame_ids}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.path not in listed:
            problems.append(Problem("warning", "frame_extra", "image is not listed in capture.json frames",
                                    entry.path, Path(entry.name).stem, camera.name))


# A hand-capture rig: cameras some centimetres to a few metres apart (checked in metres, as capture.json holds t)
BASELINE_RANGE_M = (0.02, 20.0)


def check_calibration(capture: Capture) -> list[Problem]:
    """Plausibility of a calibrated rig (issue 22), each finding naming the camera:

    * the cameras' spread: median distance between camera centres outside 2 cm .. 20 m (t in millimetres
      or centimetres read as metres, or the reverse), or one camera more than 10x farther from the rig's
      centre than the median camera (that camera's t in other units);
    * every camera looks at the scene: the point closest to the other cameras' optical axes must lie in
      front of it (a transposed rotation, or a camera→world pose read as world→camera, turns it away),
      and it should project inside its image (a warning).
    """
    from .calibration import CameraCalibration, scene_centre

    cams = [c for c in capture.cameras if c.has_extrinsics]
    problems: list[Problem] = []
    if len(cams) < 2:
        return problems
    where = str(capture.root / "capture.json")
    cc = [CameraCalibration(c.name, c.K if c.K is not None else np.eye(3), None, c.R, c.t) for c in cams]
    C = np.stack([c.centre for c in cc])
    # one camera far from the others first (its t in other units), then the spread of the rest
    dist = np.linalg.norm(C - np.median(C, axis=0), axis=1)
    typical = float(np.median(dist))
    odd = (dist > 10 * typical) if typical > 0 and len(cams) >= 3 else np.zeros(len(cams), bool)
    for c, d in zip(cams, dist):
        if d > 10 * typical and odd.any():
            problems.append(Problem("error", "calibration_scale", f"this camera is {d:.3g} m from the rig's "
                                    f"centre, the others a median {typical:.3g} m: its translation in other "
                                    "units than the rest?", where, camera=c.name))
    keep = C[~odd]
    i, j = np.triu_indices(len(keep), 1)
    base = np.linalg.norm(keep[i] - keep[j], axis=1)
    med = float(np.median(base)) if base.size else 0.0
    lo, hi = BASELINE_RANGE_M
    if base.size and not lo <= med <= hi:
        hint = ("translations in millimetres or centimetres read as metres? (import with --units mm or cm)"
                if med > hi else "translations in metres read as millimetres? (import with --units m)")
        problems.append(Problem("error", "calibration_scale", f"the cameras are a median {med:.4g} m apart "
                                f"(range {base.min():.4g} to {base.max():.4g} m), outside a hand-capture rig's "
                                f"{lo} to {hi} m: {hint}; cameras "
                                f"{', '.join(c.name for c, o in zip(cams, odd) if not o)}", where))
    def centre_without(skip: set):
        others = [o for m, o in enumerate(cc) if m not in skip]
        return scene_centre(others) if len(others) >= 2 else None

    def meaningful(X, skip: set) -> bool:
        """A scene centre in front of (nearly) every camera it was found from; near-parallel axes that
        diverge put the least-squares point behind them all, and then it says nothing."""
        depths = [(o.R @ X + o.t)[2] for m, o in enumerate(cc) if m not in skip]
        return X is not None and np.mean(np.array(depths) > 0) >= 0.75

    behind = set()
    for k, c in enumerate(cams):
        X = centre_without({k})
        if X is not None and meaningful(X, {k}) and (c.R @ X + c.t)[2] <= 0:
            behind.add(k)
            problems.append(Problem("error", "calibration_facing", "the scene (the point the other cameras look at) "
                                    "is behind this camera: a transposed rotation, or a camera-to-world pose "
                                    "given as world-to-camera?", where, camera=c.name))
    for k, c in enumerate(cams):
        X = centre_without({k} | behind)  # the cameras already found wrong do not move the scene
        if k in behind or X is None or c.K is None or not meaningful(X, {k} | behind):
            continue
        uv, depth = c.project(X[None])
        u, v = uv[0]
        if depth[0] <= 0 or not (0 <= u < c.width and 0 <= v < c.height):
            problems.append(Problem("warning", "calibration_facing", f"the scene (the point the other cameras "
                                    f"look at) projects to pixel ({u:.0f}, {v:.0f}), outside the "
                                    f"{c.width}x{c.height} image", where, camera=c.name))
    return problems


def calibration_consistency(capture: Capture, observations: np.ndarray, factor: float = 3.0,
                            hand_share: float = 0.3) -> tuple[list[Problem], dict]:
    """Does each camera's pose agree with what the other cameras see? ``observations`` (F, V, J, 2): image
    points of the same J scene points (hand joints) in every view, NaN where unseen.

    For each camera the points triangulated from the *other* views (RANSAC) are projected through its
    calibration and compared with its own observations (median px over frames and points). A wrong camera
    also spoils the others' triangulations, so the worst camera (relative to the others' median) is then
    left out of them and the others measured again; it is an error when its median exceeds ``hand_share``
    of the hand's size in that camera (median diagonal of its observations' bounding box; 5 % of its
    image's shorter side when it saw no hand to measure) and ``factor`` × the other cameras' median. A wrong
    pose moves the whole hand: on the travelling synthetic hands of the tests a transposed rotation
    reprojects 0.42-0.46 of the hand's size away, while MediaPipe's own errors on a hard view of a right
    calibration reach 0.19. One camera per run (fix it and validate again). Returns the problems and each
    camera's median (None where it saw too little)."""
    from .triangulate import projection_matrices, reprojection_errors, triangulate_ransac

    cams = capture.cameras
    if len(cams) < 4 or not all(c.has_intrinsics and c.has_extrinsics for c in cams):
        return [], {}
    P = projection_matrices(np.stack([c.K for c in cams]), np.stack([c.R for c in cams]),
                            np.stack([c.t for c in cams]))
    J = observations.shape[2]
    from .calibration import undistort_observations

    observations = undistort_observations(observations, cams)  # triangulation and comparison are pinhole

    def medians(exclude: set) -> dict:
        errors: list[list] = [[] for _ in cams]
        for uv in observations:
            seen = np.all(np.isfinite(uv), axis=(1, 2))
            for ci in np.nonzero(seen)[0]:
                others = seen.copy()
                others[ci] = False
                others[list(exclude - {ci})] = False
                if others.sum() < 2:
                    continue
                conf = np.repeat(others[:, None].astype(float), J, axis=1)
                X = triangulate_ransac(P, np.where(np.isfinite(uv), uv, 0.0), conf, threshold_px=25.0).joints
                ok = np.all(np.isfinite(X), axis=1)
                if ok.any():
                    errors[ci].append(reprojection_errors(P[ci:ci + 1], X[ok], uv[ci:ci + 1, ok])[0])
        return {c.name: (round(float(np.median(np.concatenate(e))), 2) if e else None) for c, e in zip(cams, errors)}

    def relative(med: dict, k: int) -> float:
        values = list(med.values())
        rest = [v for m, v in enumerate(values) if m != k and v is not None]
        return values[k] / max(float(np.median(rest)), 1e-6) if values[k] is not None and len(rest) >= 2 else 0.0

    med = medians(set())
    problems = []
    k = max(range(len(cams)), key=lambda m: relative(med, m))
    mine = list(med.values())[k]
    if mine is not None:
        again = medians({k})
        rest = [v for m, v in enumerate(again.values()) if m != k and v is not None]
        typical = float(np.median(rest)) if len(rest) >= 2 else float("inf")
        seen = np.isfinite(observations[:, k]).all(axis=2).sum(axis=1) >= 2  # frames with 2+ joints seen
        size = 0.0
        if seen.any():
            pts = observations[seen, k]
            size = float(np.median(np.linalg.norm(np.nanmax(pts, axis=1) - np.nanmin(pts, axis=1), axis=1)))
        floor = hand_share * size if size > 0 else 0.05 * min(cams[k].width, cams[k].height)
        if mine > floor and mine > factor * typical:
            problems.append(Problem("error", "calibration_reprojection", f"the hand the other cameras see "
                                    f"reprojects {mine:.1f} px (median; the hand is {size:.0f} px across) from "
                                    f"where this camera sees it, the other cameras {typical:.1f} px once it is "
                                    "left out of their triangulation: this "
                                    "camera's pose is wrong (a transposed rotation, another camera's parameters, a "
                                    "wrong unit?)", str(capture.root / "capture.json"), camera=cams[k].name))
            med = {n: (mine if m == k else v) for m, (n, v) in enumerate(again.items())}
    return problems, med


def check_calibration_with_hands(capture: Capture, frames: int = 6) -> tuple[list[Problem], dict]:
    """:func:`calibration_consistency` on MediaPipe's hand (the capture's handedness, best score) in every
    view of ``frames`` frames spread over the capture: a wrongly imported camera stands out, which geometry
    alone cannot show when the world origin lies in the scene (a transposed rotation still looks at the
    origin). MediaPipe's own error on a hard view (a hand seen edge-on, fingers mistaken) reads as a
    calibration error too: on the synthetic renders of the tests one view in six is 20-50 px off with a
    right calibration, so a flagged camera is to be looked at, not proof."""
    from .detect import MediaPipeHands, _pick_by_handedness

    cams = capture.cameras
    if len(cams) < 4 or not all(c.has_intrinsics and c.has_extrinsics for c in cams):
        return [], {}
    picks = np.unique(np.linspace(0, capture.num_frames - 1, min(frames, capture.num_frames)).round().astype(int))
    obs = np.full((len(picks), len(cams), 21, 2), np.nan)
    with MediaPipeHands(max_num_hands=2) as det:
        for f, fi in enumerate(picks):
            for ci in range(len(cams)):
                try:
                    hand = _pick_by_handedness(det(capture.read_image(ci, int(fi))), capture.handedness)
                except CaptureError:
                    hand = None
                if hand is not None:
                    obs[f, ci] = hand.landmarks
    return calibration_consistency(capture, obs)


def _check_ground_truth(capture: Capture, problems: list[Problem]) -> None:
    if capture.ground_truth_file is None and capture.ground_truth_loader is None:
        return
    where = str(capture.root / capture.ground_truth_file) if capture.ground_truth_file else str(capture.root)
    try:
        gt: Optional[GroundTruth] = capture.ground_truth
    except CaptureError as exc:
        problems.append(Problem("error", "ground_truth_unreadable", str(exc), where))
        return
    if gt is None:
        return
    F, V = capture.num_frames, capture.num_views
    expect = {"joints_world": (F, 21, 3), "hand_pose": (F, 48), "transl": (F, 3), "joints_2d": (F, V, 21, 2),
              "visibility": (F, V, 21)}
    for key, shape in expect.items():
        arr = getattr(gt, key)
        if arr is not None and arr.shape != shape:
            problems.append(Problem("error", "ground_truth_shape",
                                    f"{key} has shape {arr.shape}, expected {shape}", where))
    if gt.betas is not None and gt.betas.shape not in ((10,), (F, 10)):
        problems.append(Problem("error", "ground_truth_shape", f"betas has shape {gt.betas.shape}", where))
    joints = gt.joints_world
    if joints is not None and joints.shape == (F, 21, 3):
        bad = ~np.all(np.isfinite(joints), axis=(1, 2))
        for fi in np.nonzero(bad)[0]:
            problems.append(Problem("warning", "ground_truth_nonfinite", "3D joints hold NaN or infinity",
                                    where, capture.frame_ids[fi]))


def validate_capture(source: str | os.PathLike | Capture, check_images: bool = True,
                     progress: bool = False, allow_external_paths: bool = False,
                     hand_frames: int = 0) -> ValidationReport:
    """Check a capture directory (format v1) or an already opened :class:`Capture`."""
    if isinstance(source, Capture):
        capture, problems = source, []
    else:
        capture, problems = parse_capture(source, allow_external_paths)
    report = ValidationReport(capture=str(capture.root if capture else source), problems=problems)
    if capture is None:
        return report
    if check_images:
        total = capture.num_views * capture.num_frames
        bar = tqdm(total=total, unit="view", desc="validate", disable=not progress)
        for ci, cam in enumerate(capture.cameras):
            if cam.width <= 0:
                bar.update(capture.num_frames)
                continue
            if cam.video is not None:
                report.views_checked += _check_video(capture, ci, problems)
                bar.update(capture.num_frames)
                continue
            if cam.images is None or "{frame}" not in cam.images:
                bar.update(capture.num_frames)
                continue
            for fi, fid in enumerate(capture.frame_ids):
                _check_image(capture.image_path(ci, fi), cam, fid, problems)
                report.views_checked += 1
                bar.update(1)
            _extra_files(capture, ci, problems)
        bar.close()
    _check_ground_truth(capture, problems)
    calibration = check_calibration(capture)
    problems.extend(calibration)
    if hand_frames > 0 and not any(p.severity == "error" for p in calibration):
        found, medians = check_calibration_with_hands(capture, hand_frames)
        problems.extend(found)
        report.hand_reprojection_px = medians
    return report


PER_VIEW_CODES = {"frame_missing", "image_empty", "image_unreadable", "image_size_mismatch", "video_missing",
                  "video_unreadable", "video_frame_unreadable", "video_frame_damaged"}


def capture_level_errors(report: ValidationReport) -> list[Problem]:
    """The errors that stop data preparation: everything but problems of single views (missing,
    unreadable, truncated or mis-sized images and video frames), which are quarantined instead."""
    return [p for p in report.errors if p.code not in PER_VIEW_CODES]


def report_json(report: ValidationReport) -> str:
    return json.dumps(report.to_dict(), indent=1)
