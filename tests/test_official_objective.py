"""Every term of the HaMuCo objective against a plain, loop-based implementation of the official
formulas (zxz267/HaMuCo ``models/mvn.py`` and ``models/loss.py`` as described in REFERENCE.md),
written here independently in NumPy: one similarity transform per (sample, target view, source
view), one L1 mean per official ``nn.L1Loss`` call.

The network is replaced by fixed hand-model outputs (random poses, shapes and cameras decoded by
the real hand model), so the comparison pins the objective itself: which points, which target,
which stop-gradient, which weights, which iteration uses which form.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch import nn

from model.hamuco import HaMuCoOutput
from model.hand_model import HandModel
from model.losses import LossWeights
from model.objective import HaMuCoObjective
from model.rotations import matrix_to_rot6d
from model.single_view import MeshOutput, SingleViewOutput, decode_mesh

DT = torch.float64
TOL = 1e-5
S = 64  # crop size


# ------------------------------------------------------------------ the official formulas, plainly

def umeyama(src: np.ndarray, dst: np.ndarray, R: np.ndarray | None = None) -> np.ndarray:
    """src, dst (P, 3) → src mapped by the similarity (s, R, t) that best fits dst (R given or solved)."""
    mu1, mu2 = src.mean(0), dst.mean(0)
    X1, X2 = src - mu1, dst - mu2
    var1 = (X1 ** 2).sum()
    K = X1.T @ X2  # 3 × 3
    if R is None:
        U, _, Vt = np.linalg.svd(K)
        Z = np.eye(3)
        Z[2, 2] = np.sign(np.linalg.det(U @ Vt))
        R = Vt.T @ Z @ U.T
    scale = np.trace(R @ K) / var1
    t = mu2 - scale * R @ mu1
    return scale * src @ R.T + t


def official_consistency(points: np.ndarray, iteration: int, world_R: np.ndarray | None = None):
    """points (B, V, P, 3). Returns (loss, avg_fuse (B, V, P, 3))."""
    B, V = points.shape[:2]
    per_view, avg_fuse = [], np.zeros_like(points)
    for v in range(V):
        terms = []
        for b in range(B):
            aligned = []
            for j in range(V):
                R = None if world_R is None else world_R[b, v] @ world_R[b, j].T
                aligned.append(umeyama(points[b, j], points[b, v], R))
            aligned = np.stack(aligned)  # (V, P, 3)
            avg_fuse[b, v] = aligned.mean(0)
            if iteration % 2 == 0:
                terms.append(np.abs(aligned[..., :2] - points[b, v][None, :, :2]))
            else:
                terms.append(np.abs(avg_fuse[b, v] - points[b, v]))
        per_view.append(np.mean(terms))  # one L1Loss over the batch (equal sizes: mean of means)
    return float(np.mean(per_view)), avg_fuse


def official_terms(out: dict, labels: np.ndarray, conf: np.ndarray, hands_mean: np.ndarray, iteration: int,
                   world_R: np.ndarray | None = None) -> dict:
    """Every official loss term from plain arrays of one batch (B, V, ...)."""
    pts = {k: np.concatenate([out[k]["vertices"], out[k]["joints"]], axis=2) for k in ("single", "fused")}
    cons, avg_fuse = official_consistency(pts["fused"], iteration, world_R)
    c = conf[..., None]
    terms = {
        "joint_2d/single": np.mean(np.abs(out["single"]["uv"] * c - labels * c)),
        "joint_2d/interaction": np.mean(np.abs(out["fused"]["uv"] * c - labels * c)),
        "consistency": cons,
        "distillation": np.mean(np.abs(pts["single"] - avg_fuse)),
        "shape_prior/single": np.mean(np.abs(out["single"]["betas"])),
    }
    for branch, name in (("single", "pose_prior/single"), ("fused", "pose_prior/interaction")):
        rot = out[branch]["rotmats"]  # (B, V, 16, 3, 3)
        # the official θ is relative to MANO's mean pose (flat_hand_mean=False): θ = log(R) - mean
        theta = Rotation.from_matrix(rot[:, :, 1:].reshape(-1, 3, 3)).as_rotvec().reshape(rot.shape[:2] + (45,))
        terms[name] = np.mean(np.abs(theta - hands_mean))
    terms["total"] = (terms["joint_2d/single"] + terms["joint_2d/interaction"] + terms["consistency"]
                      + terms["distillation"] + terms["shape_prior/single"]
                      + 0.01 * (terms["pose_prior/single"] + terms["pose_prior/interaction"]))
    return terms


# ------------------------------------------------------------------ fixed network outputs

class FixedOutputs(nn.Module):
    """Stands in for the network: returns fixed outputs decoded by the real hand model."""

    def __init__(self, hand_model: HandModel, B: int, V: int, seed: int, consistent: float = 0.3,
                 world_R: torch.Tensor | None = None):
        super().__init__()
        self.hand_model = hand_model
        gen = torch.Generator().manual_seed(seed)
        mean = hand_model.mean_pose.view(15, 3)

        def decode(global_rot, local_noise, betas, cam):
            local = Rotation.from_rotvec((mean[None] + local_noise).reshape(-1, 3).numpy()).as_matrix()
            rot = torch.cat([global_rot[:, None], torch.as_tensor(local, dtype=DT).view(-1, 15, 3, 3)], 1)
            return decode_mesh(hand_model, matrix_to_rot6d(rot), betas, cam)

        n = B * V
        # one hand per group seen from V cameras, each view's pose perturbed (inconsistent views)
        base_local = torch.randn(B, 1, 15, 3, generator=gen, dtype=DT) * 0.3
        glob = torch.as_tensor(Rotation.random(n, random_state=seed).as_matrix(), dtype=DT)
        cams = torch.cat([1.5 + torch.rand(n, 1, generator=gen, dtype=DT),
                          0.1 * torch.randn(n, 2, generator=gen, dtype=DT)], 1)
        def noisy():
            return (base_local + consistent * torch.randn(B, V, 15, 3, generator=gen, dtype=DT) * 0.3).reshape(n, 15, 3)
        betas = torch.randn(n, 10, generator=gen, dtype=DT) * 0.5
        self.single = SingleViewOutput(**decode(glob, noisy(), betas, cams))
        if world_R is None:
            glob2 = torch.as_tensor(Rotation.random(n, random_state=seed + 1).as_matrix(), dtype=DT)
        else:  # each view sees the group's hand through its camera, up to a small error (about 15°)
            hand = torch.as_tensor(Rotation.random(B, random_state=seed + 1).as_matrix(), dtype=DT)
            err = torch.as_tensor(Rotation.from_rotvec(0.25 * torch.randn(n, 3, generator=gen, dtype=DT).numpy())
                                  .as_matrix(), dtype=DT)
            glob2 = (world_R @ hand[:, None]).reshape(n, 3, 3) @ err
        self.fused = MeshOutput(**decode(glob2, noisy(), betas, cams * 1.05))

    def forward(self, images, view_mask):
        return HaMuCoOutput(single=self.single, fused=self.fused, view_mask=view_mask)

    def arrays(self, B: int, V: int, keep: list[int] | None = None) -> dict:
        def grab(m):
            d = {"vertices": m.vertices, "joints": m.joints, "uv": m.joints_2d, "betas": m.betas, "rotmats": m.rotmats}
            d = {k: v.detach().numpy().reshape((B, V) + tuple(v.shape[1:])) for k, v in d.items()}
            return {k: v[:, keep] for k, v in d.items()} if keep is not None else d
        return {"single": grab(self.single), "fused": grab(self.fused)}


@pytest.fixture(scope="module")
def hand_model():
    hm = HandModel(dtype=DT)
    # a non-zero mean pose, as MANO's, so that the prior's centre is tested
    hm.mean_pose = torch.as_tensor(np.random.default_rng(0).normal(0, 0.15, 45), dtype=DT)
    return hm


def make_batch(B: int, V: int, seed: int, view_mask=None) -> dict:
    gen = torch.Generator().manual_seed(seed + 100)
    world_R = torch.as_tensor(Rotation.random(B * V, random_state=seed + 7).as_matrix(), dtype=DT).view(B, V, 3, 3)
    ext = torch.cat([world_R, torch.randn(B, V, 3, 1, generator=gen, dtype=DT)], -1)
    return {
        "images": torch.zeros(B, V, 3, S, S, dtype=DT),
        "keypoints": torch.rand(B, V, 21, 2, generator=gen, dtype=DT) * S,
        "confidence": torch.rand(B, V, 21, generator=gen, dtype=DT),
        "view_mask": torch.ones(B, V, dtype=torch.bool) if view_mask is None else view_mask,
        "extrinsics": ext,
        "extrinsics_known": torch.ones(B, V, dtype=torch.bool),
    }


def compare(ours: dict, official: dict) -> None:
    assert set(ours) == set(official)
    for name, value in official.items():
        assert abs(float(ours[name]) - value) <= TOL * max(1.0, abs(value)), (name, float(ours[name]), value)


@pytest.mark.parametrize("step", [0, 1, 6, 9])
@pytest.mark.parametrize("extrinsics", [False, True])
def test_every_term_equals_the_official_formula(hand_model, step, extrinsics):
    B, V = 2, 4
    batch = make_batch(B, V, seed=step)
    model = FixedOutputs(hand_model, B, V, seed=3 + step, world_R=batch["extrinsics"][..., :3])
    ours = HaMuCoObjective(LossWeights(), use_extrinsics=extrinsics)(model, batch, step)
    labels = batch["keypoints"].numpy() / (S / 2) - 1
    official = official_terms(model.arrays(B, V), labels, batch["confidence"].numpy(), hand_model.mean_pose.numpy(),
                              step, batch["extrinsics"][..., :3].numpy() if extrinsics else None)
    compare(ours, official)
    # the terms are not trivially small: the comparison means something
    assert official["consistency"] > 1e-3 and official["distillation"] > 1e-3


def test_masked_views_equal_the_official_formula_on_the_valid_views(hand_model):
    V = 6
    keep = [0, 2, 3, 5]
    mask = torch.zeros(1, V, dtype=torch.bool)
    mask[0, keep] = True
    batch = make_batch(1, V, seed=11, view_mask=mask)
    model = FixedOutputs(hand_model, 1, V, seed=11, world_R=batch["extrinsics"][..., :3])
    for step in (0, 1):
        ours = HaMuCoObjective(LossWeights(), use_extrinsics=True)(model, batch, step)
        labels = batch["keypoints"].numpy()[:, keep] / (S / 2) - 1
        official = official_terms(model.arrays(1, V, keep), labels, batch["confidence"].numpy()[:, keep],
                                  hand_model.mean_pose.numpy(), step, batch["extrinsics"][:, keep, :, :3].numpy())
        compare(ours, official)


def test_seed_shape_prior_weight_and_joint_only_points(hand_model):
    B, V = 2, 3
    model = FixedOutputs(hand_model, B, V, seed=5)
    batch = make_batch(B, V, seed=5)
    seed_w = HaMuCoObjective(LossWeights(gamma=100.0))(model, batch, 0)
    official = HaMuCoObjective(LossWeights())(model, batch, 0)
    assert abs(float(seed_w["total"] - official["total"]) - 99 * float(official["shape_prior/single"])) < TOL
    joints = HaMuCoObjective(points="joints")(model, batch, 1)
    arrays = model.arrays(B, V)
    cons, fuse = official_consistency(arrays["fused"]["joints"], 1)
    assert abs(float(joints["consistency"]) - cons) < TOL
    assert abs(float(joints["distillation"]) - np.mean(np.abs(arrays["single"]["joints"] - fuse))) < TOL
    own = HaMuCoObjective(distill_to="interaction")(model, batch, 1)
    pts = {k: np.concatenate([arrays[k]["vertices"], arrays[k]["joints"]], 2) for k in ("single", "fused")}
    assert abs(float(own["distillation"]) - np.mean(np.abs(pts["single"] - pts["fused"]))) < TOL


def test_stop_gradients_where_the_official_code_has_them(hand_model):
    """Distillation moves only the single-view branch; the consistency target (view v, and the fused
    mean) is detached, the alignment is not."""
    B, V = 1, 3
    model = FixedOutputs(hand_model, B, V, seed=8)
    from model.losses import align_views, consistency_loss, distillation_loss

    single = torch.cat([model.single.vertices, model.single.joints], 1).view(B, V, -1, 3).clone().requires_grad_()
    inter = torch.cat([model.fused.vertices, model.fused.joints], 1).view(B, V, -1, 3).clone().requires_grad_()
    al = align_views(inter)
    distillation_loss(single, al.fused).backward(retain_graph=True)
    assert inter.grad is None and single.grad.abs().sum() > 0
    # "mean" form: the gradient is sign(X_v - F_v) / n on each view's own points, nothing through F
    consistency_loss(inter, mode="mean", alignment=al).backward(retain_graph=True)
    n = inter[0].numel()
    expected = torch.sign(al.points - al.fused.detach()) / n
    assert torch.allclose(inter.grad, expected, atol=1e-12)
    # "xy" form: gradients reach the target view through the alignment only (not through |A - sg(X_v)|)
    inter.grad = None
    consistency_loss(inter, mode="xy", alignment=align_views(inter)).backward()
    assert inter.grad.abs().sum() > 0 and torch.isfinite(inter.grad).all()


def test_single_view_only_ablation_keeps_only_the_single_branch_terms(hand_model):
    """The 'single-view training only' ablation: the single branch's 2D and prior terms, with the same
    values as in the full objective, and nothing of the cross-view branch."""
    B, V = 2, 3
    model = FixedOutputs(hand_model, B, V, seed=9)
    batch = make_batch(B, V, seed=9)
    full = HaMuCoObjective(LossWeights(gamma=3.0))(model, batch, 0)
    only = HaMuCoObjective(LossWeights(gamma=3.0), single_view_only=True)(model, batch, 0)
    assert set(only) == {"joint_2d/single", "shape_prior/single", "pose_prior/single", "total"}
    for k in ("joint_2d/single", "shape_prior/single", "pose_prior/single"):
        assert float(only[k]) == pytest.approx(float(full[k]), abs=1e-12)
    expected = full["joint_2d/single"] + 3.0 * full["shape_prior/single"] + 0.01 * full["pose_prior/single"]
    assert float(only["total"]) == pytest.approx(float(expected), abs=1e-10)
    assert float(full["total"]) > float(only["total"])
