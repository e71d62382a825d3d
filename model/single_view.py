"""The single-view network of HaMuCo (supplementary Fig. B): backbone → GAP → MLP heads → MANO.

Coordinate conventions (shared with the cross-view network):

* 3D joints and vertices are root-relative at OpenPose joint 9 (middle MCP, ``ROOT_JOINT``)
  and normalised by ``bbox_3d_size / 2`` with ``bbox_3d_size = 0.4`` m, so ±1 ≈ ±0.2 m.
* Camera ``cam = (s, tx, ty)``: ``s = MIN_SCALE + softplus(raw) > 0.4`` (the official code's
  ``ReLU(raw)``, see :func:`camera_from_raw`). Weak-perspective projection in
  normalised crop coordinates: ``uv = s · xy + t`` where ``uv ∈ [-1, 1]`` spans the crop
  (-1 = left/top edge, +1 = right/bottom edge).
* Crop pixels: ``uv_px = (uv + 1) · W / 2`` (x with the crop width, y with the crop height),
  i.e. ``uv = uv_px / (W / 2) − 1``; see :func:`normalized_to_pixels`.
* For feature sampling (``grid_sample`` with ``align_corners=True``) ±1 is the centre of the
  first/last feature-map cell; the half-cell difference to the pixel convention is the one of the
  paper's official code and is learned away.
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from .backbone import Backbone
from .hand_model import ROOT_JOINT, HandModel
from .keypoints import NUM_JOINTS as NUM_KEYPOINTS, HeatmapHead, load_keypoint_head
from .rotations import axis_angle_to_matrix, matrix_to_axis_angle, matrix_to_rot6d, rot6d_to_matrix

BBOX_3D_SIZE = 0.4  # metres; 3D coordinates are divided by BBOX_3D_SIZE / 2
NUM_POSE_JOINTS = 16
NUM_BETAS = 10
NUM_CAM = 3
# Weak-perspective scale s (uv = s·xy + t, xy normalised by BBOX_3D_SIZE / 2, uv in [-1, 1] crop units).
# Crops are cut around the hand with a margin, so the hand's size in the crop is about known: a trained
# network predicts s ≈ 1.6–2.4 on 256² and 128² crops. Training starts there, and s never goes below
# MIN_SCALE (a hand a fifth of the crop): a scale free to shrink to 0 collapses every projection onto one
# point early in training, a minimum of the L1 2D loss from which the pose gets no gradient.
INIT_SCALE = 1.8
MIN_SCALE = 0.4
IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # first two columns of the identity
# Initial global orientation of the pose heads. "identity" (the official code): the hand model's rest
# pose, fingers along +y. "upright": turned 180° about the camera's axis, fingers along −y, which is
# how a camera sees a raised hand (image up = −y): on the synthetic captures the rest pose starts
# 120–179° away from every view's orientation, the upright one on average ~90° (the twist about the
# forearm stays unknown).
INITIAL_ORIENTATIONS = {"identity": IDENTITY_6D, "upright": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)}


class MLP(nn.Sequential):
    """HaMuCo's MLP: Linear(C, hidden) → LeakyReLU(0.1) → Linear(hidden, out); hidden = C by default."""

    def __init__(self, in_features: int, out_features: int, hidden: int | None = None) -> None:
        hidden = in_features if hidden is None else hidden
        super().__init__(nn.Linear(in_features, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, out_features))

    @property
    def last(self) -> nn.Linear:
        return self[-1]


def init_pose_head(head: MLP, num_joints: int = NUM_POSE_JOINTS, std: float = 1e-3,
                   initial_orientation: str = "identity") -> None:
    """Small last-layer weights and identity-rotation biases: the initial pose is near the rest pose,
    turned as ``initial_orientation`` (:data:`INITIAL_ORIENTATIONS`) says."""
    if initial_orientation not in INITIAL_ORIENTATIONS:
        raise ValueError(f"initial orientation must be one of {', '.join(INITIAL_ORIENTATIONS)}, "
                         f"not {initial_orientation!r}")
    nn.init.normal_(head.last.weight, std=std)
    with torch.no_grad():
        bias = torch.tensor(IDENTITY_6D).repeat(num_joints)
        bias[:6] = torch.tensor(INITIAL_ORIENTATIONS[initial_orientation])
        head.last.bias.copy_(bias)


