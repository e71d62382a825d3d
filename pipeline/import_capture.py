"""A format-v1 capture from the calibration a rig already has and one video per camera
(``hamuco import-capture``; issue 22). The calibration is read by :mod:`pipeline.calibration`; the
videos are matched to its cameras by name (``<camera name>.<ext>``); nothing is copied unless asked: the
capture's ``videos/<camera><ext>`` are symbolic links to the originals."""
from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from model.atomic import atomic_write_file
from model.errors import HamucoError

from .calibration import Calibration, baselines, read_calibration
from .capture import CAPTURE_FILE, Camera, Capture, write_capture_json

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")


def find_videos(spec: str) -> dict[str, Path]:
    """Camera name → video file: the videos of a folder, or of a glob pattern."""
    p = Path(spec)
    files = (sorted(q for q in p.iterdir() if q.suffix.lower() in VIDEO_SUFFIXES) if p.is_dir()
             else sorted(Path(f) for f in glob.glob(spec) if Path(f).suffix.lower() in VIDEO_SUFFIXES))
    if not files:
        raise HamucoError(f"{spec}: no video ({', '.join(VIDEO_SUFFIXES)}) found")
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise HamucoError(f"{spec}: two videos for camera {f.stem!r}: {out[f.stem].name} and {f.name}")
        out[f.stem] = f
    return out


def parse_offsets(text: Optional[str]) -> dict[str, int]:
    """``cam=N,cam2=M`` → {cam: N, cam2: M}."""
    out: dict[str, int] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = int(value)
        except ValueError:
            raise HamucoError(f"--frame-offsets takes camera=frames pairs, got {item!r}") from None
        if not sep or not name.strip():
            raise HamucoError(f"--frame-offsets takes camera=frames pairs, got {item!r}")
    return out


