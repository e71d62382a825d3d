"""HaMuCo: single-view network + multi-view graph features + cross-view interaction + regression.

Shapes follow supplementary Table A (ResNet-50, one group of 8 views at 256²)::

    images (B, V, 3, H, W) ──flatten B·V──▶ backbone H1..H4 ─▶ single view (θ, β, s, t, M, P)
    ─▶ LE ‖ SAIGB ‖ JFS (B·V, 21, D) ─▶ G (B, V·21, D) ─▶ 2 × (G + CVA + VSF) ─▶ G*
    ─▶ per-joint MLP → 32 ─▶ (B·V, 21·32) ─▶ MLPs θ* (16×6), s*, t*;  β* = β.detach()
    ─▶ hand model again ─▶ M*, P*

Invalid views (``view_mask`` False) do not go through the backbone (their features are zeros,
so BatchNorm statistics and compute cover valid crops only), are never attended to and never
pooled; their outputs are returned but meaningless.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from .backbone import Backbone
from .cross_view import CrossViewInteraction
from .errors import HamucoError
from .graph_features import GraphFeatures, ViewSharedGraphFeatures, graph_feature_dim
from .hand_model import NUM_JOINTS, HandModel
from .single_view import (MLP, NUM_CAM, MeshOutput, SingleViewNet, SingleViewOutput, camera_from_raw, decode_mesh,
                          init_cam_head)

REGRESSION_DIM = 32


@dataclass
class HaMuCoOutput:
    """All outputs are flattened over the group: index b·V + v (reshape with ``.view(B, V, …)``)."""

    single: SingleViewOutput  # θ, β, cam, M, P of the single-view network, features H1..H4
    fused: MeshOutput  # θ*, β* (= β detached), cam*, M*, P* of the interaction branch
    view_mask: torch.Tensor  # (B, V) bool
    graph: Optional[GraphFeatures] = None  # traced: LE, SAIGB, JFS, concat (B·V, 21, ·)
    trace: dict[str, torch.Tensor] = field(default_factory=dict)  # traced: G, cva_i, vsf_i, G*, regression…

    @property
    def num_views(self) -> int:
        return self.view_mask.shape[1]


class HaMuCo(nn.Module):
    """The HaMuCo network. Weights and the hand model are loaded here; ``forward`` is tensor math.

    ``hand_model``: a :class:`HandModel`, a converted MANO ``.npz`` path, or None for the built-in
    procedural hand. ``image_size``: the crop size the token width is built for (SAIGB flattens
    H4, whose size follows the input). ``initial_orientation``: the global orientation both pose
    heads start from (``"identity"``, the official code, or ``"upright"``; see
    :data:`model.single_view.INITIAL_ORIENTATIONS`). ``articulation``: ``"full"`` (16 × 6 numbers, the
    official code) or ``"pca"`` (``pca_components`` coefficients around the mean pose; both heads;
    :class:`model.single_view.Articulation`). ``single_view_input``: what the single view's heads read,
    ``"gap"`` (the official code) or ``"keypoints"`` (beside it the 21 joints' uv from a keypoint head,
    started from ``keypoint_head_weights``, a 2D pretraining's checkpoint; :class:`SingleViewNet`) or
    ``"joint_features"`` (beside both the backbone's features sampled at those joints).
    """

    def __init__(self, backbone_name: str = "resnet50", backbone_weights: Optional[str | os.PathLike] = "none",
                 hand_model: Optional[HandModel | str | os.PathLike] = None, image_size: int = 256,
                 num_layers: int = 2, num_heads: int = 4, dropout: float = 0.1,
                 view_keep_prob: float = 0.5, initial_orientation: str = "identity", articulation: str = "full",
                 pca_components: int = 12, single_view_input: str = "gap",
                 keypoint_head_weights: Optional[str | os.PathLike] = None) -> None:
        super().__init__()
        if not isinstance(hand_model, HandModel):
            hand_model = HandModel(hand_model)
        self.image_size = image_size
        self.single_view = SingleViewNet(Backbone(backbone_name, backbone_weights), hand_model, initial_orientation,
                                         articulation, pca_components, single_view_input, keypoint_head_weights)
        channels = self.single_view.backbone.channels
        self.graph_features = ViewSharedGraphFeatures(channels)
        self.token_dim = graph_feature_dim(channels, image_size)
        self.cross_view = CrossViewInteraction(self.token_dim, num_layers, num_heads, dropout, view_keep_prob)
        self.joint_regression = MLP(self.token_dim, REGRESSION_DIM)
        flat = NUM_JOINTS * REGRESSION_DIM
        self.pose_head = MLP(flat, self.single_view.articulation.raw_dim)
        self.cam_head = MLP(flat, NUM_CAM)
        self.single_view.articulation.init_head(self.pose_head, initial_orientation)
        init_cam_head(self.cam_head)

    @property
    def hand_model(self) -> HandModel:
        return self.single_view.hand_model

    def forward(self, images: torch.Tensor, view_mask: Optional[torch.Tensor] = None,
                trace: bool = False, view_keep_prob: Optional[float] = None) -> HaMuCoOutput:
        """images (B, V, 3, H, W), view_mask (B, V) bool (None: all valid) → :class:`HaMuCoOutput`.
        ``view_keep_prob``: the cross-view branch's view-masking keep probability for this call in
        training (None: the one the network was built with)."""
        if images.dim() != 5:
            raise HamucoError(f"images must be (B, V, 3, H, W), got shape {tuple(images.shape)}")
        b, v = images.shape[:2]
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise HamucoError(f"this network was built for {self.image_size}² crops, got "
                              f"{images.shape[-2]}×{images.shape[-1]}")
        if view_mask is None:
            view_mask = torch.ones(b, v, dtype=torch.bool, device=images.device)
        view_mask = view_mask.to(device=images.device, dtype=torch.bool)
        if view_mask.shape != (b, v):
            raise HamucoError(f"view_mask must be (B, V) = {(b, v)}, got {tuple(view_mask.shape)}")
        if not view_mask.any(dim=1).all():
            raise HamucoError("every group needs at least one valid view; "
                              f"groups {torch.nonzero(~view_mask.any(dim=1)).flatten().tolist()} have none")

        # Backbone on valid crops only; invalid slots keep zero features.
        flat_mask = view_mask.reshape(-1)
        valid_feats = self.single_view.backbone(images.reshape(b * v, *images.shape[2:])[flat_mask])
        if bool(flat_mask.all()):
            features = valid_feats
        else:
            features = tuple(f.new_zeros((b * v,) + f.shape[1:]).index_copy(
                0, torch.nonzero(flat_mask).flatten(), f) for f in valid_feats)
        single = self.single_view.decode(features[-1].mean(dim=(2, 3)), features)

        graph = self.graph_features(single, features)
        g = graph.concat.reshape(b, v * NUM_JOINTS, -1)
        cross = self.cross_view(g, view_mask, trace=trace, view_keep_prob=view_keep_prob)

        reg = self.joint_regression(cross.graph.reshape(b * v, NUM_JOINTS, -1))  # (B·V, 21, 32)
        flat = reg.flatten(1)  # (B·V, 672)
        pose6d = self.single_view.articulation(self.pose_head(flat))
        cam = camera_from_raw(self.cam_head(flat))
        fused = MeshOutput(**decode_mesh(self.hand_model, pose6d, single.betas.detach(), cam))

        out = HaMuCoOutput(single=single, fused=fused, view_mask=view_mask)
        if trace:
            out.graph = graph
            out.trace = dict(G=g, G_star=cross.graph, regression=reg, regression_flat=flat)
            for i, layer in enumerate(cross.layers, start=1):
                out.trace.update({f"cva_{i}": layer["cva"], f"vsf_{i}": layer["vsf"], f"layer_{i}": layer["out"]})
        return out
