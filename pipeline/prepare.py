"""Data preparation as plain functions: capture identity, detection, crops, labels, refinement,
shards, quarantine reports and the dataset index. The Luigi tasks in ``tasks/`` call these.

Everything that determines an output goes into a short hash in its path
(:func:`version_hash`), so a changed labeler or weights file writes a new version beside the
old one instead of over it, and an unchanged input finds its outputs complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from model.atomic import remove_stale_temporaries  # noqa: F401  (tasks use it)
from model.errors import HamucoError

from .capture import Capture, CaptureError, atomic_write_bytes, load_capture
from .crop import DEFAULT_CROP_SIZE, DEFAULT_MARGIN, apply_affine, crop_affine, crop_intrinsics, invert_affine, \
    warp_crop
from .detect import DETECTED, INVALID, RECOVERED, MediaPipeHands, ViewDetection, detect_frame, read_views
from .provenance import StageTimes, code_version

HANCO_PREFIX = "hanco:"


# ----------------------------------------------------------------------------- captures

def open_capture(ref: str, allow_external_paths: bool = False) -> Capture:
    """A capture from a reference: a capture directory, or ``hanco:<root>#<sequence>``."""
    if ref.startswith(HANCO_PREFIX):
        from .hanco import read_hanco_sequence

        root, _, seq = ref[len(HANCO_PREFIX):].rpartition("#")
        if not root or not seq:
            raise HamucoError(f"{ref}: a HanCo capture is written hanco:<root>#<sequence>, e.g. hanco:/data/HanCo#0001")
        return read_hanco_sequence(root, seq)
    return load_capture(ref, allow_external_paths)


_HASH_CACHE: dict = {}


def _capture_files(capture: Capture) -> list[str]:
    """Every file the capture is made of (computed once per capture object: capture.json fixes it)."""
    if capture._files_cache is None:
        capture._files_cache = [str(f) for f in _list_capture_files(capture)]
    return capture._files_cache


def _list_capture_files(capture: Capture) -> list[Path]:
    files = []
    if capture.layout == "hanco":
        seq = capture.metadata["sequence"]
        files += sorted((capture.root / "calib" / seq).glob("*.json"))
        files += sorted((capture.root / "rgb_2D_keypoints" / seq).glob("*/*.json"))
    else:
        files.append(capture.root / "capture.json")
        if capture.ground_truth_file:
            files.append(capture.root / capture.ground_truth_file)
    for ci, cam in enumerate(capture.cameras):
        if cam.video is not None:
            files.append(capture.root / cam.video)
        else:
            files += [capture.image_path(ci, fi) for fi in range(capture.num_frames)]
    return files


