"""HaMuCo training losses (pure torch, vectorised over batch and views).

All distances are L1, as in the official implementation.  Shapes: ``B`` samples,
``V`` views, ``J = 21`` joints.  ``view_mask (B, V)`` marks valid views (bool or
0/1); masked views neither contribute to nor receive any loss (``torch.where``
is used, so even non-finite values in masked views cannot leak into the loss or
its gradient).  Every loss returns a scalar tensor and is 0 (with finite, zero
gradients) when nothing is valid.

Terms
-----
* ``joint_2d_loss`` (confidence-weighted 2D, used for the single-view and the
  interaction outputs)::

      E = sum_{b,v,k,d} m_bv c_bvk |P_bvkd - L_bvkd|
      count:       L = E / (2 J sum_{b,v} m_bv)          (default; the mean of |P - L| c)
      confidence:  L = E / (2 max(sum_{b,v,k} m_bv c_bvk, eps))

* ``consistency_loss`` (multi-view consistency, root-relative 3D per camera
  frame).  For every ordered pair of valid views (v, j) a similarity
  ``T_{j->v} = (s, R, t)`` aligns view j's prediction onto (the detached) view v:
  ``R`` from weighted Procrustes (no extrinsics) or the known ``R_v R_j^T``
  (extrinsics; only ``s, t`` are solved).  ``A_{vj} = T_{j->v}(X_j)``.

      mode "xy":   L = mean_{valid v != j} mean_{k, d in {x,y}} |A_{vj,k,d} - sg(X_{v,k,d})|
      mode "mean": M_v = sg( mean_{valid j (incl. v)} A_{vj} )
                   L = mean_{valid v} mean_{k, d in {x,y,z}} |X_{v,k,d} - M_v,k,d|

  ``sg`` = stop-gradient.  The alignment is estimated with the target view
  detached; it stays differentiable w.r.t. the source view j.  The trainer
  alternates the two modes per iteration.  The loss is exactly 0 when all views
  are similarity transforms of one skeleton (with the true rotations when
  ``rel_rot`` is given).

* ``distillation_loss``: ``L = mean_{valid v} mean_{k,d} |S_{v,k,d} - sg(F_{v,k,d})|``
  where ``S`` is the single-view 3D prediction and ``F`` the fused (multi-view)
  result *expressed in the same view's frame*, i.e. the fused per-view output
  (the caller passes the fused average already mapped to every view; it is used
  as is, no further alignment).

* ``shape_prior``: ``L = mean |beta|``  (beta -> 0).
* ``pose_prior``: ``L = mean_{joints, 3x3 entries} |R - I|`` over the non-root
  joint rotation matrices (non-root pose -> identity, i.e. axis-angle -> 0; the
  L1 of the matrix to the identity is 0 iff every rotation is the identity).

Weights (``LossWeights``)
-------------------------
The seed (HaMuCo supplementary, B.4) sets ``alpha = 0.01`` and ``gamma = 100``.
``alpha`` multiplies the **pose prior** (it balances the MANO hand prior against
trust in the pseudo labels; the official code multiplies the pose prior by
0.01).  The seed does not say which term ``gamma`` multiplies; here ``gamma``
multiplies the **shape prior** (beta -> 0), i.e.

    total = w_2d * L_2d + w_cons * L_cons + w_distill * L_distill
            + gamma * L_shape + alpha * L_pose

with ``w_2d = w_cons = w_distill = 1`` by default.  This gamma placement is an
assumption of this module (not stated in the seed or REFERENCE); change
``LossWeights.shape_prior`` if another placement is established.

Weak supervision
----------------
``weak_supervision_confidence`` sets the confidence of one view (per sample) to
1: in the weakly supervised variant that view's 2D labels are the 2D ground
truth (the caller substitutes the labels), so they are fully trusted, while the
other views keep their pseudo-label confidences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.alignment import align_with_rotation, apply_similarity, similarity_procrustes

__all__ = [
    "joint_2d_loss",
    "consistency_loss",
    "distillation_loss",
    "shape_prior",
    "pose_prior",
    "LossWeights",
    "total_loss",
    "weak_supervision_confidence",
]

_EPS = 1e-8


def _mask(view_mask: torch.Tensor | None, B: int, V: int, device) -> torch.Tensor:
    if view_mask is None:
        return torch.ones(B, V, dtype=torch.bool, device=device)
    m = view_mask.to(device)
    if m.shape != (B, V):
        raise ValueError(f"view_mask must be ({B}, {V}), got {tuple(m.shape)}")
    return m.bool() if m.dtype == torch.bool else m > 0.5


def _masked_mean(per_item: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(per_item over mask) / max(count, 1); per_item and mask have the same shape."""
    vals = torch.where(mask, per_item, torch.zeros_like(per_item))
    return vals.sum() / mask.sum().clamp(min=1).to(per_item.dtype)


