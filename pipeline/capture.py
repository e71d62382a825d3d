"""Capture format v1: a directory of synchronized multi-camera frames plus calibration.

Layout (paths inside ``capture.json`` are relative to the capture directory)::

    capture.json            format, version, handedness, frame ids, cameras
    images/<camera>/<frame>.png|jpg   one image per camera and frame (or)
    videos/<camera>.mp4     one video per camera, frames synchronized by index
    ground_truth.npz        optional: joints, hand-model parameters, 2D projections
    masks/<camera>/<frame>.png        optional: 0 background, 1 hand, 2 forearm, 3 occluder

See the README for every field. The reader is lenient: :func:`parse_capture` returns the
capture together with every problem found in ``capture.json``, so that validation can report
all of them at once; :func:`load_capture` raises on the first error-level problem.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from model.atomic import atomic_write_bytes  # noqa: F401  (re-exported: pipeline's writers use it)
from model.errors import HamucoError

CAPTURE_FORMAT = "hamuco-capture"
CAPTURE_VERSION = 1
CAPTURE_FILE = "capture.json"
GROUND_TRUTH_FILE = "ground_truth.npz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
HANDEDNESS = ("right", "left")


class CaptureError(HamucoError):
    """A capture cannot be read; the message names the file, frame and camera."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


def image_integrity_problem(data: bytes) -> Optional[str]:
    """Why an encoded image is incomplete, or None. Decoders fill a truncated JPEG with grey and
    only print a warning, so the end markers are checked: a JPEG's end-of-image marker after its
    last scan (0xFFD9 cannot occur inside entropy-coded data), a PNG's IEND chunk."""
    if data[:3] == b"\xff\xd8\xff":
        sos = data.rfind(b"\xff\xda")
        if sos < 0:
            return "truncated JPEG: no image data"
        if data.find(b"\xff\xd9", sos) < 0:
            return "truncated JPEG: no end-of-image marker"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if data.rfind(b"IEND") < 0:
            return "truncated PNG: no IEND chunk"
    return None