def capture_content_hash(capture: Capture) -> str:
    """sha256 over the bytes of every file of the capture (cached per process by file stats)."""
    files = _capture_files(capture)
    stats = []
    for f in files:  # Luigi asks for outputs often: one os.stat per file, no pathlib, no JSON
        try:
            st = os.stat(f)
            stats.append((f, st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((f, -1, -1))
    key = (str(capture.root), tuple(stats))
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        for f, size, _ in stats:
            h.update(os.path.relpath(f, capture.root).encode())
            if size >= 0:
                with open(f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
            else:
                h.update(b"<missing>")
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def version_hash(*parts, length: int = 10) -> str:
    """Short, stable hash of JSON-serialisable parts (sorted keys)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def capture_key(capture: Capture) -> str:
    """Directory name for a capture's outputs: its name and content hash."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in capture.name)
    return f"{safe}-{capture_content_hash(capture)[:10]}"


def shard_frames(num_frames: int, frames_per_shard: int) -> list[range]:
    return [range(s, min(s + frames_per_shard, num_frames)) for s in range(0, num_frames, frames_per_shard)]


def append_run_log(out_dir: Path, task: str, output: Path) -> None:
    """One line per task run (host, pid, time, output): an audit of who wrote what."""
    out_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": socket.gethostname(),
                       "pid": os.getpid(), "task": task, "output": str(output)}) + "\n"
    fd = os.open(out_dir / "runs.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=1)
    atomic_write_bytes(Path(path), lambda fh: fh.write(text.encode()))


# ----------------------------------------------------------------------------- detection

@dataclass(frozen=True)
class DetectorParams:
    max_num_hands: int = 2
    min_detection_confidence: float = 0.5
    model_complexity: int = 1
    margin: float = DEFAULT_MARGIN


def detect_frames(capture: Capture, frames: Sequence[int], params: DetectorParams,
                  progress: bool = True, times: Optional[StageTimes] = None) -> list[list[ViewDetection]]:
    """Per frame, per view: the chosen hand box (detected, recovered or invalid with a reason).
    ``times``: a :class:`StageTimes` to add the seconds of each stage to."""
    if capture.layout == "hanco":
        return [_whole_image_views(capture, fi) for fi in frames]
    out = []
    times = times if times is not None else StageTimes()
    with times("detector_load"):
        det = MediaPipeHands(params.max_num_hands, params.min_detection_confidence, params.model_complexity)
    with det:
        # the next frame's images are decoded in a background thread while MediaPipe works on this one
        ahead = prefetched(lambda fi, t: read_views(capture, fi, t), frames, times)
        for fi, images in tqdm(zip(frames, ahead), total=len(frames), desc=f"detect {capture.name}", unit="frame",
                               disable=not progress):
            out.append(detect_frame(capture, fi, det, params.margin, images=images, times=times))
    return out


def prefetched(fn, items: Sequence, times: StageTimes):
    """``fn(item, times)`` for each item in order, the next one computed in a background thread while the
    caller works on the current one (decoding is I/O and OpenCV code that releases the GIL, so on a CPU
    whose other core the models leave idle it costs no wall time). The background seconds go to
    ``times`` as ``<stage>_background``, the caller's waits as ``prefetch_wait``; an exception is
    raised where its item is consumed."""
    from concurrent.futures import ThreadPoolExecutor

    items = list(items)
    if not items:
        return

    def run(item):
        sub = StageTimes()
        return fn(item, sub), sub

    with ThreadPoolExecutor(1, thread_name_prefix="hamuco-prefetch") as pool:
        pending = pool.submit(run, items[0])
        for k in range(len(items)):
            with times("prefetch_wait"):
                result, sub = pending.result()
            times.merge(sub, suffix="_background")
            if k + 1 < len(items):
                pending = pool.submit(run, items[k + 1])
            yield result


def _whole_image_views(capture: Capture, fi: int) -> list[ViewDetection]:
    """Pre-cropped datasets (HanCo): the whole image is the hand box (as the paper does)."""
    fid = capture.frame_ids[fi]
    views = []
    for ci, cam in enumerate(capture.cameras):
        path = capture.image_path(ci, fi)
        if path is not None and (not path.is_file() or path.stat().st_size == 0):
            views.append(ViewDetection(fid, cam.name, INVALID, reason=f"{path}: image missing or empty"))
            continue
        box = np.array([-0.5, -0.5, cam.width - 0.5, cam.height - 0.5])
        side = max(cam.width, cam.height)
        box[2:] = box[:2] + side
        views.append(ViewDetection(fid, cam.name, DETECTED, box=box, handedness=capture.handedness, score=1.0,
                                   flipped=capture.handedness == "left", reason="pre-cropped dataset image"))
    return views


def detections_to_json(frames: Sequence[int], detections: list[list[ViewDetection]], meta: dict) -> dict:
    return {"meta": meta, "frames": list(frames), "views": [[v.to_json() for v in vs] for vs in detections]}


def detections_from_json(doc: dict) -> list[list[ViewDetection]]:
    return [[ViewDetection.from_json(v) for v in vs] for vs in doc["views"]]


# ----------------------------------------------------------------------------- labelling

@dataclass(frozen=True)
class RefineParams:
    threshold_px: float = 15.0  # RANSAC inlier threshold in image pixels
    min_confidence: float = 0.05
    seed: int = 0


def make_labeler(name: str, weights_path: Optional[str] = None, weights_url: Optional[str] = None,
                 weights_sha256: Optional[str] = None, model_dir: Optional[str] = None,
                 file_name: Optional[str] = None, noise: Optional[dict] = None, precision: str = "auto"):
    """The labeler by name: ``mediapipe``, ``openpose``, ``imported`` (HanCo's published labels)
    or ``noisy-gt`` (projected ground truth with the ``noise`` settings, for label-noise studies).
    ``precision``: OpenPose's ``auto`` (default) / ``fast`` path, the fastest of this machine (bf16 on a CPU
    with native bf16, NNPACK fp32 on other CPUs), or ``fp32``, the published algorithm."""
    if name == "noisy-gt":
        from .labelers.noisy_gt import NoisyGroundTruthLabeler

        return NoisyGroundTruthLabeler(**(noise or {}))
    if name == "mediapipe":
        from .labelers.mediapipe import MediaPipeLabeler

        return MediaPipeLabeler()
    if name == "openpose":
        from .labelers.openpose import DEFAULT_FILE_NAME, DEFAULT_URL, OpenPoseLabeler

        return OpenPoseLabeler(weights_path=weights_path, weights_url=weights_url or DEFAULT_URL,
                               sha256=weights_sha256, model_dir=model_dir, file_name=file_name or DEFAULT_FILE_NAME,
                               precision=precision)
    if name == "imported":
        return None
    raise HamucoError(f"unknown labeler {name!r}: choose mediapipe, openpose, imported or noisy-gt")


def _imported_labels(capture: Capture, fi: int, ci: int, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from .hanco import read_hanco_keypoints

    if capture.layout != "hanco":
        raise HamucoError(f"{capture.root}: the 'imported' labeler reads HanCo's published rgb_2D_keypoints; "
                          "this capture has none")
    kp, conf = read_hanco_keypoints(capture.root, capture.metadata["sequence"], capture.cameras[ci].name,
                                    capture.frame_ids[fi])
    missing = np.all(kp == 0, axis=1)
    return apply_affine(kp, affine).astype(np.float32), np.where(missing, 0.0, conf).astype(np.float32)


def crop_views(capture: Capture, fi: int, views: list[ViewDetection], crop_size: int = DEFAULT_CROP_SIZE,
               times: Optional[StageTimes] = None):
    """The hand crops of one frame: (BGR crops (V, S, S, 3), affines (V, 2, 3) image → crop, NaN for
    invalid views, valid (V,) bool, quarantine entries for skipped and recovered views)."""
    times = times if times is not None else StageTimes()
    V = capture.num_views
    crops = np.zeros((V, crop_size, crop_size, 3), np.uint8)
    affines = np.zeros((V, 2, 3))
    valid = np.array([v.status != INVALID for v in views])
    quarantine = []
    for ci, v in enumerate(views):
        if v.status == INVALID:
            quarantine.append(_entry(v, "skipped", v.reason))
            affines[ci] = np.nan
            continue
        affines[ci] = crop_affine(v.box, crop_size, flip=v.flipped)
        try:
            with times("decode"):
                image = capture.read_image(ci, fi, cached=True)
        except CaptureError as exc:
            valid[ci] = False
            affines[ci] = np.nan
            quarantine.append(_entry(v, "skipped", f"unusable image: {exc}"))
            continue
        with times("crop"):
            crops[ci] = warp_crop(image, affines[ci], crop_size)
        if v.status == RECOVERED:
            quarantine.append(_entry(v, "recovered", v.reason))
    return crops, affines, valid, quarantine


def label_frames(capture: Capture, frames: Sequence[int], detections: list[list[ViewDetection]], labeler,
                 crop_size: int = DEFAULT_CROP_SIZE, refine: RefineParams = RefineParams(),
                 progress: bool = True, times: Optional[StageTimes] = None):
    """Crops, labels and (calibrated captures) multi-view refinement for each frame.

    Yields ``(ShardSample, quarantine entries)`` per frame; ``times`` gets the seconds of decoding,
    cropping, labelling and refinement.
    """
    times = times if times is not None else StageTimes()
    from .shards import ShardSample
    from .triangulate import projection_matrices, triangulate_ransac

    V = capture.num_views
    gt = capture.ground_truth
    calibrated = all(c.has_intrinsics and c.has_extrinsics for c in capture.cameras)
    P = projection_matrices(np.stack([c.K for c in capture.cameras]), np.stack([c.R for c in capture.cameras]),
                            np.stack([c.t for c in capture.cameras])) if calibrated else None
    ext = np.stack([np.hstack([c.R, c.t[:, None]]) if c.has_extrinsics else np.full((3, 4), np.nan)
                    for c in capture.cameras])
    ext_known = np.array([c.has_extrinsics for c in capture.cameras])

    def finish(fi, fid, views, crops, affines, valid, idx, quarantine, kp, conf):
        """Mask empty views, refine by RANSAC triangulation, and make the frame's sample. (Run in a
        background thread beside the labeler it made no difference: RANSAC is Python that holds the GIL.)"""
        with times("refine"):
            for ci in idx:
                if not np.any(conf[ci] > 0):
                    valid[ci] = False
                    quarantine.append(_entry(views[ci], "masked", "the labeler found no joint in the crop"))
            conf[~valid] = 0.0
            refined = conf.copy()
            triangulated = np.full((21, 3), np.nan, np.float32)
            reproj = np.full((V, 21), np.nan, np.float32)
            if calibrated and valid.sum() >= 2:
                uv_img = np.zeros((V, 21, 2))
                for ci in np.nonzero(valid)[0]:
                    uv_img[ci] = apply_affine(kp[ci], invert_affine(affines[ci]))
                tri = triangulate_ransac(P, uv_img, np.where(valid[:, None], conf, 0.0),
                                         threshold_px=refine.threshold_px, min_confidence=refine.min_confidence,
                                         seed=refine.seed)
                triangulated = tri.joints.astype(np.float32)
                reproj = np.where(valid[:, None], tri.reprojection_error, np.nan).astype(np.float32)
                refined = np.where(valid[:, None], tri.refined_confidence, 0.0).astype(np.float32)
            crop_K = np.stack([crop_intrinsics(c.K, affines[ci]) if valid[ci] and c.has_intrinsics
                               else np.full((3, 3), np.nan) for ci, c in enumerate(capture.cameras)])
            gt_world = gt_2d = gt_vis = None
            if gt is not None and gt.joints_world is not None:
                gt_world = gt.joints_world[fi].astype(np.float32)
                if gt.joints_2d is not None:
                    gt_2d = np.stack([apply_affine(gt.joints_2d[fi, ci], affines[ci]) if valid[ci]
                                      else np.full((21, 2), np.nan) for ci in range(V)]).astype(np.float32)
                if gt.visibility is not None:
                    gt_vis = gt.visibility[fi].astype(bool)
            sample = ShardSample(
                frame_id=fid, crops=crops[..., ::-1].copy(), keypoints=kp, confidence=conf, refined_confidence=refined,
                view_valid=valid, recovered=np.array([v.status == RECOVERED for v in views]) & valid,
                flipped=np.array([v.flipped for v in views]), crop_affine=affines, crop_K=crop_K, extrinsics=ext,
                extrinsics_known=ext_known, triangulated=triangulated, reprojection_error=reproj,
                gt_joints_world=gt_world, gt_joints_2d=gt_2d, gt_visibility=gt_vis)
        return sample, quarantine

    work = list(zip(frames, detections))
    # the next frame's crops are decoded and cut in a background thread while the labeler runs
    ahead = prefetched(lambda item, t: crop_views(capture, item[0], item[1], crop_size, t), work, times)
    for (fi, views), (crops, affines, valid, quarantine) in tqdm(zip(work, ahead), total=len(work),
                                                                  desc=f"label {capture.name}", unit="frame",
                                                                  disable=not progress):
        fid = capture.frame_ids[fi]
        kp = np.zeros((V, 21, 2), np.float32)
        conf = np.zeros((V, 21), np.float32)
        idx = np.nonzero(valid)[0]
        times.count("label", len(idx))
        stage = times.begin("label")
        if len(idx):
            if labeler is None:
                for ci in idx:
                    kp[ci], conf[ci] = _imported_labels(capture, fi, ci, affines[ci])
            elif getattr(labeler, "name", "") == "noisy-gt":
                if gt is None or gt.joints_2d is None:
                    raise HamucoError(f"{capture.root}: the noisy-gt labeler needs a capture with 2D ground truth")
                gt_crop = np.stack([apply_affine(gt.joints_2d[fi, ci], affines[ci]) for ci in idx])
                kp[idx], conf[idx] = labeler.label_views(gt_crop, crop_size, fi)
            elif getattr(labeler, "name", "") == "mediapipe":
                hints = [(apply_affine(views[ci].landmarks, affines[ci]), views[ci].score)
                         if views[ci].status == DETECTED else None for ci in idx]
                kp[idx], conf[idx] = labeler.label(crops[idx], hints=hints)
            else:
                kp[idx], conf[idx] = labeler.label(crops[idx])
        stage.end()
        yield finish(fi, fid, views, crops, affines, valid, idx, quarantine, kp, conf)


def _entry(v: ViewDetection, action: str, reason: str) -> dict:
    return {"frame": v.frame, "camera": v.camera, "action": action, "reason": reason}


def write_label_shard(path: Path, capture: Capture, frames: Sequence[int], detections, labeler, labeler_name: str,
                      labeler_params: dict, weights_sha256: str, crop_size: int, refine: RefineParams,
                      provenance: dict, progress: bool = True, times: Optional[StageTimes] = None) -> list[dict]:
    """Write one HDF5 shard (atomically); returns the quarantine entries of its frames (``times``: the
    seconds per stage, writing included)."""
    times = times if times is not None else StageTimes()
    from .shards import ShardWriter

    remove_stale_temporaries(path)
    attrs = {"code_version": code_version(), "labeler": labeler_name, "labeler_params": labeler_params,
             "weights_sha256": weights_sha256, "source_capture": str(capture.root),
             "capture_hash": capture_content_hash(capture), "handedness": capture.handedness,
             "provenance": provenance}
    entries: list[dict] = []
    with ShardWriter(path, [c.name for c in capture.cameras], crop_size, attrs) as writer:
        for sample, quarantine in label_frames(capture, frames, detections, labeler, crop_size, refine, progress,
                                               times):
            with times("write"):
                writer.add(sample)
            entries.extend(quarantine)
    return entries


# ----------------------------------------------------------------------------- reports and index

def quarantine_report(capture: Capture, entries: list[dict], views_total: int) -> dict:
    counts = {a: sum(e["action"] == a for e in entries) for a in ("skipped", "recovered", "masked")}
    return {"capture": str(capture.root), "name": capture.name, "views": views_total, "counts": counts,
            "entries": sorted(entries, key=lambda e: (e["frame"], e["camera"], e["action"]))}


def format_quarantine(report: dict, limit: int = 50) -> str:
    c = report["counts"]
    lines = [f"{report['name']}: {report['views']} views, {c['skipped']} skipped, {c['recovered']} recovered, "
             f"{c['masked']} masked"]
    if report["entries"]:
        lines.append(f"  {'frame':<10} {'camera':<10} {'action':<10} reason")
        for e in report["entries"][:limit]:
            lines.append(f"  {e['frame']:<10} {e['camera']:<10} {e['action']:<10} {e['reason']}")
        if len(report["entries"]) > limit:
            lines.append(f"  ... {len(report['entries']) - limit} more in the JSON report")
    return "\n".join(lines)


HANCO_TEST_FROM = 1200


def split_shards(shards: list[dict], split_by: str, val_fraction: float, test_fraction: float) -> dict:
    """Assign each shard to train/val/test: whole captures, frame ranges within each capture, or HanCo's
    split by sequence number (< 1200 train, ≥ 1200 test)."""
    if split_by not in ("capture", "frame", "hanco"):
        raise HamucoError(f"split_by must be 'capture', 'frame' or 'hanco', not {split_by!r}")
    out = {"train": [], "val": [], "test": []}
    if split_by == "hanco":  # the paper's split: sequences numbered below 1200 train, the others test
        import re

        for s in shards:
            m = re.search(r"(\d+)$", s["capture"])
            if m is None:
                raise HamucoError(f"{s['capture']}: split 'hanco' needs HanCo sequences (hanco-<number>)")
            out["test" if int(m.group(1)) >= HANCO_TEST_FROM else "train"].append(s["path"])
        return out
    if split_by == "capture":
        names = sorted({s["capture"] for s in shards})
        n = len(names)
        n_test = int(round(test_fraction * n))
        n_val = int(round(val_fraction * n))
        role = {name: ("test" if i >= n - n_test else "val" if i >= n - n_test - n_val else "train")
                for i, name in enumerate(names)}
        for s in shards:
            out[role[s["capture"]]].append(s["path"])
        return out
    by_capture: dict[str, list[dict]] = {}
    for s in shards:
        by_capture.setdefault(s["capture"], []).append(s)
    for group in by_capture.values():
        group.sort(key=lambda s: s["first_frame"])
        n = len(group)
        n_test = max(1, int(round(test_fraction * n))) if test_fraction > 0 and n >= 3 else 0
        n_val = max(1, int(round(val_fraction * n))) if val_fraction > 0 and n >= 3 else 0
        for i, s in enumerate(group):
            role = "test" if i >= n - n_test else "val" if i >= n - n_test - n_val else "train"
            out[role].append(s["path"])
    return out
