"""Camera and rotation geometry shared by every layer (NumPy, float64)."""
from __future__ import annotations

import numpy as np


def normalize(v: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=axis, keepdims=True), eps)


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Rodrigues' formula for (..., 3) axis-angle vectors, returning (..., 3, 3)."""
    aa = np.asarray(aa, dtype=np.float64)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    axis = aa / np.maximum(angle, 1e-12)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    skew = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(aa.shape[:-1] + (3, 3))
    s = np.sin(angle)[..., None]
    c = np.cos(angle)[..., None]
    eye = np.broadcast_to(np.eye(3), skew.shape)
    return eye + s * skew + (1.0 - c) * (skew @ skew)


def matrix_to_axis_angle(R: np.ndarray) -> np.ndarray:
    """Inverse of :func:`axis_angle_to_matrix` for (..., 3, 3) rotation matrices."""
    from scipy.spatial.transform import Rotation

    R = np.asarray(R, dtype=np.float64)
    flat = R.reshape(-1, 3, 3)
    return Rotation.from_matrix(flat).as_rotvec().reshape(R.shape[:-2] + (3,))


def is_rotation(R: np.ndarray, tol: float = 1e-4) -> bool:
    """True for a finite 3×3 orthonormal matrix with determinant +1."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3) or not np.all(np.isfinite(R)):
        return False
    return bool(np.allclose(R @ R.T, np.eye(3), atol=tol) and abs(np.linalg.det(R) - 1.0) < tol)


def look_at(camera_center: np.ndarray, target: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World→camera (R, t) in the OpenCV convention (x right, y down, z forward)."""
    c = np.asarray(camera_center, dtype=np.float64)
    z = normalize(np.asarray(target, dtype=np.float64) - c)
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(x) < 1e-8:  # looking along the up vector: pick any perpendicular
        x = np.cross(z, np.array([1.0, 0.0, 0.0]))
    x = normalize(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z], axis=0)
    return R, -R @ c


def world_to_camera(points: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) @ np.asarray(R).T + np.asarray(t)


def project(points_cam: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection of camera-frame points; returns (uv pixels, depth)."""
    p = np.asarray(points_cam, dtype=np.float64)
    z = p[..., 2]
    safe = np.where(np.abs(z) < 1e-9, 1e-9, z)
    uv = (p[..., :2] / safe[..., None]) @ np.asarray(K)[:2, :2].T + np.asarray(K)[:2, 2]
    return uv, z
