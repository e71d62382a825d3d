"""Multi-view graph feature extraction (supplementary B.2): LE, SAIGB and the joint feature sampler.

Per view (weights shared across views) the three modules give 21 joint tokens:

* LE (location embedding): an MLP on the 21×3 predicted joints and the 15 non-root joint
  rotations → 21×64. Table A writes θ′ ∈ R^{15×3} (axis-angle); we feed the 6D form (15×6) the
  network regresses, as the official code does: it is continuous and its gradient is defined at
  the identity (axis-angle's is not). The MLP sees the flattened inputs, so it knows which joint
  is which, and outputs 21·64 numbers.
* SAIGB (spatial-aware initial graph building): 1×1 conv on H4 to 21·k channels (k = 8) +
  LeakyReLU, reshaped to 21 × (k·h4·w4); 21×512 for 8×8 maps (256² input).
* JFS (:func:`joint_feature_sampler`): the joints projected with the weak perspective (detached)
  sample H1, H2, H3 bilinearly (``grid_sample``, ``align_corners=True``) → 21 × (c1+c2+c3).

Concatenated: 21 × (64 + k·h4·w4 + c1 + c2 + c3) = 21×2368 for ResNet-50 at 256².
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .hand_model import NUM_JOINTS
from .single_view import MLP, MeshOutput

LE_DIM = 64
SAIGB_CHANNELS = 8  # k: channels per joint before flattening the spatial map
NUM_NONROOT = 15


def joint_feature_sampler(features: Sequence[torch.Tensor], uv: torch.Tensor) -> torch.Tensor:
    """Joint-aligned features: maps [(N, C_l, h_l, w_l)], uv (N, J, 2) in [-1, 1] → (N, J, ΣC_l).

    uv is (x, y) in normalised crop units (-1 = left/top); sampling is bilinear with
    ``align_corners=True`` and zero padding outside the map. uv is detached: the sampler gives
    no gradient to the joint positions.
    """
    grid = uv.detach()[:, :, None, :].to(features[0].dtype)  # (N, J, 1, 2)
    sampled = [F.grid_sample(f, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
               for f in features]  # (N, C_l, J, 1)
    return torch.cat([s[..., 0].transpose(1, 2) for s in sampled], dim=-1)


class LocationEmbedding(nn.Module):
    """LE: MLP(21·3 + 15·6 → 21·64) on the joints and the non-root 6D rotations."""

    def __init__(self, dim: int = LE_DIM, hidden: int | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = MLP(NUM_JOINTS * 3 + NUM_NONROOT * 6, NUM_JOINTS * dim, hidden=hidden)

    def forward(self, joints: torch.Tensor, pose6d: torch.Tensor) -> torch.Tensor:
        """joints (N, 21, 3), pose6d (N, 16, 6) → (N, 21, dim)."""
        x = torch.cat([joints.flatten(1), pose6d[:, 1:].flatten(1)], dim=1)
        return self.mlp(x).view(-1, NUM_JOINTS, self.dim)


class SAIGB(nn.Module):
    """Spatial-aware initial graph building: 1×1 conv H4 → 21·k maps, LeakyReLU, reshape per joint."""

    def __init__(self, in_channels: int, per_joint: int = SAIGB_CHANNELS) -> None:
        super().__init__()
        self.per_joint = per_joint
        self.conv = nn.Conv2d(in_channels, NUM_JOINTS * per_joint, kernel_size=1)
        self.act = nn.LeakyReLU(0.1)

    def out_dim(self, h4_size: tuple[int, int]) -> int:
        return self.per_joint * h4_size[0] * h4_size[1]

    def forward(self, h4: torch.Tensor) -> torch.Tensor:
        """H4 (N, C4, h, w) → (N, 21, k·h·w)."""
        x = self.act(self.conv(h4))
        return x.reshape(x.shape[0], NUM_JOINTS, -1)


@dataclass
class GraphFeatures:
    le: torch.Tensor  # (N, 21, 64)      G1
    saigb: torch.Tensor  # (N, 21, k·h·w)  G2
    jfs: torch.Tensor  # (N, 21, c1+c2+c3) G3
    concat: torch.Tensor  # (N, 21, D)


def graph_feature_dim(channels: Sequence[int], image_size: int | tuple[int, int],
                      le_dim: int = LE_DIM, per_joint: int = SAIGB_CHANNELS) -> int:
    """Token width D = le_dim + k·(H/32)·(W/32) + c1 + c2 + c3."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    h4, w4 = -(-h // 32), -(-w // 32)  # ResNet's strided convs round up
    return le_dim + per_joint * h4 * w4 + sum(channels[:3])


class ViewSharedGraphFeatures(nn.Module):
    """VSGFE: LE ‖ SAIGB ‖ JFS for each view (shared weights) → (N, 21, D)."""

    def __init__(self, channels: Sequence[int], le_dim: int = LE_DIM, per_joint: int = SAIGB_CHANNELS) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.le = LocationEmbedding(le_dim)
        self.saigb = SAIGB(self.channels[3], per_joint)

    def forward(self, single: MeshOutput, features: Sequence[torch.Tensor]) -> GraphFeatures:
        g1 = self.le(single.joints, single.pose6d)
        g2 = self.saigb(features[3])
        g3 = joint_feature_sampler(features[:3], single.joints_2d)
        return GraphFeatures(le=g1, saigb=g2, jfs=g3, concat=torch.cat([g1, g2, g3], dim=-1))
