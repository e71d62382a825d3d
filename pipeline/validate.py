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
                "problems": [p.to_dict() for p in self.problems]}

    def format(self, limit: int = 200) -> str:
        lines = [f"{self.capture}: {'OK' if self.ok else 'INVALID'} ({len(self.errors)} errors, "
                 f"{len(self.warnings)} warnings, {self.views_checked} views checked)"]
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
    if n == 0:
        problems.append(Problem("error", "video_unreadable", "no frame of the video can be decoded (truncated "
                                "or corrupt file)", str(path), camera=camera.name))
    elif n < capture.num_frames:
        why = (f"the video declares {scan.declared} frames but only {n} decode (truncated or corrupt)"
               if scan.declared > n else f"the video has only {n} frames")
        for fid in capture.frame_ids[n:]:
            problems.append(Problem("error", "frame_missing" if scan.declared <= n else "video_frame_unreadable",
                                    why, str(path), fid, camera.name))
    elif n > capture.num_frames:
        problems.append(Problem("warning", "frame_extra", f"the video has {n - capture.num_frames} frames more "
                                f"than the {capture.num_frames} listed", str(path), camera=camera.name))
    for index, message in sorted(scan.damaged.items()):
        if index < capture.num_frames:
            problems.append(Problem("error", "video_frame_damaged", f"frame decodes with errors ({message})",
                                    str(path), capture.frame_ids[index], camera.name))
    return min(n, capture.num_frames)


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
                     progress: bool = False, allow_external_paths: bool = False) -> ValidationReport:
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
    return report


PER_VIEW_CODES = {"frame_missing", "image_empty", "image_unreadable", "image_size_mismatch", "video_missing",
                  "video_unreadable", "video_frame_unreadable", "video_frame_damaged"}


def capture_level_errors(report: ValidationReport) -> list[Problem]:
    """The errors that stop data preparation: everything but problems of single views (missing,
    unreadable, truncated or mis-sized images and video frames), which are quarantined instead."""
    return [p for p in report.errors if p.code not in PER_VIEW_CODES]


def report_json(report: ValidationReport) -> str:
    return json.dumps(report.to_dict(), indent=1)
