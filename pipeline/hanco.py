"""Reader for HanCo, the multi-view hand dataset that the HaMuCo paper trains and tests on.

Layout under the dataset root (``<seq>`` is ``0000``, ``0001``, ...; ``<frame>`` is ``00000000``, ...)::

    rgb/<seq>/cam<k>/<frame>.jpg                 224×224 images, usually cam0..cam7
    calib/<seq>/<frame>.json                     {"K": [V × 3×3], "M": [V × 4×4 world→camera, metres]}
    xyz/<seq>/<frame>.json                       optional: 21×3 world joints, metres, OpenPose order
    shape/<seq>/<frame>.json                     optional: MANO {"poses": 1×48, "shapes": 1×10, "global_t": 1×1×3}
    rgb_2D_keypoints/<seq>/cam<k>/<frame>.json   optional: published 2D pseudo labels

Sequences below 1200 are the training split, the others the test split. One sequence reads as
one :class:`~pipeline.capture.Capture` with ``layout="hanco"``; nothing is converted or copied.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from pipeline.capture import Camera, Capture, CaptureError, GroundTruth

LAYOUT = "hanco"
TEST_SPLIT_START = 1200  # sequences with a smaller number are the training split
DEFAULT_IMAGE_SIZE = (224, 224)  # (width, height) when no image of a camera can be read
NUM_JOINTS = 21
CAMERA_DIR = re.compile(r"cam(\d+)")
_KEYPOINT_KEYS = ("keypoints", "keypoints_2d", "kp2d", "uv", "coords")
_CONFIDENCE_KEYS = ("confidence", "confidences", "conf", "scores", "score")


def _sort_key(name: str) -> tuple:
    return (0, int(name), name) if name.isdigit() else (1, 0, name)


def _seq_id(seq: str | int) -> str:
    return f"{seq:04d}" if isinstance(seq, int) else str(seq)


def _rgb_dir(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise CaptureError(f"{root}: HanCo root directory not found")
    rgb = root / "rgb"
    if not rgb.is_dir():
        raise CaptureError(f"{rgb}: not found; a HanCo root holds rgb/<seq>/cam<k>/<frame>.jpg")
    return rgb


def list_hanco_sequences(root: str | os.PathLike) -> list[str]:
    """Sequence ids (directory names under ``rgb/``), sorted."""
    rgb = _rgb_dir(root)
    return sorted((e.name for e in os.scandir(rgb) if e.is_dir()), key=_sort_key)


def _load_json(path: Path, frame: Optional[str] = None, camera: Optional[str] = None, what: str = "file"):
    """Parsed JSON of ``path``; CaptureError naming file, frame and camera when missing or invalid."""
    where = "".join([f": frame {frame}" if frame is not None else "",
                     f", camera {camera}" if camera is not None else ""])
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CaptureError(f"{path}{where}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaptureError(f"{path}{where}: {what} is not valid JSON ({exc})") from None


def _array(value, shape: tuple, what: str, path: Path, frame: str) -> np.ndarray:
    """``value`` as a finite float array of ``shape`` (reshaped when the size matches)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CaptureError(f"{path}: frame {frame}: {what} is not numeric") from None
    if arr.size != int(np.prod(shape)):
        raise CaptureError(f"{path}: frame {frame}: {what} has shape {arr.shape}, expected {shape}")
    arr = arr.reshape(shape)
    if not np.all(np.isfinite(arr)):
        raise CaptureError(f"{path}: frame {frame}: {what} holds NaN or infinity")
    return arr


