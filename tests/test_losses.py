"""Fast tests for model.alignment and model.losses."""

import math

import pytest
import torch

from model.alignment import align_with_rotation, apply_similarity, similarity_procrustes
from model.losses import (
    LossWeights,
    consistency_loss,
    distillation_loss,
    joint_2d_loss,
    pose_prior,
    shape_prior,
    total_loss,
)

DT = torch.float64


def random_rotations(n, gen, dtype=DT):
    q = torch.randn(n, 4, generator=gen, dtype=dtype)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], -1).reshape(n, 3, 3)
    return R


def skeleton(gen, n=21, dtype=DT):
    return torch.randn(n, 3, generator=gen, dtype=dtype) * 0.05


def multiview(B=2, V=4, seed=0):
    """Views that are exact similarity transforms of one skeleton per sample."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.stack([skeleton(gen) for _ in range(B)])               # (B, J, 3)
    R = random_rotations(B * V, gen).reshape(B, V, 3, 3)
    s = 0.5 + torch.rand(B, V, generator=gen, dtype=DT)
    t = torch.randn(B, V, 3, generator=gen, dtype=DT) * 0.1
    joints = s[..., None, None] * torch.einsum("bvij,bnj->bvni", R, base) + t[:, :, None]
    rel = R[:, :, None] @ R[:, None].transpose(-1, -2)                 # [b,v,j] = R_v R_j^T
    return joints, rel


# ---------------------------------------------------------------- alignment

def test_procrustes_recovers_known_similarity():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(8, 21, 3, generator=gen, dtype=DT)
    R = random_rotations(8, gen)
    s = 0.2 + 2 * torch.rand(8, generator=gen, dtype=DT)
    t = torch.randn(8, 3, generator=gen, dtype=DT)
    Y = apply_similarity(X, s, R, t)
    s2, R2, t2 = similarity_procrustes(X, Y)
    assert (s2 - s).abs().max() < 1e-5
    assert (R2 - R).abs().max() < 1e-5
    assert (t2 - t).abs().max() < 1e-5
    assert torch.allclose(torch.linalg.det(R2), torch.ones(8, dtype=DT))
    # float32 path keeps the dtype and is accurate too
    s3, R3, t3 = similarity_procrustes(X.float(), Y.float())
    assert R3.dtype == torch.float32 and (R3 - R.float()).abs().max() < 1e-4


def test_procrustes_reflection_gives_proper_rotation():
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(21, 3, generator=gen, dtype=DT)
    Y = X * torch.tensor([1.0, 1.0, -1.0], dtype=DT)        # mirror image: best orthogonal map is a reflection
    s, R, t = similarity_procrustes(X, Y)
    assert abs(torch.linalg.det(R).item() - 1.0) < 1e-9
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=DT), atol=1e-9)
    assert s.item() > 0
    # nearly planar mirrored set
    Xp = X * torch.tensor([1.0, 1.0, 1e-3], dtype=DT)
    s, R, t = similarity_procrustes(Xp, Xp * torch.tensor([1.0, -1.0, 1.0], dtype=DT))
    assert abs(torch.linalg.det(R).item() - 1.0) < 1e-9


def test_weighted_procrustes_ignores_zero_weight_outliers():
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(21, 3, generator=gen, dtype=DT)
    R = random_rotations(1, gen)[0]
    Y = apply_similarity(X, torch.tensor(1.7, dtype=DT), R, torch.tensor([0.1, -0.2, 0.3], dtype=DT))
    w = torch.ones(21, dtype=DT)
    w[:5] = 0
    Y_out = Y.clone()
    Y_out[:5] += 10 * torch.randn(5, 3, generator=gen, dtype=DT)
    ref = similarity_procrustes(X[5:], Y[5:])
    got = similarity_procrustes(X, Y_out, w)
    for a, b in zip(ref, got):
        assert (a - b).abs().max() < 1e-9
    assert (got[1] - R).abs().max() < 1e-9


def test_align_with_rotation_recovers_scale_translation():
    gen = torch.Generator().manual_seed(4)
    X = torch.randn(5, 21, 3, generator=gen, dtype=DT)
    R = random_rotations(5, gen)
    s = 0.5 + torch.rand(5, generator=gen, dtype=DT)
    t = torch.randn(5, 3, generator=gen, dtype=DT)
    s2, t2 = align_with_rotation(X, apply_similarity(X, s, R, t), R)
    assert (s2 - s).abs().max() < 1e-9 and (t2 - t).abs().max() < 1e-9


def test_degenerate_alignment_is_finite():
    X = torch.zeros(2, 21, 3, dtype=DT, requires_grad=True)     # coincident points
    Y = torch.randn(2, 21, 3, dtype=DT, requires_grad=True)
    w = torch.zeros(2, 21, dtype=DT)
    for weights in (None, w):
        s, R, t = similarity_procrustes(X, Y, weights)
        assert torch.allclose(R, torch.eye(3, dtype=DT).expand(2, 3, 3))
        assert torch.all(s == 1)
        (s.sum() + R.sum() + t.sum()).backward()
        assert torch.isfinite(X.grad).all() and torch.isfinite(Y.grad).all()
        X.grad = None
        Y.grad = None
    s, R, t = similarity_procrustes(X, Y, w)
    assert torch.all(t == 0)
    s, t = align_with_rotation(X, Y, torch.eye(3, dtype=DT), w)
    assert torch.all(s == 1) and torch.all(t == 0)
    # collinear points (two zero singular values): finite gradient
    line = torch.linspace(0, 1, 21, dtype=DT)[:, None] * torch.tensor([1.0, 2.0, 3.0], dtype=DT)
    Xl = line.clone().requires_grad_()
    s, R, t = similarity_procrustes(Xl, line * 2 + 1)
    apply_similarity(Xl, s, R, t).sum().backward()
    assert torch.isfinite(Xl.grad).all()


# ---------------------------------------------------------------- consistency

@pytest.mark.parametrize("mode", ["xy", "mean"])
@pytest.mark.parametrize("known", [False, True])
def test_consistency_zero_for_similar_views(mode, known):
    joints, rel = multiview()
    mask = torch.ones(2, 4, dtype=torch.bool)
    loss = consistency_loss(joints, mask, rel_rot=rel if known else None, mode=mode)
    assert loss.item() < 1e-6


@pytest.mark.parametrize("mode", ["xy", "mean"])
@pytest.mark.parametrize("known", [False, True])
def test_consistency_grows_with_perturbation(mode, known):
    joints, rel = multiview()
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(2, 21, 3, generator=gen, dtype=DT) * 0.01
    losses = []
    for eps in [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]:
        j = joints.clone()
        j[:, 1] += eps * noise
        losses.append(consistency_loss(j, None, rel_rot=rel if known else None, mode=mode).item())
    assert losses[0] < 1e-6
    assert all(b > a for a, b in zip(losses, losses[1:])), losses


@pytest.mark.parametrize("mode", ["xy", "mean"])
@pytest.mark.parametrize("known", [False, True])
def test_consistency_ignores_masked_views(mode, known):
    joints, rel = multiview(seed=6)
    mask = torch.tensor([[True, True, False, True], [True, False, True, True]])
    gen = torch.Generator().manual_seed(7)
    base = joints.clone()
    base[:, 0] += 0.003 * torch.randn(2, 21, 3, generator=gen, dtype=DT)   # non-zero loss
    rr = rel if known else None
    ref = consistency_loss(base, mask, rr, mode)
    pert = base.clone()
    pert[0, 2] += torch.randn(21, 3, generator=gen, dtype=DT)
    pert[1, 1] = float("nan")
    pert.requires_grad_()
    got = consistency_loss(pert, mask, rr, mode)
    assert ref.item() > 1e-5
    assert abs(got.item() - ref.item()) < 1e-12
    got.backward()
    assert torch.isfinite(pert.grad).all()
    assert torch.all(pert.grad[0, 2] == 0) and torch.all(pert.grad[1, 1] == 0)


@pytest.mark.parametrize("mode", ["xy", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_consistency_gradients_finite_in_degenerate_cases(mode, dtype):
    joints, rel = multiview()
    joints = joints.to(dtype)
    # single valid view
    j = joints.clone().requires_grad_()
    mask = torch.tensor([[True, False, False, False], [False, False, True, False]])
    loss = consistency_loss(j, mask, mode=mode)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(j.grad).all()
    # coincident points (all joints at the root) in some views
    j = joints.clone()
    j[0, 1] = 0
    j[1] = 0
    j.requires_grad_()
    for rr in (None, rel.to(dtype)):
        j.grad = None
        loss = consistency_loss(j, None, rr, mode)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(j.grad).all()
    # no valid view at all
    j = joints.clone().requires_grad_()
    loss = consistency_loss(j, torch.zeros(2, 4, dtype=torch.bool), mode=mode)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(j.grad).all()


def test_consistency_gradient_reaches_views():
    joints, _ = multiview()
    gen = torch.Generator().manual_seed(8)
    j = (joints + 0.002 * torch.randn(joints.shape, generator=gen, dtype=DT)).requires_grad_()
    for mode in ("xy", "mean"):
        j.grad = None
        consistency_loss(j, None, mode=mode).backward()
        assert j.grad.abs().sum() > 0 and torch.isfinite(j.grad).all()


# ---------------------------------------------------------------- 2D, distillation, priors

def test_joint_2d_loss_hand_computation():
    pred = torch.zeros(1, 2, 21, 2, dtype=DT)
    label = torch.zeros(1, 2, 21, 2, dtype=DT)
    conf = torch.zeros(1, 2, 21, dtype=DT)
    pred[0, 0, 0] = torch.tensor([1.0, 2.0], dtype=DT)    # |d| = 1, 2
    conf[0, 0, 0] = 0.5
    pred[0, 0, 3] = torch.tensor([-4.0, 0.0], dtype=DT)   # |d| = 4, 0
    conf[0, 0, 3] = 1.0
    pred[0, 1, 5] = torch.tensor([100.0, 100.0], dtype=DT)  # masked view
    conf[0, 1, 5] = 1.0
    mask = torch.tensor([[True, False]])
    E = 0.5 * (1 + 2) + 1.0 * (4 + 0)                      # 5.5
    got = joint_2d_loss(pred, label, conf, mask)
    assert math.isclose(got.item(), E / (2 * 21 * 1), rel_tol=1e-12)
    got = joint_2d_loss(pred, label, conf, mask, normalize="confidence")
    assert math.isclose(got.item(), E / (2 * 1.5), rel_tol=1e-12)
    got = joint_2d_loss(pred, label, conf, None)
    assert math.isclose(got.item(), (E + 200) / (2 * 21 * 2), rel_tol=1e-12)


@pytest.mark.parametrize("normalize", ["count", "confidence"])
def test_joint_2d_loss_zero_confidence_is_safe(normalize):
    pred = torch.randn(2, 3, 21, 2, requires_grad=True)
    label = torch.randn(2, 3, 21, 2)
    conf = torch.zeros(2, 3, 21)
    loss = joint_2d_loss(pred, label, conf, torch.ones(2, 3), normalize=normalize)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(pred.grad).all() and torch.all(pred.grad == 0)


def test_distillation_loss():
    gen = torch.Generator().manual_seed(9)
    single = torch.randn(2, 3, 21, 3, generator=gen, dtype=DT, requires_grad=True)
    fused = torch.randn(2, 3, 21, 3, generator=gen, dtype=DT, requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss = distillation_loss(single, fused, mask)
    expect = (single - fused).abs().mean((-1, -2))[mask].mean()
    assert math.isclose(loss.item(), expect.item(), rel_tol=1e-12)
    loss.backward()
    assert fused.grad is None or torch.all(fused.grad == 0)
    assert torch.all(single.grad[0, 2] == 0)
    assert distillation_loss(fused, fused, mask).item() == 0


def test_priors_zero_at_the_mean():
    assert shape_prior(torch.zeros(4, 10)).item() == 0
    assert shape_prior(torch.ones(4, 10)).item() > 0
    mean = torch.linspace(-0.3, 0.4, 45)
    assert pose_prior(mean.expand(4, 45), mean).item() == 0
    assert pose_prior(torch.zeros(4, 45), mean).item() > 0  # a flat hand is not MANO's mean pose
    assert pose_prior(torch.zeros(4, 45)).item() == 0


def test_loss_weights_and_total():
    w = LossWeights()
    assert w.alpha == 0.01 and w.gamma == 1.0  # the official code's weights
    w = LossWeights(gamma=100.0)
    assert w.weight("pose_prior") == 0.01 and w.weight("shape_prior") == 100.0
    terms = {
        "joint_2d/single": torch.tensor(1.0),
        "joint_2d/interaction": torch.tensor(2.0),
        "consistency": torch.tensor(3.0),
        "distillation": torch.tensor(4.0),
        "shape_prior": torch.tensor(0.5),
        "pose_prior": torch.tensor(10.0),
    }
    assert math.isclose(total_loss(terms, w).item(), 1 + 2 + 3 + 4 + 50 + 0.1, rel_tol=1e-6)
    with pytest.raises(KeyError):
        total_loss({"bogus": torch.tensor(1.0)}, w)
