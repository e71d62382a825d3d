"""The hand model: MANO through smplx, 21 joints in OpenPose order, left hands by mirroring.

Loading happens in the constructor (a converted MANO ``.npz`` or the built-in procedural
hand); ``forward`` is pure tensor math, as in smplx's body models.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import smplx
import torch
from smplx.utils import Struct
from torch import nn

from .mano_io import load_hand_model_npz
from .procedural_hand import procedural_hand_model

NUM_JOINTS = 21
ROOT_JOINT = 9  # middle-finger MCP, the root of root-relative coordinates (as the paper)
# OpenPose hand order from MANO's 16 joints followed by the 5 fingertips (thumb..pinky).
OPENPOSE_FROM_MANO = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)
# Parent of each OpenPose joint (for drawing skeletons and bone lengths).
OPENPOSE_PARENTS = (-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19)
OPENPOSE_NAMES = (
    "wrist", "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip",
)
MIRROR = np.array([-1.0, 1.0, 1.0])  # reflection x → -x that turns a right hand into a left one
PROCEDURAL = "procedural"


def mirror_axis_angle(pose: np.ndarray | torch.Tensor):
    """Axis-angle rotations (..., 3k) of a right hand → the mirrored left hand's (and back)."""
    sign = np.tile([1.0, -1.0, -1.0], pose.shape[-1] // 3)
    if isinstance(pose, torch.Tensor):
        return pose * torch.as_tensor(sign, dtype=pose.dtype, device=pose.device)
    return np.asarray(pose) * sign


def mirror_hand_model(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A left-hand model that is the exact mirror image (x → -x) of a right-hand model."""
    out = {k: np.array(v, copy=True) for k, v in data.items()}
    out["v_template"] = out["v_template"] * MIRROR
    out["shapedirs"] = out["shapedirs"] * MIRROR[None, :, None]
    # pose feature (R - I) of joint j, entry (a, b) changes by m_a m_b under R → M R M;
    # its vertex offset along c by m_c.
    m_ab = np.outer(MIRROR, MIRROR).ravel()
    feature_sign = np.tile(m_ab, out["posedirs"].shape[-1] // 9)
    out["posedirs"] = out["posedirs"] * MIRROR[None, :, None] * feature_sign[None, None, :]
    out["f"] = out["f"][:, [0, 2, 1]]  # a reflection flips the winding
    out["hands_mean"] = mirror_axis_angle(out["hands_mean"])
    out["hands_components"] = mirror_axis_angle(out["hands_components"])
    return out


def load_hand_model_data(model_path: Optional[str | Path] = None) -> tuple[dict[str, np.ndarray], str, str]:
    """(arrays, source name, sha256) of a converted MANO ``.npz`` or the procedural hand."""
    if model_path in (None, "", PROCEDURAL):
        data = procedural_hand_model()
        digest = hashlib.sha256()
        for key in sorted(data):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(data[key]).tobytes())
        return data, PROCEDURAL, digest.hexdigest()
    path = Path(model_path)
    data = load_hand_model_npz(path)
    return data, str(path), hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class HandOutput:
    vertices: torch.Tensor  # (B, V, 3)
    joints: torch.Tensor  # (B, 21, 3), OpenPose order
    mano_joints: torch.Tensor  # (B, 16, 3), MANO order


class HandModel(nn.Module):
    """MANO-format hand model (smplx LBS) returning 21 OpenPose-ordered joints.

    ``model_path``: a ``.npz`` made by ``hamuco prepare-mano``, or None for the procedural
    hand. ``side="left"`` builds the mirror image of the right-hand model; its pose
    parameters are the mirrored ones (see :func:`mirror_axis_angle`).
    """

    def __init__(self, model_path: Optional[str | Path] = None, side: str = "right",
                 num_betas: int = 10, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', not {side!r}")
        data, self.source, self.sha256 = load_hand_model_data(model_path)
        if side == "left":
            data = mirror_hand_model(data)
        self.side = side
        tips = data.pop("tip_vertex_ids")
        mean_pose = np.asarray(data.get("hands_mean", np.zeros(45)), dtype=np.float64).reshape(45)
        self.hands_components = np.asarray(data.get("hands_components", np.eye(45)), dtype=np.float64).reshape(-1, 45)
        with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a note about 10 betas
            self.layer = smplx.MANO(
                model_path="", data_struct=Struct(**data), is_rhand=side == "right", use_pca=False,
                flat_hand_mean=True, num_betas=num_betas, create_global_orient=False,
                create_hand_pose=False, create_betas=False, create_transl=False, dtype=dtype)
        self.num_betas = self.layer.num_betas
        self.register_buffer("tip_vertex_ids", torch.as_tensor(tips, dtype=torch.long), persistent=False)
        # MANO's mean hand pose (axis-angle of joints 1..15): the official pose prior's centre (its
        # MANO layer has flat_hand_mean=False, so its θ = 0 is this pose); zeros for the procedural hand
        self.register_buffer("mean_pose", torch.as_tensor(mean_pose, dtype=dtype), persistent=False)
        self.register_buffer("openpose_index", torch.as_tensor(OPENPOSE_FROM_MANO, dtype=torch.long),
                             persistent=False)
        self.faces = np.asarray(data["f"], dtype=np.int64)

    @property
    def num_vertices(self) -> int:
        return int(self.layer.v_template.shape[0])

    def forward(self, global_orient: torch.Tensor, hand_pose: torch.Tensor, betas: torch.Tensor,
                transl: Optional[torch.Tensor] = None) -> HandOutput:
        """Axis-angle ``global_orient`` (B, 3), ``hand_pose`` (B, 45), ``betas`` (B, ≤10)."""
        if betas.shape[-1] < self.num_betas:
            betas = torch.nn.functional.pad(betas, (0, self.num_betas - betas.shape[-1]))
        out = self.layer(betas=betas[..., : self.num_betas], global_orient=global_orient,
                         hand_pose=hand_pose, transl=transl)
        vertices, mano_joints = out.vertices, out.joints
        tips = vertices[:, self.tip_vertex_ids]
        joints = torch.cat([mano_joints, tips], dim=1)[:, self.openpose_index]
        return HandOutput(vertices=vertices, joints=joints, mano_joints=mano_joints)

    def forward_rotmat(self, rotmats: torch.Tensor, betas: torch.Tensor,
                       transl: Optional[torch.Tensor] = None) -> HandOutput:
        """Like :meth:`forward` with the 16 joint rotations as matrices (B, 16, 3, 3), global first.

        This is the path of the networks (6D rotations → matrices → LBS) and stays differentiable.
        """
        from smplx.lbs import lbs

        if betas.shape[-1] < self.num_betas:
            betas = torch.nn.functional.pad(betas, (0, self.num_betas - betas.shape[-1]))
        layer = self.layer
        vertices, mano_joints = lbs(betas[..., : self.num_betas], rotmats,
                                    layer.v_template, layer.shapedirs, layer.posedirs, layer.J_regressor,
                                    layer.parents, layer.lbs_weights, pose2rot=False)
        if transl is not None:
            vertices = vertices + transl[:, None]
            mano_joints = mano_joints + transl[:, None]
        tips = vertices[:, self.tip_vertex_ids]
        joints = torch.cat([mano_joints, tips], dim=1)[:, self.openpose_index]
        return HandOutput(vertices=vertices, joints=joints, mano_joints=mano_joints)

    def articulation_basis(self, k: int, samples: int = 20000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (45,), components (k, 45)): a hand pose ≈ mean + coefficients @ components.

        A model file with its own PCA (MANO's ``hands_components``, ``hands_mean``) gives its first
        ``k`` components around its mean pose. A model whose components are the identity (the
        procedural hand, a MANO file without them) gets the PCA of ``samples`` plausible poses of its
        anatomical joint model (:class:`model.hand_pose.HandPoseSpace`: both pose priors, within the
        joint limits, drawn with ``seed``), so the same ``k`` means the same on every run."""
        comps = self.hands_components
        if comps.shape[0] >= k and not np.allclose(comps, np.eye(45)[: comps.shape[0]]):
            return torch.as_tensor(self.mean_pose.double().numpy()), torch.as_tensor(comps[:k])
        from .hand_pose import HandPoseSpace

        rest = self.rest_joints().double().numpy()
        right = rest * MIRROR if self.side == "left" else rest
        space = HandPoseSpace(right)
        rng = np.random.default_rng(seed)
        poses = space.to_hand_pose(np.concatenate([space.sample(rng, samples // 2), space.sample_wide(rng, samples // 2)]))
        if self.side == "left":
            poses = mirror_axis_angle(poses)
        mean = poses.mean(0)
        _, _, vt = np.linalg.svd(poses - mean, full_matrices=False)
        return torch.as_tensor(mean), torch.as_tensor(vt[:k])

    def rest_joints(self, betas: Optional[torch.Tensor] = None) -> torch.Tensor:
        """OpenPose joints (21, 3) of the flat rest pose for the given shape."""
        dtype = self.layer.v_template.dtype
        b = torch.zeros(1, self.num_betas, dtype=dtype) if betas is None else betas.reshape(1, -1).to(dtype)
        z = torch.zeros(1, 3, dtype=dtype)
        return self(z, torch.zeros(1, 45, dtype=dtype), b).joints[0]
