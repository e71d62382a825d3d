"""The self-supervised HaMuCo objective for one batch of view groups.

Given a batch (``images`` (B, V, 3, S, S), ``keypoints`` (B, V, 21, 2) crop pixels,
``confidence`` (B, V, 21), ``view_mask`` (B, V), ``extrinsics`` (B, V, 3, 4),
``extrinsics_known`` (B, V)) it runs the model and returns the loss terms:

* ``joint_2d/single``, ``joint_2d/interaction``: confidence-weighted L1 of both branches'
  projections to the pseudo labels;
* ``consistency``: multi-view consistency of the interaction branch's 3D joints, alternating
  per step between the aligned-xy and the mean-of-aligned targets; with ``use_extrinsics``
  and calibrated views the relative rotations are the known ``R_v R_jᵀ``;
* ``distillation``: the single-view 3D joints towards the (detached) interaction result;
* ``shape_prior``, ``pose_prior`` on both branches (weights α, γ in :class:`LossWeights`);
* ``total``: the weighted sum, which the trainer minimises.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .losses import (LossWeights, consistency_loss, distillation_loss, joint_2d_loss, pose_prior, shape_prior,
                     total_loss, weak_supervision_confidence)
from .single_view import pixels_to_normalized


@dataclass
class HaMuCoObjective:
    """``weak_view``: the weakly supervised variant: that view position's labels are replaced by
    its 2D ground truth (``gt_joints_2d``) with confidence 1 (seed C.4)."""

    weights: LossWeights = field(default_factory=LossWeights)
    use_extrinsics: bool = False
    weak_view: Optional[int] = None

    def __call__(self, model: torch.nn.Module, batch: dict, step: int) -> dict:
        images, mask = batch["images"], batch["view_mask"].bool()
        B, V = mask.shape
        out = model(images, mask)
        size = images.shape[-1]
        keypoints, conf = batch["keypoints"], batch["confidence"]
        if self.weak_view is not None:
            gt = batch["gt_joints_2d"][:, self.weak_view]
            known = torch.isfinite(gt).all(-1)  # (B, 21)
            keypoints = keypoints.clone()
            keypoints[:, self.weak_view] = torch.where(known[..., None], gt, keypoints[:, self.weak_view])
            conf = weak_supervision_confidence(conf, self.weak_view)
            conf[:, self.weak_view] = torch.where(known, conf[:, self.weak_view], torch.zeros_like(conf[:, 0]))
        labels = pixels_to_normalized(keypoints, size)
        single_uv = out.single.joints_2d.view(B, V, 21, 2)
        fused_uv = out.fused.joints_2d.view(B, V, 21, 2)
        single_3d = out.single.joints.view(B, V, 21, 3)
        fused_3d = out.fused.joints.view(B, V, 21, 3)
        rel_rot = None
        if self.use_extrinsics and bool(batch["extrinsics_known"].all()):
            R = batch["extrinsics"][..., :3].to(fused_3d.dtype)  # (B, V, 3, 3) world → camera
            rel_rot = R[:, :, None] @ R[:, None].transpose(-1, -2)  # R_v R_jᵀ: camera j → camera v
        terms = {
            "joint_2d/single": joint_2d_loss(single_uv, labels, conf, mask),
            "joint_2d/interaction": joint_2d_loss(fused_uv, labels, conf, mask),
            "consistency": consistency_loss(fused_3d, mask, rel_rot=rel_rot, mode="xy" if step % 2 == 0 else "mean"),
            "distillation": distillation_loss(single_3d, fused_3d, mask),
            "shape_prior/single": shape_prior(out.single.betas),
            "pose_prior/single": pose_prior(out.single.rotmats[:, 1:]),
            "pose_prior/interaction": pose_prior(out.fused.rotmats[:, 1:]),
        }
        terms["total"] = total_loss(terms, self.weights)
        return terms