ARTICULATIONS = ("full", "pca")
# What the single view's heads read: "gap" (the official code), the globally pooled H4 alone; "keypoints",
# beside it the 21 joints' 2D positions from a keypoint head on H1..H4 (model.keypoints), which a 2D
# pretraining can start and a 2D term keeps on the pseudo labels (model.objective); "joint_features", beside
# both the backbone's H1..H3 sampled at those joints (the joint feature sampler), each joint's through a small
# MLP to JOINT_FEATURE_DIM numbers: the joint-aligned kind of input the interaction branch decodes from
SINGLE_VIEW_INPUTS = ("gap", "keypoints", "joint_features")
KEYPOINT_INPUTS = ("keypoints", "joint_features")  # the inputs with a keypoint head
JOINT_FEATURE_DIM = 32


class Articulation(nn.Module):
    """A pose head's raw output → the 16 rotations in 6D form (N, 16, 6), global orientation first.

    ``"full"`` (the official code): 16 × 6 numbers, each joint's rotation free. ``"pca"``: the global
    orientation's 6 numbers and ``components`` coefficients of the articulation around the hand
    model's mean pose in its principal components (:meth:`HandModel.articulation_basis`:
    MANO's own PCA, or for the procedural hand the PCA of plausible poses of its joint model), as
    many MANO pipelines predict a hand: fewer numbers to learn, poses near the plausible ones.
    """

    def __init__(self, hand_model: HandModel, mode: str = "full", components: int = 12) -> None:
        super().__init__()
        if mode not in ARTICULATIONS:
            raise ValueError(f"articulation must be one of {', '.join(ARTICULATIONS)}, not {mode!r}")
        self.mode = mode
        self.components = int(components) if mode == "pca" else 0
        if mode == "pca":
            if not 1 <= self.components <= 45:
                raise ValueError(f"PCA components must be 1..45, not {components}")
            mean, basis = hand_model.articulation_basis(self.components)
            self.register_buffer("mean", mean.float(), persistent=False)
            self.register_buffer("basis", basis.float(), persistent=False)

    @property
    def raw_dim(self) -> int:
        return NUM_POSE_JOINTS * 6 if self.mode == "full" else 6 + self.components

    def init_head(self, head: MLP, initial_orientation: str = "identity", std: float = 1e-3) -> None:
        """Near-zero last-layer weights; the biases give the initial pose (the rest pose turned as
        ``initial_orientation`` says for "full", the mean pose for "pca")."""
        if self.mode == "full":
            init_pose_head(head, std=std, initial_orientation=initial_orientation)
            return
        if initial_orientation not in INITIAL_ORIENTATIONS:
            raise ValueError(f"initial orientation must be one of {', '.join(INITIAL_ORIENTATIONS)}, "
                             f"not {initial_orientation!r}")
        nn.init.normal_(head.last.weight, std=std)
        with torch.no_grad():
            bias = torch.zeros(self.raw_dim)
            bias[:6] = torch.tensor(INITIAL_ORIENTATIONS[initial_orientation])
            head.last.bias.copy_(bias)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        n = raw.shape[0]
        if self.mode == "full":
            return raw.view(n, NUM_POSE_JOINTS, 6)
        pose = self.mean.to(raw.dtype) + raw[:, 6:] @ self.basis.to(raw.dtype)  # (N, 45) axis-angle
        joints6d = matrix_to_rot6d(axis_angle_to_matrix(pose.view(n, NUM_POSE_JOINTS - 1, 3)))
        return torch.cat([raw[:, None, :6], joints6d], dim=1)


def init_cam_head(head: MLP, scale: float = INIT_SCALE, std: float = 1e-3) -> None:
    """Small last-layer weights; bias (softplus⁻¹(scale), 0, 0) so the initial scale is ``scale``, centred."""
    nn.init.normal_(head.last.weight, std=std)
    with torch.no_grad():
        head.last.bias.copy_(torch.tensor([math.log(math.expm1(scale - MIN_SCALE)), 0.0, 0.0]))