def _read_calib(path: Path, frame: str, cam_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsics (V, 3, 3) and world→camera matrices (V, 4, 4) of the cameras ``cam_ids``."""
    doc = _load_json(path, frame, what="calibration")
    if not isinstance(doc, dict) or "K" not in doc or "M" not in doc:
        raise CaptureError(f"{path}: frame {frame}: calibration must be an object with 'K' and 'M' lists")
    mats = {}
    for key, shape in (("K", (3, 3)), ("M", (4, 4))):
        value = doc[key]
        if not isinstance(value, list):
            raise CaptureError(f"{path}: frame {frame}: '{key}' must be a list of {shape[0]}×{shape[1]} matrices")
        missing = [k for k in cam_ids if k >= len(value)]
        if missing:
            raise CaptureError(f"{path}: frame {frame}, camera cam{missing[0]}: '{key}' lists only "
                               f"{len(value)} cameras")
        mats[key] = np.stack([_array(value[k], shape, f"{key} of camera cam{k}", path, frame) for k in cam_ids])
    return mats["K"], mats["M"]


def _image_size(folder: Path, frames: list[str]) -> tuple[int, int]:
    """(width, height) of the first readable image of one camera."""
    for fid in frames:
        img = cv2.imread(str(folder / f"{fid}.jpg"), cv2.IMREAD_UNCHANGED)
        if img is not None:
            return int(img.shape[1]), int(img.shape[0])
    return DEFAULT_IMAGE_SIZE


def _project(K: np.ndarray, R: np.ndarray, t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Pinhole projection of points (F, N, 3) with per-frame cameras (F, V, ...) → pixels (F, V, N, 2)."""
    cam = np.einsum("fvij,fnj->fvni", R, points) + t[:, :, None, :]
    z = cam[..., 2:3]
    z = np.where(np.abs(z) < 1e-9, 1e-9, z)
    return np.einsum("fvij,fvnj->fvni", K[:, :, :2, :2], cam[..., :2] / z) + K[:, :, None, :2, 2]


def _ground_truth_loader(root: Path, seq: str, frames: list[str], K: np.ndarray, M: np.ndarray):
    """A zero-argument loader of the sequence's ground truth; K (F, V, 3, 3) and M (F, V, 4, 4) per frame."""

    def load() -> Optional[GroundTruth]:
        xyz_dir = root / "xyz" / seq
        if not xyz_dir.is_dir():
            return None
        F = len(frames)
        joints = np.full((F, NUM_JOINTS, 3), np.nan)
        for i, fid in enumerate(frames):
            path = xyz_dir / f"{fid}.json"
            if path.is_file():
                joints[i] = _array(_load_json(path, fid, what="3D joints"), (NUM_JOINTS, 3), "joints", path, fid)
        pose = betas = transl = None
        shape_dir = root / "shape" / seq
        if shape_dir.is_dir():
            pose, betas, transl = np.full((F, 48), np.nan), np.full((F, 10), np.nan), np.full((F, 3), np.nan)
            found = False
            for i, fid in enumerate(frames):
                path = shape_dir / f"{fid}.json"
                if not path.is_file():
                    continue
                doc = _load_json(path, fid, what="MANO parameters")
                if not isinstance(doc, dict) or not {"poses", "shapes"} <= doc.keys():
                    raise CaptureError(f"{path}: frame {fid}: MANO parameters need 'poses' and 'shapes'")
                pose[i] = _array(doc["poses"], (48,), "poses", path, fid)
                betas[i] = _array(doc["shapes"], (10,), "shapes", path, fid)
                if "global_t" in doc:
                    transl[i] = _array(doc["global_t"], (3,), "global_t", path, fid)
                found = True
            if not found:
                pose = betas = transl = None
            elif np.all(np.isnan(transl)):
                transl = None
        joints_2d = _project(K, M[..., :3, :3], M[..., :3, 3], joints)
        return GroundTruth(joints_world=joints, hand_pose=pose, betas=betas, transl=transl,
                           joints_2d=joints_2d, hand_model="MANO" if pose is not None else "")

    return load


def read_hanco_sequence(root: str | os.PathLike, seq: str | int) -> Capture:
    """One HanCo sequence as a :class:`Capture` (cameras ``cam<k>``, calibration of its first frame).

    Every frame's calibration is read; when it changes within the sequence,
    ``metadata["calibration_varies"]`` is True and the ground-truth 2D joints use each frame's own.
    """
    root = Path(root)
    seq = _seq_id(seq)
    seq_dir = _rgb_dir(root) / seq
    if not seq_dir.is_dir():
        raise CaptureError(f"{seq_dir}: HanCo sequence {seq} not found")
    cam_dirs = sorted(((int(m.group(1)), Path(e.path)) for e in os.scandir(seq_dir)
                       if e.is_dir() and (m := CAMERA_DIR.fullmatch(e.name))))
    if not cam_dirs:
        raise CaptureError(f"{seq_dir}: no camera directories cam<k>")
    cam_ids = [k for k, _ in cam_dirs]
    stems = {Path(e.name).stem for _, d in cam_dirs for e in os.scandir(d)
             if e.is_file() and e.name.lower().endswith(".jpg")}
    frames = sorted(stems, key=_sort_key)
    if not frames:
        raise CaptureError(f"{seq_dir}: no .jpg images in any camera directory")

    calib_dir = root / "calib" / seq
    calibs = [_read_calib(calib_dir / f"{fid}.json", fid, cam_ids) for fid in frames]
    K = np.stack([k for k, _ in calibs])  # (F, V, 3, 3)
    M = np.stack([m for _, m in calibs])  # (F, V, 4, 4)
    varies = not (np.allclose(K, K[:1], rtol=0, atol=1e-9) and np.allclose(M, M[:1], rtol=0, atol=1e-9))

    cameras = []
    for v, (k, folder) in enumerate(cam_dirs):
        width, height = _image_size(folder, frames)
        cameras.append(Camera(name=f"cam{k}", width=width, height=height, K=K[0, v].copy(),
                              R=M[0, v, :3, :3].copy(), t=M[0, v, :3, 3].copy(),
                              images=f"rgb/{seq}/cam{k}/{{frame}}.jpg"))
    metadata = {"name": f"hanco-{seq}", "dataset": "HanCo", "sequence": seq}
    if seq.isdigit():
        metadata["split"] = "train" if int(seq) < TEST_SPLIT_START else "test"
    if varies:
        metadata["calibration_varies"] = True
    return Capture(root=root, cameras=cameras, frame_ids=frames, handedness="right", metadata=metadata,
                   layout=LAYOUT, ground_truth_loader=_ground_truth_loader(root, seq, frames, K, M))


def read_hanco_keypoints(root: str | os.PathLike, seq: str | int, camera_name: str,
                         frame: str) -> tuple[np.ndarray, np.ndarray]:
    """Published 2D pseudo labels of one view: keypoints (21, 2) in pixels and confidence (21,).

    The file holds ``[keypoints, confidence]``, a 21×3 list of (x, y, confidence), or an object
    with a keypoint entry (``keypoints``, ``kp2d``, ``uv``, ...) and a confidence entry.
    """
    seq = _seq_id(seq)
    path = Path(root) / "rgb_2D_keypoints" / seq / camera_name / f"{frame}.json"
    doc = _load_json(path, frame, camera_name, what="2D keypoints")
    kp = conf = None
    if isinstance(doc, dict):
        kp = next((doc[k] for k in _KEYPOINT_KEYS if k in doc), None)
        conf = next((doc[k] for k in _CONFIDENCE_KEYS if k in doc), None)
    elif isinstance(doc, list) and len(doc) == 2:
        kp, conf = doc
    elif isinstance(doc, list) and len(doc) == NUM_JOINTS:
        try:
            table = np.asarray(doc, dtype=np.float64)
        except (TypeError, ValueError):
            table = None
        if table is not None and table.shape == (NUM_JOINTS, 3):
            kp, conf = table[:, :2], table[:, 2]
    if kp is None or conf is None:
        raise CaptureError(f"{path}: frame {frame}, camera {camera_name}: expected [keypoints 21×2, "
                           f"confidence 21] or an object with keypoints and confidence")
    try:
        kp = np.asarray(kp, dtype=np.float64)
        conf = np.asarray(conf, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise CaptureError(f"{path}: frame {frame}, camera {camera_name}: keypoints are not numeric") from None
    if kp.shape != (NUM_JOINTS, 2) or conf.shape != (NUM_JOINTS,):
        raise CaptureError(f"{path}: frame {frame}, camera {camera_name}: keypoints have shape {kp.shape} and "
                           f"confidence {conf.shape}, expected ({NUM_JOINTS}, 2) and ({NUM_JOINTS},)")
    return kp, conf
