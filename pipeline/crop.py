"""Square hand crops: the image↔crop affine, the warp, and intrinsics seen from the crop.

A crop is described by a 2×3 affine ``A`` mapping image pixels to crop pixels
(``crop = A @ [x, y, 1]``), pixel centres at integer coordinates on both sides. A left hand is
flipped horizontally inside the crop so that every crop shows a right hand; the flip is part
of ``A`` (its determinant is then negative) and is recorded beside the crop.
"""
from __future__ import annotations

import cv2
import numpy as np

DEFAULT_CROP_SIZE = 256
DEFAULT_MARGIN = 0.3  # box side = (1 + 2·margin) × the landmarks' larger extent


def square_box(points: np.ndarray, margin: float = DEFAULT_MARGIN, min_size: float = 16.0) -> np.ndarray:
    """Square box (x0, y0, x1, y1) centred on the points' bounding box, with margin."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) == 0:
        return np.full(4, np.nan)
    lo, hi = pts.min(0), pts.max(0)
    centre = (lo + hi) / 2
    side = max(float(np.max(hi - lo)) * (1 + 2 * margin), min_size)
    return np.concatenate([centre - side / 2, centre + side / 2])


def crop_affine(box: np.ndarray, size: int = DEFAULT_CROP_SIZE, flip: bool = False) -> np.ndarray:
    """Affine (2, 3) taking the square ``box`` of the image onto a ``size``×``size`` crop."""
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64)
    s = size / max(x1 - x0, 1e-9)
    # the box edges (continuous coordinates) map onto the crop's outer edges -0.5 and size - 0.5
    A = np.array([[s, 0.0, -s * x0 - 0.5], [0.0, s, -s * y0 - 0.5]])
    if flip:
        A = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([A, [0, 0, 1]])
    return A


def warp_crop(image: np.ndarray, affine: np.ndarray, size: int = DEFAULT_CROP_SIZE) -> np.ndarray:
    """The crop itself (black outside the image), bilinear."""
    return cv2.warpAffine(image, affine, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


def apply_affine(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    return pts @ affine[:, :2].T + affine[:, 2]


def invert_affine(affine: np.ndarray) -> np.ndarray:
    full = np.vstack([affine, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def crop_intrinsics(K: np.ndarray | None, affine: np.ndarray) -> np.ndarray:
    """Intrinsics of the crop (``[A; 0 0 1] @ K``), NaN when ``K`` is unknown.

    For a flipped crop the result has a negative focal length in x: the crop is the image of a
    mirrored camera, which is exactly what a right-hand model sees of a left hand.
    """
    if K is None:
        return np.full((3, 3), np.nan)
    return np.vstack([affine, [0.0, 0.0, 1.0]]) @ np.asarray(K, dtype=np.float64)