def init_shape_head(head: MLP, std: float = 1e-3) -> None:
    nn.init.normal_(head.last.weight, std=std)
    nn.init.zeros_(head.last.bias)


def camera_from_raw(raw: torch.Tensor) -> torch.Tensor:
    """Raw head output (..., 3) → (s, tx, ty) with s = MIN_SCALE + softplus(raw_s) > MIN_SCALE.

    The official code keeps s ≥ 0 with a ReLU. Measured here (ResNet-18, 8 views, lr 1e-3): the scale
    is pushed towards 0 within the first steps, where every projection collapses onto one point and
    the 2D losses stop reaching the pose (a ReLU scale then stays 0 for good; a plain softplus one
    saturates near 0); PA-MPJPE stayed above 40 mm. With the floor the projections keep the hand's
    structure and the runs learn (``bench/science.py``).
    """
    return torch.cat([MIN_SCALE + nn.functional.softplus(raw[..., :1]), raw[..., 1:]], dim=-1)


def weak_perspective(points: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """Normalised 3D points (N, J, 3) and cam (N, 3) = (s, tx, ty) → uv (N, J, 2) in [-1, 1] crop units."""
    return cam[:, None, :1] * points[..., :2] + cam[:, None, 1:]


def normalized_to_pixels(uv: torch.Tensor, crop_size: int | Sequence[int]) -> torch.Tensor:
    """uv in [-1, 1] → crop pixels: (uv + 1) · size / 2 (size = (W, H) or one int for square crops)."""
    size = torch.as_tensor(crop_size if not isinstance(crop_size, int) else (crop_size, crop_size),
                           dtype=uv.dtype, device=uv.device)
    return (uv + 1) * size / 2


def pixels_to_normalized(uv_px: torch.Tensor, crop_size: int | Sequence[int]) -> torch.Tensor:
    """Crop pixels → [-1, 1]: uv_px / (size / 2) − 1 (inverse of :func:`normalized_to_pixels`)."""
    size = torch.as_tensor(crop_size if not isinstance(crop_size, int) else (crop_size, crop_size),
                           dtype=uv_px.dtype, device=uv_px.device)
    return uv_px / (size / 2) - 1


@dataclass
class MeshOutput:
    """A decoded hand: MANO parameters, mesh and joints in the normalised conventions above."""

    pose6d: torch.Tensor  # (N, 16, 6), global rotation first
    rotmats: torch.Tensor  # (N, 16, 3, 3)
    betas: torch.Tensor  # (N, 10)
    cam: torch.Tensor  # (N, 3) = (s, tx, ty), s > MIN_SCALE
    vertices: torch.Tensor  # (N, V, 3) root-relative, normalised
    joints: torch.Tensor  # (N, 21, 3) OpenPose order, root-relative, normalised
    joints_2d: torch.Tensor  # (N, 21, 2) weak-perspective projection in [-1, 1] crop units

    @property
    def pose_axis_angle(self) -> torch.Tensor:
        """(N, 48): the 16 rotations in axis-angle form, as Table A's θ."""
        return matrix_to_axis_angle(self.rotmats).flatten(-2)

    def joints_2d_pixels(self, crop_size: int | Sequence[int]) -> torch.Tensor:
        return normalized_to_pixels(self.joints_2d, crop_size)

    def joints_metres(self) -> torch.Tensor:
        """Root-relative joints in metres."""
        return self.joints * (BBOX_3D_SIZE / 2)


@dataclass
class SingleViewOutput(MeshOutput):
    gap: torch.Tensor = None  # (N, C4) globally pooled H4
    features: tuple[torch.Tensor, ...] = ()  # H1..H4
    keypoints_2d: Optional[torch.Tensor] = None  # (N, 21, 2) the keypoint head's joints in [-1, 1] crop units


def decode_mesh(hand_model: HandModel, pose6d: torch.Tensor, betas: torch.Tensor,
                cam: torch.Tensor) -> dict[str, torch.Tensor]:
    """6D pose (N, 16, 6), β (N, 10), cam (N, 3) → the fields of :class:`MeshOutput`."""
    rotmats = rot6d_to_matrix(pose6d)
    hand = hand_model.forward_rotmat(rotmats, betas)
    root = hand.joints[:, ROOT_JOINT:ROOT_JOINT + 1]
    scale = 2.0 / BBOX_3D_SIZE
    joints = (hand.joints - root) * scale
    vertices = (hand.vertices - root) * scale
    return dict(pose6d=pose6d, rotmats=rotmats, betas=betas, cam=cam, vertices=vertices, joints=joints,
                joints_2d=weak_perspective(joints, cam))


class SingleViewNet(nn.Module):
    """Backbone → GAP(H4) → one MLP per output (θ 16×6, β 10, camera 3) → hand model.

    ``single_view_input="keypoints"``: the MLPs read GAP(H4) and the 21 joints' uv from a keypoint
    head (:class:`model.keypoints.HeatmapHead`), started from ``keypoint_head_weights`` (a 2D
    pretraining's ``checkpoint-final.pt``) when given. ``"joint_features"``: as ``"keypoints"``, and
    beside them H1..H3 sampled at those joints (:func:`model.graph_features.joint_feature_sampler`),
    each joint's through one MLP (shared over joints) to :data:`JOINT_FEATURE_DIM` numbers.
    """

    def __init__(self, backbone: Backbone, hand_model: HandModel, initial_orientation: str = "identity",
                 articulation: str = "full", pca_components: int = 12, single_view_input: str = "gap",
                 keypoint_head_weights: Optional[str] = None) -> None:
        super().__init__()
        if single_view_input not in SINGLE_VIEW_INPUTS:
            raise ValueError(f"single-view input must be one of {', '.join(SINGLE_VIEW_INPUTS)}, "
                             f"not {single_view_input!r}")
        self.backbone = backbone
        self.hand_model = hand_model
        self.single_view_input = single_view_input
        self.articulation = Articulation(hand_model, articulation, pca_components)
        c = backbone.channels[-1]
        self.keypoint_head = None
        self.joint_features = None
        if single_view_input in KEYPOINT_INPUTS:
            self.keypoint_head = HeatmapHead(backbone.channels)
            if keypoint_head_weights not in (None, "", "none"):
                load_keypoint_head(self.keypoint_head, keypoint_head_weights)
            c += 2 * NUM_KEYPOINTS
        elif keypoint_head_weights not in (None, "", "none"):
            raise ValueError("keypoint head weights need single_view_input='keypoints' or 'joint_features'")
        if single_view_input == "joint_features":  # per joint: H1..H3 at its uv → JOINT_FEATURE_DIM numbers
            self.joint_features = MLP(sum(backbone.channels[:3]), JOINT_FEATURE_DIM)
            c += NUM_KEYPOINTS * JOINT_FEATURE_DIM
        self.pose_head = MLP(c, self.articulation.raw_dim)
        self.shape_head = MLP(c, NUM_BETAS)
        self.cam_head = MLP(c, NUM_CAM)
        self.articulation.init_head(self.pose_head, initial_orientation)
        init_shape_head(self.shape_head)
        init_cam_head(self.cam_head)

    def forward(self, images: torch.Tensor) -> SingleViewOutput:
        """Crops (N, 3, H, W), ImageNet-normalised → :class:`SingleViewOutput`."""
        features = self.backbone(images)
        gap = features[-1].mean(dim=(2, 3))
        return self.decode(gap, features)

    def decode(self, gap: torch.Tensor, features: tuple[torch.Tensor, ...] = ()) -> SingleViewOutput:
        x, keypoints = gap, None
        if self.keypoint_head is not None:
            keypoints = self.keypoint_head.keypoints(features)
            x = torch.cat([gap, keypoints.to(gap.dtype).flatten(1)], dim=1)
        if self.joint_features is not None:
            from .graph_features import joint_feature_sampler  # graph_features builds on this module

            sampled = joint_feature_sampler(features[:3], keypoints)  # (N, 21, C1+C2+C3), uv detached
            x = torch.cat([x, self.joint_features(sampled).to(x.dtype).flatten(1)], dim=1)
        pose6d = self.articulation(self.pose_head(x))
        betas = self.shape_head(x)
        cam = camera_from_raw(self.cam_head(x))
        return SingleViewOutput(**decode_mesh(self.hand_model, pose6d, betas, cam), gap=gap,
                                features=tuple(features), keypoints_2d=keypoints)