def joint_2d_loss(pred_uv: torch.Tensor, label_uv: torch.Tensor, confidence: torch.Tensor,
                  view_mask: torch.Tensor | None = None, normalize: str = "count") -> torch.Tensor:
    """Confidence-weighted L1 2D joint loss.

    ``E = sum m_bv c_bvk |pred - label|`` (over b, v, k and both coordinates);
    ``normalize="count"``: ``E / (2 J * #valid views)`` (the mean of ``|pred - label| c``
    over the valid views' entries, as the official code); ``normalize="confidence"``:
    ``E / (2 * max(sum m c, 1e-8))``.  All-zero confidences give 0 with zero gradients.

    Shapes: pred_uv, label_uv ``(B, V, J, 2)``; confidence ``(B, V, J)``; view_mask ``(B, V)``.
    """
    B, V, J, _ = pred_uv.shape
    m = _mask(view_mask, B, V, pred_uv.device)
    c = confidence.to(pred_uv.dtype)
    valid = m[:, :, None, None].expand_as(pred_uv)
    err = torch.where(valid, (pred_uv - label_uv).abs() * c[..., None], torch.zeros_like(pred_uv))
    E = err.sum()
    if normalize == "count":
        return E / (2 * J * m.sum().clamp(min=1)).to(pred_uv.dtype)
    if normalize == "confidence":
        csum = torch.where(m[..., None].expand_as(c), c, torch.zeros_like(c)).sum()
        return E / (2 * csum.clamp(min=_EPS))
    raise ValueError(f"normalize must be 'count' or 'confidence', got {normalize!r}")


