"""A backbone pretrained on the 2D pseudo labels alone (no 3D, no ground truth): still self-supervised.

HaMuCo's official code starts from an ImageNet ResNet-50; a from-scratch backbone learns little per
step on 2 CPU cores. Here the backbone first learns where the joints are in a crop: the keypoint
head of :mod:`model.keypoints` (21 heatmaps from its four feature levels, soft-argmax) trained with
the same confidence-weighted L1 as HaMuCo's 2D term. Its weights then go to
``Backbone(weights=PATH)`` (``hamuco train --backbone-weights PATH``), and the head's, with
``single_view_input="keypoints"``, to the single-view network's keypoint head
(``--keypoint-head-weights``, the run's ``checkpoint-final.pt``).
"""
from __future__ import annotations

import torch
from torch import nn

from .backbone import Backbone
from .keypoints import HeatmapHead, soft_argmax
from .losses import joint_2d_loss
from .single_view import pixels_to_normalized


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