def decode_image(path: Optional[Path], flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Read and decode an image file completely, or raise :class:`CaptureError` whose ``reason`` says
    why (missing, empty, truncated, cannot be decoded)."""
    if path is None or not Path(path).exists():
        raise CaptureError(f"{path}: image missing", "image missing")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CaptureError(f"{path}: image unreadable ({exc.strerror or exc})",
                           f"image unreadable ({exc.strerror or exc})") from None
    if not data:
        raise CaptureError(f"{path}: image empty (0 bytes)", "image unreadable (empty file, 0 bytes)")
    problem = image_integrity_problem(data)
    if problem:
        raise CaptureError(f"{path}: image unreadable ({problem})", f"image unreadable ({problem})")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise CaptureError(f"{path}: image unreadable (cannot be decoded)", "image unreadable (cannot be decoded)")
    return img


class DecodedImageCache:
    """The images this process decoded last, up to a byte budget (the least recently used are dropped
    first), keyed by path, size, modification time and decode flags. Detection and labelling of one
    shard read the same images; with one worker both run in one process, so the second read costs a
    dictionary lookup instead of a decode. Cached arrays are read-only; thread-safe."""

    def __init__(self, budget_bytes: int):
        from collections import OrderedDict

        self.budget = int(budget_bytes)
        self._images: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(path: Path, flags: int) -> Optional[tuple]:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (str(path), st.st_size, st.st_mtime_ns, flags)

    def get(self, key: tuple) -> Optional[np.ndarray]:
        with self._lock:
            img = self._images.get(key)
            if img is None:
                self.misses += 1
                return None
            self._images.move_to_end(key)
            self.hits += 1
            return img

    def put(self, key: tuple, img: np.ndarray) -> np.ndarray:
        img.flags.writeable = False
        if img.nbytes > self.budget:
            return img
        with self._lock:
            if key not in self._images:
                self._images[key] = img
                self._bytes += img.nbytes
            while self._bytes > self.budget:
                _, old = self._images.popitem(last=False)
                self._bytes -= old.nbytes
        return img

    def clear(self) -> None:
        with self._lock:
            self._images.clear()
            self._bytes = 0


#: the process's cache of decoded capture images (``HAMUCO_IMAGE_CACHE_MB``, default 512; 0 turns it off)
IMAGE_CACHE = DecodedImageCache(int(float(os.environ.get("HAMUCO_IMAGE_CACHE_MB", "512")) * (1 << 20)))


def decode_image_cached(path: Optional[Path], flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """:func:`decode_image` through :data:`IMAGE_CACHE` (a read-only array; errors are not cached)."""
    key = DecodedImageCache.key(path, flags) if path is not None and IMAGE_CACHE.budget > 0 else None
    if key is None:
        return decode_image(path, flags)
    img = IMAGE_CACHE.get(key)
    if img is None:
        img = IMAGE_CACHE.put(key, decode_image(path, flags))
    return img


@dataclass(frozen=True)
class VideoScan:
    """One full decode of a video: frames the container declares, frames that decode, and the frames
    during whose decoding FFmpeg reported damage (index → its first message)."""

    declared: int
    decoded: int
    damaged: dict


_VIDEO_SCANS: dict = {}
_FD2_LOCK = threading.Lock()


def scan_video(path: str | os.PathLike) -> VideoScan:
    """Decode every frame of a video once (cached per file version and process).

    OpenCV hides FFmpeg's decoding errors (a damaged frame decodes with concealed blocks), so the
    decoder's messages, which it writes to file descriptor 2, are captured while each frame is read
    and attributed to that frame.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return VideoScan(0, 0, {})
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _VIDEO_SCANS:
        return _VIDEO_SCANS[key]
    damaged: dict = {}
    decoded = 0
    with _FD2_LOCK, tempfile.TemporaryFile() as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        seen = 0
        try:
            cap = cv2.VideoCapture(str(path))
            declared = int(max(cap.get(cv2.CAP_PROP_FRAME_COUNT), 0)) if cap.isOpened() else 0
            try:
                while True:
                    ok, img = cap.read()
                    size = os.fstat(log.fileno()).st_size
                    if not ok or img is None:
                        break
                    if size > seen:
                        log.seek(seen)
                        text = log.read(size - seen).decode("utf-8", "replace").strip().splitlines()
                        damaged[decoded] = text[0][:200] if text else "decoder error"
                        seen = size
                    decoded += 1
            finally:
                cap.release()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    scan = VideoScan(declared, decoded, damaged)
    _VIDEO_SCANS[key] = scan
    return scan


def _escapes(pattern: str) -> bool:
    """Does a path pattern (relative to the capture) point outside the capture directory?"""
    probe = str(pattern).replace("{frame}", "f").replace("{camera}", "c")
    if os.path.isabs(probe) or probe.startswith("~"):
        return True
    norm = os.path.normpath(probe)
    return norm == ".." or norm.startswith(".." + os.sep) or norm.startswith("../")


def _bad_name(name: str) -> bool:
    """A frame id or camera name that would change a path's directory when substituted."""
    return (not name or name in (".", "..") or any(c in name for c in "/\\\0"))


@dataclass
class Problem:
    """One finding about a capture, located as precisely as possible."""

    severity: str  # "error" or "warning"
    code: str
    message: str
    file: Optional[str] = None
    frame: Optional[str] = None
    camera: Optional[str] = None

    def __str__(self) -> str:
        where = [x for x in (self.file, f"frame {self.frame}" if self.frame is not None else None,
                             f"camera {self.camera}" if self.camera is not None else None) if x]
        return f"{self.severity}: [{self.code}] {', '.join(where)}{': ' if where else ''}{self.message}"

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Camera:
    """One camera: image size, optional intrinsics/distortion, optional world→camera pose."""

    name: str
    width: int
    height: int
    K: Optional[np.ndarray] = None
    dist: Optional[np.ndarray] = None
    R: Optional[np.ndarray] = None
    t: Optional[np.ndarray] = None
    images: Optional[str] = None  # pattern with "{frame}", relative to the capture root
    video: Optional[str] = None  # or one video file, relative to the capture root
    frame_offset: int = 0  # a video camera: its frame for capture frame k is video_frames[k] + frame_offset

    @property
    def has_intrinsics(self) -> bool:
        return self.K is not None

    @property
    def has_extrinsics(self) -> bool:
        return self.R is not None and self.t is not None

    def project(self, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (..., 3) → pixels (..., 2) and depth (...,), with distortion."""
        if not (self.has_intrinsics and self.has_extrinsics):
            raise CaptureError(f"camera {self.name}: projection needs intrinsics K and extrinsics R, t")
        pts = np.asarray(points_world, dtype=np.float64)
        cam = pts.reshape(-1, 3) @ self.R.T + self.t
        depth = cam[:, 2]
        if self.dist is not None and np.any(self.dist != 0):
            uv, _ = cv2.projectPoints(cam, np.zeros(3), np.zeros(3), self.K, self.dist)
            uv = uv.reshape(-1, 2)
        else:
            z = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
            uv = cam[:, :2] / z[:, None] @ self.K[:2, :2].T + self.K[:2, 2]
        return uv.reshape(pts.shape[:-1] + (2,)), depth.reshape(pts.shape[:-1])

    def to_json(self) -> dict:
        out: dict = {"name": self.name, "image_size": [int(self.width), int(self.height)]}
        for key in ("K", "dist", "R", "t"):
            value = getattr(self, key)
            if value is not None:
                out[key] = np.asarray(value, dtype=float).tolist()
        if self.images is not None:
            out["images"] = self.images
        if self.video is not None:
            out["video"] = self.video
        if self.frame_offset:
            out["frame_offset"] = int(self.frame_offset)
        return out


@dataclass
class GroundTruth:
    """Per-frame ground truth; arrays are indexed [frame, (view,) ...]."""

    joints_world: np.ndarray  # (F, 21, 3) metres, OpenPose order
    hand_pose: Optional[np.ndarray] = None  # (F, 48) axis-angle: global orient + 15 joints
    betas: Optional[np.ndarray] = None  # (10,) or (F, 10)
    transl: Optional[np.ndarray] = None  # (F, 3)
    joints_2d: Optional[np.ndarray] = None  # (F, V, 21, 2) pixels
    visibility: Optional[np.ndarray] = None  # (F, V, 21) bool
    hand_model: str = ""  # which hand model the parameters belong to (name and sha256)

    ARRAYS = ("joints_world", "hand_pose", "betas", "transl", "joints_2d", "visibility")

    def save(self, path: Path) -> None:
        arrays = {k: getattr(self, k) for k in self.ARRAYS if getattr(self, k) is not None}
        arrays["hand_model"] = np.array(self.hand_model)
        atomic_write_bytes(path, lambda fh: np.savez_compressed(fh, **arrays))

    @classmethod
    def load(cls, path: Path) -> "GroundTruth":
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except FileNotFoundError:
            raise CaptureError(f"{path}: ground-truth file not found") from None
        except Exception as exc:
            raise CaptureError(f"{path}: unreadable ground truth ({type(exc).__name__}: {exc})") from None
        if "joints_world" not in arrays:
            raise CaptureError(f"{path}: ground truth has no 'joints_world' array")
        model = str(arrays.pop("hand_model", ""))
        return cls(**{k: arrays.get(k) for k in cls.ARRAYS}, hand_model=model)


@dataclass
class Capture:
    """A multi-camera capture, whatever its on-disk layout (format v1, HanCo, ...)."""

    root: Path
    cameras: list[Camera]
    frame_ids: list[str]
    handedness: str = "right"
    ground_truth_file: Optional[str] = None
    masks: Optional[str] = None  # pattern with {camera} and {frame}
    metadata: dict = field(default_factory=dict)
    layout: str = CAPTURE_FORMAT
    ground_truth_loader: Optional[Callable[[], Optional[GroundTruth]]] = None
    video_frames: Optional[list] = None  # video frame index of each listed frame (default 0, 1, 2, ...)
    _gt_cache: Optional[GroundTruth] = field(default=None, repr=False)
    _files_cache: Optional[list] = field(default=None, repr=False, compare=False)  # pipeline.prepare's file list

    @property
    def name(self) -> str:
        return self.metadata.get("name") or self.root.name

    @property
    def num_views(self) -> int:
        return len(self.cameras)

    @property
    def num_frames(self) -> int:
        return len(self.frame_ids)

    def camera_index(self, name: str) -> int:
        for i, cam in enumerate(self.cameras):
            if cam.name == name:
                return i
        raise CaptureError(f"{self.root}: no camera named {name!r}")

    def video_index(self, cam: int, frame: int) -> int:
        """The frame of camera ``cam``'s video that holds capture frame ``frame`` (``video_frames`` and the
        camera's ``frame_offset``: unsynchronised videos, a subsampled or cropped range)."""
        base = self.video_frames[frame] if self.video_frames is not None else frame
        return int(base) + int(self.cameras[cam].frame_offset)

    def image_path(self, cam: int, frame: int) -> Optional[Path]:
        camera = self.cameras[cam]
        if camera.images is None:
            return None
        return self.root / camera.images.format(frame=self.frame_ids[frame], camera=camera.name)

    def mask_path(self, cam: int, frame: int) -> Optional[Path]:
        if self.masks is None:
            return None
        return self.root / self.masks.format(frame=self.frame_ids[frame], camera=self.cameras[cam].name)

    def read_image(self, cam: int, frame: int, cached: bool = False) -> np.ndarray:
        """The BGR image of camera ``cam`` at frame index ``frame``. ``cached``: through
        :data:`IMAGE_CACHE` (image files only; the array is then read-only)."""
        camera = self.cameras[cam]
        fid = self.frame_ids[frame]
        if camera.video is not None:
            video = self.root / camera.video
            scan = scan_video(video)
            index = self.video_index(cam, frame)
            where = f"{video}: frame {fid} (video frame {index}), camera {camera.name}"
            if not 0 <= index < scan.decoded:
                raise CaptureError(f"{where}: unreadable (the video has {scan.decoded} decodable frames"
                                   f"{f' of {scan.declared} declared: truncated or corrupt' if scan.declared > scan.decoded else ''})")
            if index in scan.damaged:
                raise CaptureError(f"{where}: unreadable (damaged video frame: {scan.damaged[index]})")
            cap = cv2.VideoCapture(str(video))
            try:
                cap.set(cv2.CAP_PROP_POS_FRAMES, index)
                ok, img = cap.read()
            finally:
                cap.release()
            if not ok or img is None:
                raise CaptureError(f"{where}: unreadable (cannot be decoded)")
            return img
        path = self.image_path(cam, frame)
        try:
            return decode_image_cached(path) if cached else decode_image(path)
        except CaptureError as exc:
            raise CaptureError(f"{path}: frame {fid}, camera {camera.name}: {exc.reason}") from None

    @property
    def ground_truth(self) -> Optional[GroundTruth]:
        if self._gt_cache is None:
            if self.ground_truth_loader is not None:
                self._gt_cache = self.ground_truth_loader()
            elif self.ground_truth_file is not None:
                self._gt_cache = GroundTruth.load(self.root / self.ground_truth_file)
        return self._gt_cache

    def to_json(self) -> dict:
        out = {
            "format": CAPTURE_FORMAT,
            "version": CAPTURE_VERSION,
            "handedness": self.handedness,
            "frames": list(self.frame_ids),
            "cameras": [c.to_json() for c in self.cameras],
        }
        if self.ground_truth_file:
            out["ground_truth"] = self.ground_truth_file
        if self.masks:
            out["masks"] = self.masks
        if self.video_frames is not None:
            out["video_frames"] = [int(v) for v in self.video_frames]
        if self.metadata:
            out["metadata"] = self.metadata
        return out


def write_capture_json(capture: Capture) -> Path:
    path = capture.root / CAPTURE_FILE
    text = json.dumps(capture.to_json(), indent=1)
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))
    return path