def consistency_loss(joints: torch.Tensor, view_mask: torch.Tensor | None = None,
                     rel_rot: torch.Tensor | None = None, mode: str = "xy",
                     joint_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-view consistency loss (see module docstring for the formulas).

    Args:
        joints: ``(B, V, J, 3)`` root-relative 3D predictions, each in its camera frame.
        view_mask: ``(B, V)`` valid views.
        rel_rot: optional ``(B, V, V, 3, 3)``; ``rel_rot[b, v, j] = R_v R_j^T`` maps camera-j
            coordinates to camera-v coordinates (known extrinsics).  If None, the rotation
            is estimated by Procrustes.
        mode: ``"xy"`` or ``"mean"``.
        joint_weights: optional ``(B, V, J)`` per-joint weights for the Procrustes fit of
            source view j (default uniform).
    """
    if mode not in ("xy", "mean"):
        raise ValueError(f"mode must be 'xy' or 'mean', got {mode!r}")
    B, V, J, _ = joints.shape
    m = _mask(view_mask, B, V, joints.device)
    # masked views are replaced by zeros so that garbage (even NaN) cannot reach the SVD
    joints = torch.where(m[..., None, None], joints, torch.zeros_like(joints))
    src = joints[:, None].expand(B, V, V, J, 3)               # [b, v, j] = view j
    tgt = joints.detach()[:, :, None].expand(B, V, V, J, 3)   # [b, v, j] = view v (detached)
    w = None if joint_weights is None else joint_weights[:, None].expand(B, V, V, J)
    if rel_rot is None:
        s, R, t = similarity_procrustes(src, tgt, w)
    else:
        R = rel_rot.to(joints.dtype).expand(B, V, V, 3, 3)
        s, t = align_with_rotation(src, tgt, R, w)
    aligned = apply_similarity(src, s, R, t)                   # view j mapped into frame v
    diag = torch.eye(V, dtype=torch.bool, device=joints.device)
    aligned = torch.where(diag[:, :, None, None], src, aligned)  # view v onto itself: exact identity
    pair = m[:, :, None] & m[:, None, :]                       # (B, V, V)

    if mode == "xy":
        pair = pair & ~diag
        per_pair = (aligned[..., :2] - tgt[..., :2]).abs().mean((-1, -2))   # (B, V, V)
        per_pair = torch.where(pair, per_pair, torch.zeros_like(per_pair))
        return _masked_mean(per_pair, pair)

    # mode == "mean": detached mean of the aligned predictions (including view v itself)
    al = torch.where(pair[..., None, None], aligned.detach(), torch.zeros_like(aligned))
    n = pair.sum(2).clamp(min=1).to(joints.dtype)               # (B, V)
    target = al.sum(2) / n[..., None, None]                     # (B, V, J, 3)
    per_view = (joints - target).abs().mean((-1, -2))           # (B, V)
    per_view = torch.where(m, per_view, torch.zeros_like(per_view))
    return _masked_mean(per_view, m)


def distillation_loss(single: torch.Tensor, fused: torch.Tensor,
                      view_mask: torch.Tensor | None = None) -> torch.Tensor:
    """L1 of the single-view 3D ``(B, V, J, 3)`` to the detached fused per-view result
    ``(B, V, J, 3)`` (the fused average expressed in each view's frame), averaged over
    the joints/coordinates of the valid views."""
    B, V = single.shape[:2]
    m = _mask(view_mask, B, V, single.device)
    per_view = (single - fused.detach()).abs().mean((-1, -2))
    per_view = torch.where(m, per_view, torch.zeros_like(per_view))
    return _masked_mean(per_view, m)


def shape_prior(betas: torch.Tensor) -> torch.Tensor:
    """``mean |beta|`` (MANO shape -> mean shape).  betas ``(..., 10)``."""
    return betas.abs().mean()


def pose_prior(rotmats_nonroot: torch.Tensor) -> torch.Tensor:
    """``mean |R - I|`` over the entries of the non-root joint rotation matrices
    ``(..., 15, 3, 3)`` (non-root pose -> identity / zero axis-angle)."""
    eye = torch.eye(3, dtype=rotmats_nonroot.dtype, device=rotmats_nonroot.device)
    return (rotmats_nonroot - eye).abs().mean()


@dataclass(frozen=True)
class LossWeights:
    """Loss weights.  ``alpha`` multiplies the pose prior and ``gamma`` the shape prior
    (see the module docstring; the gamma placement is this module's assumption)."""

    alpha: float = 0.01      # pose prior (seed B.4; official code: pose prior * 0.01)
    gamma: float = 100.0     # shape prior (seed B.4 value; placement assumed)
    joint_2d: float = 1.0
    consistency: float = 1.0
    distillation: float = 1.0

    def weight(self, term: str) -> float:
        """Weight of a term name; a suffix after '/' is ignored ("joint_2d/interaction")."""
        base = term.split("/", 1)[0]
        table = {
            "joint_2d": self.joint_2d,
            "consistency": self.consistency,
            "distillation": self.distillation,
            "shape_prior": self.gamma,
            "pose_prior": self.alpha,
        }
        if base not in table:
            raise KeyError(f"unknown loss term {term!r}; known: {sorted(table)}")
        return table[base]


def total_loss(terms: dict, weights: LossWeights | None = None) -> torch.Tensor:
    """``sum_name weights.weight(name) * terms[name]``.  Term names: ``joint_2d``,
    ``consistency``, ``distillation``, ``shape_prior``, ``pose_prior``, optionally with a
    ``/suffix`` (e.g. ``joint_2d/single``, ``joint_2d/interaction``)."""
    weights = weights or LossWeights()
    if not terms:
        raise ValueError("no loss terms given")
    total = None
    for name, value in terms.items():
        v = weights.weight(name) * value
        total = v if total is None else total + v
    return total


def weak_supervision_confidence(confidence: torch.Tensor, view_index) -> torch.Tensor:
    """Return a copy of ``confidence (B, V, J)`` with view ``view_index`` set to 1.

    ``view_index`` is an int (same view for every sample) or a ``(B,)`` integer tensor
    (per sample, e.g. after the per-sample camera shuffle).  In the weakly supervised
    variant that view's labels are 2D ground truth, hence fully trusted.
    """
    B, V, _ = confidence.shape
    idx = torch.as_tensor(view_index, device=confidence.device, dtype=torch.long)
    idx = idx.expand(B) if idx.dim() == 0 else idx
    sel = torch.nn.functional.one_hot(idx, V).bool()[..., None]      # (B, V, 1)
    return torch.where(sel, torch.ones_like(confidence), confidence)

