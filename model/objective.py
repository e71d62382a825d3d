"""The self-supervised HaMuCo objective for one batch of view groups (the official code's terms).

Given a batch (``images`` (B, V, 3, S, S), ``keypoints`` (B, V, 21, 2) crop pixels,
``confidence`` (B, V, 21), ``view_mask`` (B, V), ``extrinsics`` (B, V, 3, 4),
``extrinsics_known`` (B, V); with weak supervision also ``weak_joints_2d`` (B, V, 21, 2)) it runs
the model and returns the loss terms of :mod:`model.losses`:

* ``joint_2d/single``, ``joint_2d/interaction``: confidence-weighted L1 of both branches'
  projections to the pseudo labels;
* ``consistency``: multi-view consistency of the interaction branch's points (mesh vertices and
  joints), alternating per step between the aligned-xy (even steps) and the fused-mean (odd
  steps) forms; with ``use_extrinsics`` and calibrated views the relative rotations are the known
  ``R_v R_jᵀ`` (the paper's training scheme 2), otherwise Procrustes (scheme 1);
* ``distillation``: the single-view points towards the (detached) fused multi-view result in the
  same view's frame;
* ``shape_prior/single``, ``pose_prior/single``, ``pose_prior/interaction``;
* ``joint_2d/keypoints``, only for a single view with a keypoint head (``single_view_input`` =
  ``"keypoints"`` or ``"joint_features"``): the head's soft-argmax joints against the same labels, the
  2D pretraining's term, so the joints its heads read stay on the pseudo labels;
* ``total``: the weighted sum (:class:`LossWeights`), which the trainer minimises.

Options that deviate from the official code (each off by default): ``points="joints"`` (the 3D
terms on the 21 joints only), ``distill_to="interaction"`` (distil towards the view's own
interaction output instead of the fused result).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import HamucoError
from .losses import (LossWeights, align_views, consistency_loss, distillation_loss, joint_2d_loss, pose_prior,
                     shape_prior, total_loss)
from .single_view import pixels_to_normalized

POINTS = ("mesh", "joints")
DISTILL_TARGETS = ("fused", "interaction")


def _points(mesh, B: int, V: int, which: str) -> torch.Tensor:
    """(B, V, P, 3): the mesh vertices followed by the 21 joints (the official 799 points), or the joints."""
    joints = mesh.joints.view(B, V, -1, 3)
    if which == "joints":
        return joints
    return torch.cat([mesh.vertices.view(B, V, -1, 3), joints], dim=2)


@dataclass
class HaMuCoObjective:
    """``weak_supervision``: the weakly supervised variant (seed C.4): wherever the batch's
    ``weak_joints_2d`` is known (one named camera's 2D ground truth, put there by the dataset),
    it replaces the pseudo label with confidence 1."""

    weights: LossWeights = field(default_factory=LossWeights)
    use_extrinsics: bool = False
    weak_supervision: bool = False
    points: str = "mesh"
    distill_to: str = "fused"
    single_view_only: bool = False  # ablation: only the single-view branch's terms (no cross-view branch)
    # view masking in the cross-view branch: None keeps the network's keep probability (0.5; off = 1.0 in the
    # official code); with view_keep_anneal_steps > 0 it rises linearly from view_keep_prob to 1 over those steps
    view_keep_prob: float | None = None
    view_keep_anneal_steps: int = 0

    def keep_probability(self, step: int) -> float | None:
        """The view-masking keep probability at ``step`` (None: the network's own)."""
        if self.view_keep_prob is None:
            return None
        if self.view_keep_anneal_steps <= 0:
            return self.view_keep_prob
        u = min(1.0, max(0.0, step / self.view_keep_anneal_steps))
        return self.view_keep_prob + (1.0 - self.view_keep_prob) * u

    def __post_init__(self) -> None:
        if self.points not in POINTS:
            raise HamucoError(f"points must be one of {', '.join(POINTS)}, not {self.points!r}")
        if self.distill_to not in DISTILL_TARGETS:
            raise HamucoError(f"distill_to must be one of {', '.join(DISTILL_TARGETS)}, not {self.distill_to!r}")
        if self.view_keep_prob is not None and not 0.0 < self.view_keep_prob <= 1.0:
            raise HamucoError(f"view_keep_prob must be in (0, 1], not {self.view_keep_prob}")

    def labels(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(keypoints (B, V, 21, 2) crop pixels, confidence (B, V, 21)) the 2D losses use."""
        keypoints, conf = batch["keypoints"], batch["confidence"]
        if not self.weak_supervision:
            return keypoints, conf
        if "weak_joints_2d" not in batch:
            raise HamucoError("weak supervision needs batches with 'weak_joints_2d' (a dataset made with "
                              "weak_camera=...)")
        weak = batch["weak_joints_2d"]
        known = torch.isfinite(weak).all(-1)  # (B, V, 21)
        keypoints = torch.where(known[..., None], torch.nan_to_num(weak), keypoints)
        conf = torch.where(known, torch.ones_like(conf), conf)
        return keypoints, conf

    def __call__(self, model: torch.nn.Module, batch: dict, step: int) -> dict:
        images, mask = batch["images"], batch["view_mask"].bool()
        B, V = mask.shape
        keep = self.keep_probability(step)
        out = model(images, mask) if keep is None else model(images, mask, view_keep_prob=keep)
        size = images.shape[-1]
        keypoints, conf = self.labels(batch)
        labels = pixels_to_normalized(keypoints, size)
        single_uv = out.single.joints_2d.view(B, V, 21, 2)
        fused_uv = out.fused.joints_2d.view(B, V, 21, 2)
        single_pts = _points(out.single, B, V, self.points)
        inter_pts = _points(out.fused, B, V, self.points)
        rel_rot = None
        if self.use_extrinsics and bool(batch["extrinsics_known"].all()):
            R = batch["extrinsics"][..., :3].to(inter_pts.dtype)  # (B, V, 3, 3) world → camera
            rel_rot = R[:, :, None] @ R[:, None].transpose(-1, -2)  # R_v R_jᵀ: camera j → camera v
        alignment = align_views(inter_pts, mask, rel_rot)
        target = alignment.fused if self.distill_to == "fused" else inter_pts
        hand_model = model.module.hand_model if hasattr(model, "module") else model.hand_model
        mean_pose = hand_model.mean_pose
        valid = mask.reshape(-1)  # the priors act on the valid views' outputs (all of them in the official code)
        terms = {
            "joint_2d/single": joint_2d_loss(single_uv, labels, conf, mask),
            "joint_2d/interaction": joint_2d_loss(fused_uv, labels, conf, mask),
            "consistency": consistency_loss(inter_pts, mask, mode="xy" if step % 2 == 0 else "mean",
                                            alignment=alignment),
            "distillation": distillation_loss(single_pts, target, mask),
            "shape_prior/single": shape_prior(out.single.betas[valid]),
            "pose_prior/single": pose_prior(out.single.pose_axis_angle[valid, 3:], mean_pose),
            "pose_prior/interaction": pose_prior(out.fused.pose_axis_angle[valid, 3:], mean_pose),
        }
        if out.single.keypoints_2d is not None:
            terms["joint_2d/keypoints"] = joint_2d_loss(out.single.keypoints_2d.view(B, V, 21, 2), labels, conf, mask)
        if self.single_view_only:
            terms = {k: v for k, v in terms.items() if k.endswith(("/single", "/keypoints"))}
        terms["total"] = total_loss(terms, self.weights, step)
        return terms