def _matrix(value, shape, what: str, where: str, problems: list[Problem], camera: str) -> Optional[np.ndarray]:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        problems.append(Problem("error", f"{what}_invalid", f"{what} is not numeric", where, camera=camera))
        return None
    if arr.shape != shape:
        problems.append(Problem("error", f"{what}_invalid", f"{what} has shape {arr.shape}, expected {shape}",
                                where, camera=camera))
        return None
    return arr


def parse_capture(path: str | os.PathLike, allow_external_paths: bool = False
                  ) -> tuple[Optional[Capture], list[Problem]]:
    """Read ``capture.json`` leniently: (capture or None, every problem found in it).

    Paths in ``capture.json`` must stay inside the capture directory (no absolute path, no ``..``)
    unless ``allow_external_paths``; frame ids and camera names never contain path separators.
    """
    from model.geometry import is_rotation

    root = Path(path)
    cfile = root / CAPTURE_FILE if root.is_dir() or not root.suffix else root
    if cfile.name == CAPTURE_FILE and cfile.parent != root:
        root = cfile.parent
    where = str(cfile)
    problems: list[Problem] = []
    if not root.exists():
        return None, [Problem("error", "capture_missing", "no such capture directory", str(root))]
    if not cfile.is_file():
        return None, [Problem("error", "capture_json_missing", f"{CAPTURE_FILE} not found", where)]
    try:
        doc = json.loads(cfile.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [Problem("error", "capture_json_invalid", f"not valid JSON: {exc}", where)]
    if not isinstance(doc, dict):
        return None, [Problem("error", "capture_json_invalid", "top level must be an object", where)]
    if doc.get("format") != CAPTURE_FORMAT:
        problems.append(Problem("error", "format_unknown",
                                f"format is {doc.get('format')!r}, expected {CAPTURE_FORMAT!r}", where))
    if doc.get("version") != CAPTURE_VERSION:
        problems.append(Problem("error", "version_unknown",
                                f"format version {doc.get('version')!r} is not supported (this reader "
                                f"reads version {CAPTURE_VERSION})", where))
        return None, problems
    handedness = doc.get("handedness", "right")
    if handedness not in HANDEDNESS:
        problems.append(Problem("error", "handedness_invalid",
                                f"handedness {handedness!r} must be 'right' or 'left'", where))
    frames = doc.get("frames")
    if not isinstance(frames, list) or not frames:
        problems.append(Problem("error", "frames_invalid", "'frames' must be a non-empty list of frame ids", where))
        frames = []
    frames = [str(f) for f in frames]
    seen: set[str] = set()
    for f in frames:
        if f in seen:
            problems.append(Problem("error", "frame_duplicate", "frame id listed twice", where, frame=f))
        if _bad_name(f):
            problems.append(Problem("error", "frame_id_invalid", "a frame id must not be empty, '.', '..' or "
                                    "contain a path separator", where, frame=f))
        seen.add(f)

    def outside(pattern, what: str, camera: Optional[str] = None) -> None:
        if pattern is not None and not allow_external_paths and _escapes(str(pattern)):
            problems.append(Problem("error", "path_outside_capture",
                                    f"{what} {pattern!r} points outside the capture directory (give paths "
                                    "relative to it, or pass --allow-external-paths)", where, camera=camera))

    cameras: list[Camera] = []
    names: set[str] = set()
    raw_cams = doc.get("cameras")
    if not isinstance(raw_cams, list) or not raw_cams:
        problems.append(Problem("error", "cameras_invalid", "'cameras' must be a non-empty list", where))
        raw_cams = []
    for i, rc in enumerate(raw_cams):
        if not isinstance(rc, dict):
            problems.append(Problem("error", "camera_invalid", f"camera entry {i} is not an object", where))
            continue
        name = str(rc.get("name", f"#{i}"))
        if "name" not in rc:
            problems.append(Problem("error", "camera_invalid", f"camera entry {i} has no name", where, camera=name))
        if "name" in rc and _bad_name(name):
            problems.append(Problem("error", "camera_name_invalid", "a camera name must not be empty, '.', '..' "
                                    "or contain a path separator", where, camera=name))
        if name in names:
            problems.append(Problem("error", "camera_name_duplicate",
                                    f"camera name {name!r} is used by more than one camera", where, camera=name))
        names.add(name)
        size = rc.get("image_size")
        if (not isinstance(size, list) or len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size)):
            problems.append(Problem("error", "image_size_invalid",
                                    f"image_size {size!r} must be [width, height] in pixels", where, camera=name))
            size = [0, 0]
        K = dist = R = t = None
        if "K" in rc:
            K = _matrix(rc["K"], (3, 3), "K", where, problems, name)
            if K is not None:
                if not np.all(np.isfinite(K)):
                    problems.append(Problem("error", "K_nonfinite", "intrinsics K hold NaN or infinity",
                                            where, camera=name))
                elif abs(np.linalg.det(K)) < 1e-9 or K[0, 0] <= 0 or K[1, 1] <= 0:
                    problems.append(Problem("error", "K_singular",
                                            "intrinsics K are singular (focal lengths must be positive)",
                                            where, camera=name))
                elif size[0] and not (0 <= K[0, 2] <= size[0] and 0 <= K[1, 2] <= size[1]):
                    problems.append(Problem("warning", "principal_point_outside",
                                            f"principal point ({K[0, 2]:.1f}, {K[1, 2]:.1f}) lies outside the image",
                                            where, camera=name))
        if "dist" in rc:
            try:
                dist = np.asarray(rc["dist"], dtype=np.float64).ravel()
            except (TypeError, ValueError):
                dist = None
            if dist is None or dist.size not in (4, 5, 8, 12, 14) or not np.all(np.isfinite(dist)):
                problems.append(Problem("error", "dist_invalid",
                                        "dist must be 4, 5, 8, 12 or 14 finite OpenCV coefficients",
                                        where, camera=name))
                dist = None
        if ("R" in rc) != ("t" in rc):
            problems.append(Problem("error", "extrinsics_incomplete", "R and t must be given together",
                                    where, camera=name))
        if "R" in rc:
            R = _matrix(rc["R"], (3, 3), "R", where, problems, name)
            if R is not None and not is_rotation(R):
                problems.append(Problem("error", "R_not_rotation",
                                        "R is not a rotation (orthonormal with determinant +1)", where, camera=name))
                R = None
        if "t" in rc:
            t = _matrix(rc["t"], (3,), "t", where, problems, name)
            if t is not None and not np.all(np.isfinite(t)):
                problems.append(Problem("error", "t_nonfinite", "translation t holds NaN or infinity",
                                        where, camera=name))
                t = None
        images, video = rc.get("images"), rc.get("video")
        if (images is None) == (video is None):
            problems.append(Problem("error", "camera_source_invalid",
                                    "give exactly one of 'images' (a pattern with {frame}) or 'video'",
                                    where, camera=name))
        elif images is not None and "{frame}" not in str(images):
            problems.append(Problem("error", "camera_source_invalid",
                                    f"images pattern {images!r} has no {{frame}} field", where, camera=name))
        outside(images, "images pattern", name)
        outside(video, "video", name)
        offset = rc.get("frame_offset", 0)
        if not isinstance(offset, int) or isinstance(offset, bool) or (offset and video is None):
            problems.append(Problem("error", "frame_offset_invalid", f"frame_offset {offset!r} must be an integer "
                                    "number of frames, and only a video camera has one", where, camera=name))
            offset = 0
        cameras.append(Camera(name=name, width=size[0], height=size[1], K=K, dist=dist, R=R, t=t,
                              images=images, video=video, frame_offset=offset))

    gt = doc.get("ground_truth")
    outside(gt, "ground_truth")
    outside(doc.get("masks"), "masks pattern")
    video_frames = doc.get("video_frames")
    if video_frames is not None:
        if (not isinstance(video_frames, list) or len(video_frames) != len(frames)
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in video_frames)
                or any(b <= a for a, b in zip(video_frames, video_frames[1:]))):
            problems.append(Problem("error", "video_frames_invalid", "video_frames must list, for every frame id, its "
                                    "video frame index (integers >= 0, increasing)", where))
            video_frames = None
    capture = Capture(root=root, cameras=cameras, frame_ids=frames,
                      handedness=handedness if handedness in HANDEDNESS else "right",
                      ground_truth_file=gt, masks=doc.get("masks"), metadata=doc.get("metadata") or {},
                      video_frames=video_frames)
    return capture, problems


def load_capture(path: str | os.PathLike, allow_external_paths: bool = False) -> Capture:
    """Read a capture, raising :class:`CaptureError` with every error in ``capture.json``."""
    capture, problems = parse_capture(path, allow_external_paths)
    errors = [p for p in problems if p.severity == "error"]
    if errors or capture is None:
        raise CaptureError("invalid capture:\n  " + "\n  ".join(str(p) for p in errors))
    return capture
