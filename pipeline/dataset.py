"""The torch Dataset over HDF5 shards: one item = one frame's views, ready for the model.

Reading goes through :class:`pipeline.shards.ShardReader`, which opens its HDF5 file lazily in
each process, so every DataLoader worker has its own file handles.

Per item (V views, S×S crops)::

    images            float32 (V, 3, S, S)  RGB, ImageNet mean/std normalised
    keypoints         float32 (V, 21, 2)    pseudo labels, crop pixels
    confidence        float32 (V, 21)       raw or refined confidence (``confidence=``)
    view_mask         bool    (V,)          valid views; invalid ones are masked, never used
    crop_K            float32 (V, 3, 3)     intrinsics seen from the crop (NaN unknown)
    extrinsics        float32 (V, 3, 4)     world → camera
    extrinsics_known  bool    (V,)
    view_order        int64   (V,)          which stored view each position holds
    flipped           bool    (V,)          the crop is mirrored (a left hand shown as a right one)

Ground truth reaches an item only when asked for: ``ground_truth=True`` (evaluation) adds
``gt_joints_world`` (21, 3) and ``gt_joints_2d`` (V, 21, 2) (NaN when unknown);
``weak_camera="cam03"`` (the weakly supervised variant, seed C.4) adds ``weak_joints_2d``
(V, 21, 2): that one camera's 2D ground truth at whichever position the shuffle put it, NaN at
every other position. A training item has neither.

Documented skips: a sample whose views are all invalid is left out of the dataset (counted in
``skipped_samples``); a non-finite pseudo label gets confidence 0 (counted in ``nan_labels``).
Augmentation (training): a random similarity jitter of each crop (scale, shift, as the paper's
crop jitter), optional blur and occlusion patches, and the camera order shuffled per sample;
keypoints, intrinsics and ground truth follow the same transform. Deterministic for
(seed, epoch, index).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from model.errors import HamucoError
from model.inference import IMAGENET_MEAN, IMAGENET_STD

from .shards import ShardReader, verify_shard

# the label versions a shard can hold: the labeler's own, and the multi-view bootstrapped one (pipeline/bootstrap.py)
LABEL_VERSIONS = ("raw", "bootstrapped")


@dataclass(frozen=True)
class Augmentation:
    """Per-view training augmentation, drawn from the dataset's seed, epoch and sample.

    Every geometric change (zoom, shift, in-plane rotation) is applied alike to the crop, its 2D
    labels and 2D ground truth, its intrinsics and, for a rotation, its camera: rotating a crop by
    ``a`` is the camera turning about its optical axis, so the view's extrinsics become
    ``Rz·[R | t]`` and ``crop_K`` stays an intrinsics matrix (``J·K = K'·Rz``) — the consistency
    loss with extrinsics keeps relating the views correctly. Colour (brightness, contrast,
    saturation), blur and occluders change pixels only. Options at 0 draw no random numbers: a
    configuration without them draws what it drew before they existed.
    """

    scale: tuple[float, float] = (0.9, 1.1)  # crop zoom
    shift: float = 0.08  # fraction of the crop size
    rotation_deg: float = 0.0  # in-plane rotation, uniform in ±rotation_deg
    blur_prob: float = 0.0
    occlusion_prob: float = 0.0
    colour: float = 0.0  # brightness/contrast/saturation jitter: factors in 1 ± colour, shift ± 64·colour
    shuffle_views: bool = True


def load_index(path: str | Path) -> dict:
    path = Path(path)
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise HamucoError(f"{path}: dataset index not found (make one with 'hamuco prepare')") from None
    except json.JSONDecodeError as exc:
        raise HamucoError(f"{path}: not a dataset index ({exc})") from None
    if index.get("format") != "hamuco-dataset-index":
        raise HamucoError(f"{path}: not a dataset index (format {index.get('format')!r})")
    return index


def check_dataset(path: str | Path, split: str = "train", weak_camera: Optional[str] = None,
                  labels: str = "raw") -> None:
    """Open every shard of a split (schema, structure) and count its usable samples (and, for weak
    supervision, find the camera and its 2D ground truth), so that a command fails with a clear
    message before any task starts."""
    index = load_index(path)
    splits = index.get("split") or {}
    if split not in splits:
        raise HamucoError(f"{path}: no split {split!r} in the dataset index (have {', '.join(s for s in splits if s != 'by' and isinstance(splits[s], list))})")
    shards = splits[split]
    if not shards:
        raise HamucoError(f"{path}: the {split} split has no shard (split by {splits.get('by')}; "
                          f"prepare more frames or captures, or change the fractions)")
    for shard in shards:
        if not Path(shard).is_file():
            raise HamucoError(f"{shard}: shard listed in {path} ({split} split) not found")
        verify_shard(shard)
    data = ShardDataset(path, split=split, weak_camera=weak_camera, labels=labels)
    if len(data) == 0:
        raise HamucoError(f"{path}: the {split} split has no sample with a valid view "
                          f"({data.skipped_samples} samples, every view invalid: see the quarantine report)")


class ShardDataset(Dataset):
    """Samples of the shards of one split of a dataset index (or of explicit shard paths)."""

    def __init__(self, source: str | Path | Sequence[str | Path], split: str = "train",
                 confidence: str = "refined", augmentation: Optional[Augmentation] = None, seed: int = 0,
                 ground_truth: bool = False, weak_camera: Optional[str] = None, labels: str = "raw"):
        if confidence not in ("raw", "refined"):
            raise HamucoError(f"confidence must be 'raw' or 'refined', not {confidence!r}")
        if labels not in LABEL_VERSIONS:
            raise HamucoError(f"labels must be one of {', '.join(LABEL_VERSIONS)}, not {labels!r}")
        if isinstance(source, (str, Path)):
            index = load_index(source)
            if split not in index["split"]:
                raise HamucoError(f"{source}: no split {split!r} (have train, val, test)")
            paths = index["split"][split]
        else:
            paths = list(source)
        self.readers = [ShardReader(p) for p in paths]
        if labels == "bootstrapped":
            missing = [str(r.path) for r in self.readers if not r.has_bootstrapped_labels]
            if missing:
                raise HamucoError(f"{missing[0]}: no bootstrapped labels in this shard ({len(missing)} of "
                                  f"{len(self.readers)} shards lack them); prepare the dataset with --bootstrap")
        self.labels = labels
        self._valid_field = "bootstrapped_view_valid" if labels == "bootstrapped" else "view_valid"
        self.confidence = confidence
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0
        self.items: list[tuple[int, int]] = []
        self.skipped_samples = 0
        for ri, reader in enumerate(self.readers):
            valid = reader.field(self._valid_field)
            for si in range(len(reader)):
                if valid[si].any():
                    self.items.append((ri, si))
                else:
                    self.skipped_samples += 1
        self.ground_truth = bool(ground_truth)
        self.weak_camera = weak_camera
        if weak_camera is not None:
            for reader in self.readers:
                if weak_camera not in reader.camera_names:
                    raise HamucoError(f"{reader.path}: no camera {weak_camera!r} for weak supervision (cameras: "
                                      f"{', '.join(reader.camera_names)})")
                if "gt_joints_2d" not in reader.ground_truth_fields:
                    raise HamucoError(f"{reader.path}: weak supervision by camera {weak_camera!r} needs 2D ground "
                                      "truth, and this shard has none")
        views = {r.num_views for r in self.readers}
        self.num_views = views.pop() if len(views) == 1 else None
        self.nan_labels = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (the trainer calls this every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        ri, si = self.items[i]
        s = self.readers[ri][si]
        V, S = s.crops.shape[0], s.crops.shape[1]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if self.labels == "bootstrapped":  # they carry their own multi-view confidence (``confidence`` n/a)
            conf, kp = s.bootstrapped_confidence.astype(np.float32), s.bootstrapped_keypoints.astype(np.float32)
            view_valid = s.bootstrapped_view_valid
        else:
            conf = (s.refined_confidence if self.confidence == "refined" else s.confidence).astype(np.float32)
            kp = s.keypoints.astype(np.float32)
            view_valid = s.view_valid
        bad = ~np.all(np.isfinite(kp), axis=-1) | ~np.isfinite(conf)
        if bad.any():
            self.nan_labels += int(bad.sum())
            conf = np.where(bad, 0.0, conf).astype(np.float32)
            kp = np.where(bad[..., None], 0.0, kp).astype(np.float32)
        crops = s.crops
        crop_K = s.crop_K.astype(np.float64)
        gt2d = (np.array(s.gt_joints_2d, np.float32) if s.gt_joints_2d is not None
                else np.full((V, 21, 2), np.nan, np.float32))
        aug = self.augmentation
        extrinsics = s.extrinsics.astype(np.float64)
        images = np.empty((V, S, S, 3), np.float32)
        order = np.arange(V)
        if aug is not None:
            if aug.shuffle_views:
                order = rng.permutation(V)
            for v in range(V):
                J = _jitter(rng, S, aug)
                img = cv2.warpAffine(crops[v], J, (S, S), flags=cv2.INTER_LINEAR, borderValue=0)
                if aug.blur_prob and rng.random() < aug.blur_prob:
                    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.0))
                if aug.occlusion_prob and rng.random() < aug.occlusion_prob:
                    w, h = (rng.uniform(0.1, 0.3, 2) * S).astype(int)
                    x, y = rng.integers(0, S - w), rng.integers(0, S - h)
                    img[y:y + h, x:x + w] = rng.integers(0, 255, 3)
                if aug.colour:
                    img = _colour_jitter(rng, img, aug.colour)
                images[v] = img
                kp[v] = kp[v] @ J[:, :2].T + J[:, 2]
                gt2d[v] = gt2d[v] @ J[:, :2].T + J[:, 2]
                K_new, Rz = _jittered_camera(J, crop_K[v])
                crop_K[v] = K_new
                if Rz is not None:
                    extrinsics[v] = Rz @ extrinsics[v]
        else:
            images[:] = crops
        images = (images / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        ext_known = s.extrinsics_known
        item = {
            "images": torch.from_numpy(images[order].transpose(0, 3, 1, 2).copy()),
            "keypoints": torch.from_numpy(kp[order].copy()),
            "confidence": torch.from_numpy(conf[order].copy()),
            "view_mask": torch.from_numpy(view_valid[order].copy()),
            "crop_K": torch.from_numpy(crop_K[order].astype(np.float32)),
            "extrinsics": torch.from_numpy(extrinsics[order].astype(np.float32)),
            "extrinsics_known": torch.from_numpy(np.asarray(ext_known)[order].copy()),
            "view_order": torch.from_numpy(order.astype(np.int64)),
            "flipped": torch.from_numpy(np.asarray(s.flipped, bool)[order].copy()),
        }
        if self.ground_truth:
            gt_world = s.gt_joints_world if s.gt_joints_world is not None else np.full((21, 3), np.nan, np.float32)
            item["gt_joints_world"] = torch.from_numpy(np.asarray(gt_world, np.float32))
            item["gt_joints_2d"] = torch.from_numpy(np.asarray(gt2d, np.float32)[order].copy())
        if self.weak_camera is not None:
            weak = np.full((V, 21, 2), np.nan, np.float32)
            cam = self.readers[ri].camera_names.index(self.weak_camera)
            if view_valid[cam]:
                weak[cam] = gt2d[cam]
            item["weak_joints_2d"] = torch.from_numpy(weak[order].copy())
        return item


def _jittered_camera(J: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The crop intrinsics after the jitter ``J`` (2, 3), and the camera's turn about its optical axis
    (3, 3; None without rotation): ``J·K = K'·Rz`` with ``K'`` upper triangular (an RQ decomposition
    of the 2×2 part; exact for any K). For a mirrored crop (negative focal length: a flipped left
    hand) the turn comes out the other way, as it must."""
    J3 = np.vstack([J, [0.0, 0.0, 1.0]])
    L = J[:, :2]
    if abs(L[0, 1]) < 1e-12 and abs(L[1, 0]) < 1e-12 or not np.all(np.isfinite(K)):
        return J3 @ K, None
    A = L @ K[:2, :2]
    c, d = A[1]
    n = np.hypot(c, d)
    Rz = np.eye(3)
    Rz[:2, :2] = np.array([[d, -c], [c, d]]) / n  # RQ: A·Rzᵀ is upper triangular, Rz a proper rotation
    return J3 @ K @ Rz.T, Rz


def _colour_jitter(rng: np.random.Generator, img: np.ndarray, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation jitter of a uint8/float BGR image (values kept in 0..255)."""
    img = img.astype(np.float32)
    contrast, saturation = rng.uniform(1 - strength, 1 + strength, 2)
    brightness = rng.uniform(-64 * strength, 64 * strength)
    grey = img @ np.array([0.114, 0.587, 0.299], np.float32)  # BGR luma
    img = grey[..., None] + saturation * (img - grey[..., None])
    img = (img - img.mean()) * contrast + img.mean() + brightness
    return np.clip(img, 0, 255)


def _jitter(rng: np.random.Generator, size: int, aug: Augmentation) -> np.ndarray:
    """A random similarity about the crop centre (2, 3), crop pixels → crop pixels."""
    c = (size - 1) / 2.0
    s = rng.uniform(*aug.scale)
    a = np.deg2rad(rng.uniform(-aug.rotation_deg, aug.rotation_deg)) if aug.rotation_deg else 0.0
    d = rng.uniform(-aug.shift, aug.shift, 2) * size
    R = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([R, (np.array([c, c]) + d - R @ np.array([c, c]))[:, None]])
