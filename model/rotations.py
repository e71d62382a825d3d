"""Rotation representations in torch: 6D (Zhou et al.), matrices and axis-angle.

The network regresses each joint's rotation as 6 numbers (the first two columns of the matrix,
made orthonormal by Gram-Schmidt); the hand model consumes matrices; Table A's 48 numbers are the
axis-angle of the 16 joints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rot6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) → (..., 3, 3) rotation matrices (columns b1, b2, b1 × b2)."""
    a1, a2 = x[..., 0:3], x[..., 3:6]
    b1 = F.normalize(a1, dim=-1, eps=1e-8)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1, eps=1e-8)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rot6d(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) → (..., 6): the first two columns."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle → (..., 3, 3), Rodrigues (differentiable, safe at zero)."""
    angle = aa.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    axis = aa / angle
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(aa.shape[:-1] + (3, 3))
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand(K.shape)
    return eye + s * K + (1 - c) * (K @ K)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) → (..., 3) axis-angle (angle in [0, π])."""
    q = matrix_to_quaternion(R)
    w, xyz = q[..., :1], q[..., 1:]
    norm = xyz.norm(dim=-1, keepdim=True)
    # angle / sin(angle / 2) with angle = 2 atan2(|xyz|, w); near the identity its series
    # 2 / w · (1 - |xyz|² / (3 w²)), so that the gradient there is the true one (2 / w), not 0
    small = norm < 1e-4  # then w > 0.99
    ws = torch.where(small, w, torch.ones_like(w))
    ratio = torch.where(small, 2 / ws * (1 - norm ** 2 / (3 * ws ** 2)),
                        2 * torch.atan2(norm, w) / torch.where(small, torch.ones_like(norm), norm))
    return xyz * ratio


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) → (..., 4) unit quaternion (w, x, y, z) with w ≥ 0."""
    m = R
    t = torch.stack([1 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2],
                     1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                     1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], dim=-1)
    q_abs = torch.sqrt(t.clamp_min(0.0))
    # candidate quaternions, each well conditioned when its own component is the largest
    cands = torch.stack([
        torch.stack([q_abs[..., 0] ** 2, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                     m[..., 1, 0] - m[..., 0, 1]], dim=-1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], q_abs[..., 1] ** 2, m[..., 1, 0] + m[..., 0, 1],
                     m[..., 0, 2] + m[..., 2, 0]], dim=-1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1], q_abs[..., 2] ** 2,
                     m[..., 2, 1] + m[..., 1, 2]], dim=-1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 2, 0] + m[..., 0, 2], m[..., 2, 1] + m[..., 1, 2],
                     q_abs[..., 3] ** 2], dim=-1),
    ], dim=-2) / (2 * q_abs[..., None].clamp_min(0.1))
    best = q_abs.argmax(dim=-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)