def video_info(path: Path) -> tuple[int, int, int]:
    """(width, height, declared frame count) of a video."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise HamucoError(f"{path}: the video does not open")
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    return w, h, n


def observe_hands(videos: list[Path], frames: int, handedness: str = "right") -> np.ndarray:
    """MediaPipe's hand (the given handedness, best score) in the first ``frames`` frames of every video:
    (frames, V, 21, 2) image pixels, NaN where none was found."""
    from tqdm import tqdm

    from .detect import MediaPipeHands, _pick_by_handedness

    obs = np.full((frames, len(videos), 21, 2), np.nan)
    with MediaPipeHands(max_num_hands=2) as det:
        for v, path in enumerate(tqdm(videos, desc="hands for frame offsets", unit="video")):
            cap = cv2.VideoCapture(str(path))
            try:
                for f in range(frames):
                    ok, img = cap.read()
                    if not ok:
                        break
                    hand = _pick_by_handedness(det(img), handedness)
                    if hand is not None:
                        obs[f, v] = hand.landmarks
            finally:
                cap.release()
    return obs


def import_capture(out: str | Path, videos: str, calibration: str | Path, fmt: str = "auto", units: str = "auto",
                   frame_offsets: Optional[dict] = None, every: int = 1, start: Optional[int] = None,
                   end: Optional[int] = None, copy: bool = False, handedness: str = "right",
                   estimate_offsets: int = 0, max_offset: int = 10) -> tuple[Capture, dict]:
    """Write ``OUT/capture.json`` (+ ``OUT/videos/``); returns the capture and a summary (see
    :func:`format_import_summary`). ``estimate_offsets`` > 0: the frame offsets estimated from the hand in
    that many first frames of every video (:mod:`pipeline.sync`; the curves go to ``OUT/sync.json``)."""
    out = Path(out)
    if (out / CAPTURE_FILE).exists():
        raise HamucoError(f"{out}: already holds a capture ({CAPTURE_FILE}); choose another directory")
    if every < 1:
        raise HamucoError(f"--every must be at least 1, got {every}")
    calib: Calibration = read_calibration(calibration, fmt, units)
    vids = find_videos(videos)
    names = [c.name for c in calib.cameras]
    no_video = [n for n in names if n not in vids]
    no_calib = [n for n in vids if n not in names]
    if no_video or no_calib:
        raise HamucoError("cameras and videos do not match by name:\n"
                          f"  calibration ({calib.source}): {', '.join(names)}\n"
                          f"  videos ({videos}): {', '.join(vids)}\n"
                          + (f"  no video for: {', '.join(no_video)}\n" if no_video else "")
                          + (f"  no calibration for: {', '.join(no_calib)}\n" if no_calib else "")
                          + "  (videos are matched as <camera name>.<ext>; rename them or the cameras)")
    offsets = dict(frame_offsets or {})
    sync = None
    if estimate_offsets:
        from .sync import estimate_offsets as estimate
        from .triangulate import projection_matrices

        if offsets:
            raise HamucoError("give --frame-offsets or have them estimated, not both")
        if max_offset < 2:
            raise HamucoError(f"--max-offset must be at least 2 to estimate offsets (an estimate is judged against "
                              f"the offsets 2 or more frames away), got {max_offset}")
        m = calib.in_metres()
        P = projection_matrices(np.stack([c.K for c in m]), np.stack([c.R for c in m]), np.stack([c.t for c in m]))
        from .calibration import undistort_observations

        obs = undistort_observations(observe_hands([vids[n] for n in names], estimate_offsets, handedness), m)
        sync = estimate(P, obs, names, 0, max_offset)
        offsets = {n: e["offset"] for n, e in sync.items() if e.get("offset") and not e.get("ambiguous")}
    unknown = sorted(set(offsets) - set(names))
    if unknown:
        raise HamucoError(f"--frame-offsets names camera(s) {unknown} that the calibration does not have "
                          f"(cameras: {', '.join(names)})")
    info = {}
    for c in calib.cameras:
        w, h, n = video_info(vids[c.name])
        if c.size is not None and (w, h) != tuple(c.size):
            raise HamucoError(f"{vids[c.name]}: camera {c.name}: the video is {w}x{h} but the calibration says "
                              f"{c.size[0]}x{c.size[1]} (a calibration of another resolution: rescale K first)")
        info[c.name] = (w, h, n)
    lo = max([0] + [-offsets.get(n, 0) for n in names])  # every camera's index must be >= 0 ...
    hi = min(info[n][2] - offsets.get(n, 0) for n in names)  # ... and below its frame count
    first = lo if start is None else start
    last = hi if end is None else end
    if first < lo or last > hi or first >= last:
        raise HamucoError(f"frames {first}..{last} (end exclusive) are not in every video: with these offsets the "
                          f"videos share frames {lo}..{hi}")
    indices = list(range(first, last, every))
    metres = calib.in_metres()
    out.mkdir(parents=True, exist_ok=True)
    (out / "videos").mkdir(exist_ok=True)
    cameras = []
    for c in metres:
        src = vids[c.name]
        rel = Path("videos") / f"{c.name}{src.suffix.lower()}"
        dst = out / rel
        if copy:
            atomic_write_file(dst, lambda tmp, src=src: shutil.copy2(src, tmp))
        else:  # a link made under a temporary name, then renamed onto the final one
            tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(src.resolve(), tmp)
            os.replace(tmp, dst)
        w, h, _ = info[c.name]
        cameras.append(Camera(name=c.name, width=w, height=h, K=c.K, dist=c.dist, R=c.R, t=c.t, video=rel.as_posix(),
                              frame_offset=int(offsets.get(c.name, 0))))
    identity = indices == list(range(len(indices)))
    b = baselines(metres) if len(metres) > 1 else np.zeros(0)
    summary = {"format": calib.format, "calibration": calib.source, "units": calib.units,
               "units_guessed": calib.units_guessed, "notes": calib.notes, "cameras": len(cameras),
               "resolutions": sorted({f"{c.width}x{c.height}" for c in cameras}), "frames": len(indices),
               "video_frames": [indices[0], indices[-1] + 1, every] if indices else [],
               "frame_offsets": {c.name: c.frame_offset for c in cameras if c.frame_offset},
               "baseline_m": [round(float(b.min()), 4), round(float(b.max()), 4)] if b.size else [],
               "videos": "copied" if copy else "linked",
               **({"estimated_offsets": sync} if sync is not None else {})}
    capture = Capture(root=out, cameras=cameras, frame_ids=[f"{i:06d}" for i in indices], handedness=handedness,
                      video_frames=None if identity else indices,
                      metadata={"name": out.name, "imported_from": {k: v for k, v in summary.items() if k != "estimated_offsets"},
                                "videos": {c.name: str(vids[c.name].resolve()) for c in cameras}})
    write_capture_json(capture)
    if sync is not None:
        from model.atomic import atomic_write_text
        import json

        atomic_write_text(out / "sync.json", json.dumps(sync, indent=1) + "\n")
    return capture, summary


def format_import_summary(s: dict) -> str:
    lines = [f"calibration: {s['calibration']} ({s['format']}), units {s['units']}"
             + (" (guessed)" if s["units_guessed"] else ""),
             f"cameras: {s['cameras']}, resolution {', '.join(s['resolutions'])}, videos {s['videos']}",
             f"frames: {s['frames']} (video frames {s['video_frames'][0]}..{s['video_frames'][1]} every "
             f"{s['video_frames'][2]})" if s["video_frames"] else "frames: 0"]
    if s.get("estimated_offsets"):
        from .sync import format_offsets

        lines.append("frame offsets estimated from the hand (offset: median two-view reprojection error, px):")
        lines.append(format_offsets(s["estimated_offsets"]))
    if s["frame_offsets"]:
        lines.append("frame offsets: " + ", ".join(f"{k}={v}" for k, v in s["frame_offsets"].items()))
    if s["baseline_m"]:
        lines.append(f"baselines: {s['baseline_m'][0]:.3f} to {s['baseline_m'][1]:.3f} m")
    lines += [f"note: {n}" for n in s["notes"]]
    return "\n".join(lines)
