"""The keypoint head: 21 heatmaps from the backbone's four feature levels, read by soft-argmax.

Used twice: by the 2D pretraining (:mod:`model.pretrain`), which trains it with the backbone on
the pseudo labels alone, and, as an option, by the single-view network
(``SingleViewNet(single_view_input="keypoints")``), whose heads then read the 21 joints' 2D
positions beside the globally pooled H4 (which at 64² crops is a 2 × 2 map: where the joints are
is mostly pooled away).

    H1..H4 ──1×1 conv to 64 ch, upsampled to H1 (stride 4)──▶ sum ─▶ 3×3 conv, BN, ReLU ─▶ 1×1 conv
    ─▶ 21 heatmaps ─▶ softmax over each map ─▶ expected cell centre ─▶ uv in [-1, 1] crop units

Coordinates follow :mod:`model.single_view`: crop pixel ``uv_px = (uv + 1) · S / 2``; a heatmap cell
``i`` of stride ``k`` covers pixels ``k·i … k·i + k − 1`` and is centred at ``k·i + (k − 1) / 2``.
"""
from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

from .errors import HamucoError
from .safe_load import safe_torch_load

HEAD_CHANNELS = 64
NUM_JOINTS = 21
H1_STRIDE = 4  # ResNet: conv1 (stride 2) and max-pool (stride 2) before layer1


def soft_argmax(heatmaps: torch.Tensor, image_size: int) -> torch.Tensor:
    """Heatmap logits (N, J, h, w) of a square crop of ``image_size`` pixels → (N, J, 2) uv in [-1, 1]."""
    n, j, h, w = heatmaps.shape
    prob = heatmaps.float().flatten(2).softmax(-1).view(n, j, h, w)
    sx, sy = image_size / w, image_size / h
    xs = torch.arange(w, device=heatmaps.device, dtype=prob.dtype) * sx + (sx - 1) / 2
    ys = torch.arange(h, device=heatmaps.device, dtype=prob.dtype) * sy + (sy - 1) / 2
    px = torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], dim=-1)
    return px / (image_size / 2) - 1  # model.single_view.pixels_to_normalized


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

    def keypoints(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(N, 21, 2) uv in [-1, 1] crop units; the crop size is H1's times its stride."""
        return soft_argmax(self(features), features[0].shape[-1] * H1_STRIDE)


def load_keypoint_head(head: HeatmapHead, path: str | os.PathLike) -> None:
    """Start ``head`` from a 2D pretraining: ``PretrainBackbone``'s ``checkpoint-final.pt`` (its
    ``model`` holds ``head.*`` beside the backbone) or a bare state dict of the head."""
    state = safe_torch_load(path, "keypoint head weights")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = {k[len("head."):]: v for k, v in state["model"].items() if k.startswith("head.")}
    if not isinstance(state, dict) or not state:
        raise HamucoError(f"{path}: holds no keypoint head (expected a 2D pretraining checkpoint, "
                          "checkpoint-final.pt of PretrainBackbone, with head.* weights)")
    expected = set(head.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise HamucoError(f"{path}: keypoint head weights do not match the head: missing {missing[:4]}, "
                          f"unexpected {unexpected[:4]}")
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise HamucoError(f"{path}: keypoint head weights do not match the backbone's channels: "
                          f"{str(exc).splitlines()[-1].strip()}") from None
