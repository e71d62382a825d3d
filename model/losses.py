"""HaMuCo training losses (pure torch, vectorised over batch and views), as the official code.

All distances are L1 with mean reduction, as the official implementation (zxz267/HaMuCo,
``models/mvn.py`` and ``models/loss.py``).  Shapes: ``B`` groups, ``V`` views, ``J = 21`` joints,
``P`` points per view (the official 3D terms use the 778 mesh vertices followed by the 21 joints,
P = 799; joints only is an option of :class:`model.objective.HaMuCoObjective`).
``view_mask (B, V)`` marks valid views (bool or 0/1), an extension of the official code (where
every view of a group is valid): masked views neither contribute to nor receive any loss
(``torch.where``, so even non-finite values in masked views cannot leak into the loss or its
gradient), and with every view valid each term equals the official one.  Every loss returns a
scalar and is 0 (with finite, zero gradients) when nothing is valid.

Terms
-----
* ``joint_2d_loss`` (both branches): ``mean_{valid b,v; k; d} |c_bvk (P_bvkd - L_bvkd)|`` in
  normalised crop coordinates (official ``L1(uv * c, label * c)``).

* ``align_views`` / ``consistency_loss`` (interaction branch).  For every ordered pair of valid
  views (v, j) a similarity ``T_{j->v} = (s, R, t)`` maps view j's root-relative points onto view
  v's (Procrustes; with known extrinsics ``R = R_v R_j^T`` and only ``s, t`` are solved).
  ``A_vj = T_{j->v}(X_j)`` (``A_vv = X_v``), ``F_v = mean_{valid j} A_vj`` (``avg_fuse``: the
  multi-view result in view v's frame).  The official code alternates per iteration:

      even ("xy"):   mean_{valid v, j (j = v included)} mean_{p, d in {x,y}} |A_vj,pd - sg(X_v,pd)|
      odd ("mean"):  mean_{valid v} mean_{p, d} |X_v,pd - sg(F_v,pd)|

  ``sg`` = stop-gradient.  The transform itself is estimated without a stop-gradient (as the
  official code), so gradients reach both views of a pair through it.

* ``distillation_loss``: ``mean_{valid v} mean_{p,d} |S_v,pd - sg(F_v,pd)|``: the single-view
  points towards the fused result in the same view's frame (not towards the view's own
  interaction output).

* ``shape_prior``: ``mean |beta|``;  ``pose_prior``: ``mean |theta - theta_mean|`` over the 45
  axis-angle numbers of the non-root joints, ``theta_mean`` the hand model's mean pose (the
  official MANO layer has ``flat_hand_mean=False``, so its theta = 0 is the mean pose).

Weights (``LossWeights``)
-------------------------
Official: every term 1 except the pose prior, 0.01 (``alpha``, seed B.4) on both branches; the
shape prior has weight 1 in the official code (a ``* 100`` is commented out there), while the seed
says gamma = 100 without naming the term.  ``gamma`` is the shape-prior weight here: 1 as the
official code by default, 100 the seed's reading (measured against each other in RESULTS.md)::

    total = w_2d (L_2d,single + L_2d,interaction) + w_cons L_cons + w_distill L_distill
            + gamma L_shape + alpha (L_pose,single + L_pose,interaction)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.alignment import align_with_rotation, apply_similarity, similarity_procrustes

__all__ = [
    "ViewAlignment",
    "align_views",
    "joint_2d_loss",
    "consistency_loss",
    "distillation_loss",
    "shape_prior",
    "pose_prior",
    "LossWeights",
    "total_loss",
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


@dataclass
class ViewAlignment:
    """Every view of a group aligned onto every other (the official ``MultiViewConsistencyLoss``).

    ``points (B, V, P, 3)``: the predictions (masked views zeroed); ``aligned (B, V, V, P, 3)``:
    ``aligned[b, v, j]`` is view j mapped into view v's frame (``aligned[b, v, v]`` is view v itself);
    ``pairs (B, V, V)``: both views valid (the diagonal included); ``fused (B, V, P, 3)``: the mean of
    the valid aligned views, i.e. the multi-view result expressed in view v's frame (``avg_fuse``).
    """

    points: torch.Tensor
    aligned: torch.Tensor
    pairs: torch.Tensor
    view_mask: torch.Tensor
    fused: torch.Tensor


def align_views(points: torch.Tensor, view_mask: torch.Tensor | None = None,
                rel_rot: torch.Tensor | None = None, point_weights: torch.Tensor | None = None) -> ViewAlignment:
    """Align every view's root-relative points onto every view by a similarity transform.

    ``points (B, V, P, 3)``, each view in its camera frame (the official code uses the 778 mesh
    vertices and the 21 joints, P = 799). Without ``rel_rot`` the rotation comes from Procrustes;
    with ``rel_rot (B, V, V, 3, 3)`` (``rel_rot[b, v, j] = R_v R_jᵀ``, camera j → camera v) only
    scale and translation are solved. As in the official code the transform is estimated from both
    views without a stop-gradient (the losses detach their targets, not the alignment).
    """
    B, V, P, _ = points.shape
    m = _mask(view_mask, B, V, points.device)
    # masked views are replaced by zeros so that garbage (even NaN) cannot reach the SVD
    points = torch.where(m[..., None, None], points, torch.zeros_like(points))
    src = points[:, None].expand(B, V, V, P, 3)   # [b, v, j] = view j
    tgt = points[:, :, None].expand(B, V, V, P, 3)  # [b, v, j] = view v
    w = None if point_weights is None else point_weights[:, None].expand(B, V, V, P)
    if rel_rot is None:
        s, R, t = similarity_procrustes(src, tgt, w)
    else:
        R = rel_rot.to(points.dtype).expand(B, V, V, 3, 3)
        s, t = align_with_rotation(src, tgt, R, w)
    aligned = apply_similarity(src, s, R, t)
    diag = torch.eye(V, dtype=torch.bool, device=points.device)
    aligned = torch.where(diag[:, :, None, None], src, aligned)  # view v onto itself: exactly itself
    pairs = m[:, :, None] & m[:, None, :]
    n = pairs.sum(2).clamp(min=1).to(aligned.dtype)
    fused = torch.where(pairs[..., None, None], aligned, torch.zeros_like(aligned)).sum(2) / n[..., None, None]
    return ViewAlignment(points=points, aligned=aligned, pairs=pairs, view_mask=m, fused=fused)


def consistency_loss(points: torch.Tensor, view_mask: torch.Tensor | None = None,
                     rel_rot: torch.Tensor | None = None, mode: str = "xy",
                     alignment: ViewAlignment | None = None) -> torch.Tensor:
    """Multi-view consistency of ``points (B, V, P, 3)`` (see the module docstring).

    ``mode="xy"``: mean over valid (v, j) pairs, the self pair included at zero, of
    ``mean |aligned[v, j, :, :2] - sg(X_v[:, :2])|``; ``mode="mean"``: mean over valid views of
    ``mean |X_v - sg(fused_v)|``. ``alignment``: the result of :func:`align_views` for these
    points, if already computed.
    """
    if mode not in ("xy", "mean"):
        raise ValueError(f"mode must be 'xy' or 'mean', got {mode!r}")
    al = alignment if alignment is not None else align_views(points, view_mask, rel_rot)
    if mode == "xy":
        tgt = al.points.detach()[:, :, None, :, :2]                                # view v
        per_pair = (al.aligned[..., :2] - tgt).abs().mean((-1, -2))                # (B, V, V)
        per_pair = torch.where(al.pairs, per_pair, torch.zeros_like(per_pair))
        return _masked_mean(per_pair, al.pairs)
    per_view = (al.points - al.fused.detach()).abs().mean((-1, -2))               # (B, V)
    per_view = torch.where(al.view_mask, per_view, torch.zeros_like(per_view))
    return _masked_mean(per_view, al.view_mask)


def distillation_loss(single: torch.Tensor, fused: torch.Tensor,
                      view_mask: torch.Tensor | None = None) -> torch.Tensor:
    """L1 of the single-view points ``(B, V, P, 3)`` to the detached fused result ``(B, V, P, 3)``
    (the multi-view result in each view's frame, :attr:`ViewAlignment.fused`), averaged over the
    points and coordinates of the valid views."""
    B, V = single.shape[:2]
    m = _mask(view_mask, B, V, single.device)
    per_view = (single - fused.detach()).abs().mean((-1, -2))
    per_view = torch.where(m, per_view, torch.zeros_like(per_view))
    return _masked_mean(per_view, m)


def shape_prior(betas: torch.Tensor) -> torch.Tensor:
    """``mean |beta|`` (MANO shape -> mean shape).  betas ``(..., 10)``."""
    return betas.abs().mean()


def pose_prior(pose_axis_angle: torch.Tensor, mean_pose: torch.Tensor | None = None) -> torch.Tensor:
    """``mean |θ - θ_mean|`` over the 45 axis-angle numbers of the 15 non-root joints ``(..., 45)``.

    The official code puts L1(θ[3:], 0) on the parameters of a MANO layer built with
    ``flat_hand_mean=False``, whose θ = 0 is MANO's mean hand pose: the prior pulls towards the
    hand model's mean pose (``hands_mean``), not towards a flat hand.
    """
    if mean_pose is None:
        return pose_axis_angle.abs().mean()
    return (pose_axis_angle - mean_pose.to(pose_axis_angle)).abs().mean()


@dataclass(frozen=True)
class LossWeights:
    """Loss weights.  ``alpha`` multiplies the pose prior and ``gamma`` the shape prior (see the
    module docstring: 1 as the official code; the seed's 100 is an option)."""

    alpha: float = 0.01      # pose prior (seed B.4 and the official code)
    gamma: float = 1.0       # shape prior (official code 1; the seed's gamma = 100 is the other reading)
    joint_2d: float = 1.0
    consistency: float = 1.0
    distillation: float = 1.0
    # warm-up (0: off, the official code): consistency and distillation ramp linearly from 0 to their
    # weight over the first ``cross_view_warmup`` steps, after the 2D terms have placed the hand
    cross_view_warmup: int = 0

    def ramp(self, step: int) -> float:
        """The factor of the cross-view terms (consistency, distillation) at ``step``."""
        if self.cross_view_warmup <= 0:
            return 1.0
        return min(1.0, max(0.0, step / self.cross_view_warmup))

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


def total_loss(terms: dict, weights: LossWeights | None = None, step: int | None = None) -> torch.Tensor:
    """``sum_name weights.weight(name) * terms[name]``.  Term names: ``joint_2d``,
    ``consistency``, ``distillation``, ``shape_prior``, ``pose_prior``, optionally with a
    ``/suffix`` (e.g. ``joint_2d/single``, ``joint_2d/interaction``). With ``step``, the cross-view
    terms are scaled by the warm-up ramp :meth:`LossWeights.ramp`."""
    weights = weights or LossWeights()
    if not terms:
        raise ValueError("no loss terms given")
    ramp = weights.ramp(step) if step is not None else 1.0
    total = None
    for name, value in terms.items():
        v = weights.weight(name) * value
        if ramp != 1.0 and name.split("/", 1)[0] in ("consistency", "distillation"):
            v = ramp * v
        total = v if total is None else total + v
    return total
