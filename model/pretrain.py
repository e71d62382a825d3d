"""A backbone pretrained on the 2D pseudo labels alone (no 3D, no ground truth): still self-supervised.

HaMuCo's official code starts from an ImageNet ResNet-50; a from-scratch backbone learns little per
step on 2 CPU cores. Here the backbone first learns where the joints are in a crop: a small
heatmap head on its four feature levels, and integral (soft-argmax) regression of the 21 joints
trained with the same confidence-weighted L1 as HaMuCo's 2D term. Its weights then go to
``Backbone(weights=PATH)`` (``hamuco train --backbone-weights PATH``).

    H1..H4 ──1×1 conv to 64 ch, upsampled to H1 (stride 4)──▶ sum ─▶ 3×3 conv, BN, ReLU ─▶ 1×1 conv
    ─▶ 21 heatmaps ─▶ softmax over each map ─▶ expected cell centre ─▶ uv in [-1, 1] crop units

Coordinates follow :mod:`model.single_view`: crop pixel ``uv_px = (uv + 1) · S / 2``; a heatmap cell
``i`` of stride ``k`` covers pixels ``k·i … k·i + k − 1`` and is centred at ``k·i + (k − 1) / 2``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .backbone import Backbone
from .losses import joint_2d_loss
from .single_view import pixels_to_normalized

HEAD_CHANNELS = 64
NUM_JOINTS = 21


def soft_argmax(heatmaps: torch.Tensor, image_size: int) -> torch.Tensor:
    """Heatmap logits (N, J, h, w) of a square crop of ``image_size`` pixels → (N, J, 2) uv in [-1, 1]."""
    n, j, h, w = heatmaps.shape
    prob = heatmaps.float().flatten(2).softmax(-1).view(n, j, h, w)
    sx, sy = image_size / w, image_size / h
    xs = torch.arange(w, device=heatmaps.device, dtype=prob.dtype) * sx + (sx - 1) / 2
    ys = torch.arange(h, device=heatmaps.device, dtype=prob.dtype) * sy + (sy - 1) / 2
    px = torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], dim=-1)
    return pixels_to_normalized(px, image_size)


class HeatmapHead(nn.Module):
    """The four feature levels → 21 heatmaps at H1's resolution (stride 4)."""

    def __init__(self, channels: tuple[int, int, int, int], joints: int = NUM_JOINTS, width: int = HEAD_CHANNELS):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.fuse = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        self.out = nn.Conv2d(width, joints, 1)

    def forward(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        size = features[0].shape[-2:]
        x = sum(F.interpolate(lat(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size
                else lat(f) for lat, f in zip(self.lateral, features))
        return self.out(self.fuse(x))


class KeypointNet(nn.Module):
    """Backbone + :class:`HeatmapHead`: crops (N, 3, S, S) → joints uv (N, 21, 2) in [-1, 1] crop units."""

    def __init__(self, backbone_name: str = "resnet18", backbone_weights: str = "none") -> None:
        super().__init__()
        self.backbone = Backbone(backbone_name, backbone_weights)
        self.head = HeatmapHead(self.backbone.channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return soft_argmax(self.head(self.backbone(images)), images.shape[-1])


def keypoint_objective(model: nn.Module, batch: dict, step: int) -> dict[str, torch.Tensor]:
    """The trainer's objective: the valid views of a batch of view groups, their joints against the
    pseudo labels (confidence-weighted L1 in normalised crop units, HaMuCo's 2D term)."""
    images, mask = batch["images"], batch["view_mask"].bool()
    size = images.shape[-1]
    uv = model(images[mask])  # (n, 21, 2), the valid views only
    labels = pixels_to_normalized(batch["keypoints"][mask], size)
    loss = joint_2d_loss(uv[None], labels[None], batch["confidence"][mask][None])
    return {"total": loss, "joint_2d": loss.detach()}


def backbone_state_dict(model: KeypointNet) -> dict[str, torch.Tensor]:
    """The backbone's weights in torchvision's ResNet key layout (no ``fc.*``), as ``Backbone`` reads them."""
    return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
