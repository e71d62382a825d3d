"""Evaluation math (modes, frames, baselines) and inference with any number of views."""
import numpy as np
import pytest
import torch

from model.evaluation import (EvaluationRecords, camera_ground_truth, evaluate_records, fuse_reference, fuse_world,
                              unflip)
from model.geometry import axis_angle_to_matrix
from model.hamuco import HaMuCo
from model.inference import infer

SIZE = 64


def random_rotations(rng, n):
    return np.stack([axis_angle_to_matrix(rng.normal(size=3)) for _ in range(n)])


def hand_like(rng, n):
    """(n, 21, 3) joints in metres, spread like a hand."""
    return rng.normal(size=(n, 21, 3)) * 0.04 + np.array([0.0, 0.0, 0.6])


def chirality(joints):
    """Sign of the triple product of wrist→index MCP, wrist→pinky MCP and wrist→middle tip."""
    j = np.asarray(joints, np.float64)
    a, b, c = j[..., 5, :] - j[..., 0, :], j[..., 17, :] - j[..., 0, :], j[..., 12, :] - j[..., 0, :]
    return np.sign(np.einsum("...i,...i->...", np.cross(a, b), c))


def test_fusion_of_exact_camera_frame_views_is_the_world_hand():
    rng = np.random.default_rng(0)
    gt = hand_like(rng, 3)
    R = np.stack([random_rotations(rng, 5) for _ in range(3)])  # (3, 5, 3, 3)
    ext = np.concatenate([R, rng.normal(size=(3, 5, 3, 1))], axis=-1)
    cam = camera_ground_truth(gt, ext)  # (3, 5, 21, 3)
    mask = np.ones((3, 5), bool)
    mask[1, 2] = False
    fused = fuse_world(torch.from_numpy(cam), torch.from_numpy(R), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(fused, gt - gt[:, 9:10], atol=1e-9)
    # a wrong view (masked out) does not leak into the average
    cam[1, 2] += 1.0
    fused2 = fuse_world(torch.from_numpy(cam), torch.from_numpy(R), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(fused2, fused, atol=1e-9)


def test_reference_fusion_aligns_rotated_scaled_views_onto_the_reference():
    rng = np.random.default_rng(1)
    ref = hand_like(rng, 1)[0] - np.array([0, 0, 0.6])
    views = np.stack([s * ref @ R.T for s, R in zip([1.0, 0.8, 1.3, 1.1], random_rotations(rng, 4))])
    views[0] = ref
    out = fuse_reference(torch.from_numpy(views[None]), torch.ones(1, 4, dtype=torch.bool), 0)[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-9)
    out2 = fuse_reference(torch.from_numpy(views[None]), torch.ones(1, 4, dtype=torch.bool), 2)[0].numpy()
    np.testing.assert_allclose(out2, views[2], atol=1e-9)


def test_unflip_mirrors_only_flipped_views_and_reverses_chirality():
    rng = np.random.default_rng(2)
    j = torch.from_numpy(hand_like(rng, 2)[None])  # (1, 2, 21, 3)
    out = unflip(j, torch.tensor([[True, False]]))
    assert torch.equal(out[0, 1], j[0, 1])
    assert torch.equal(out[0, 0, :, 0], -j[0, 0, :, 0]) and torch.equal(out[0, 0, :, 1:], j[0, 0, :, 1:])
    assert chirality(out[0, 0].numpy()) == -chirality(j[0, 0].numpy())


def _records(rng, n=4, v=3, noise=0.0):
    gt = hand_like(rng, n)
    R = np.stack([random_rotations(rng, v) for _ in range(n)])
    ext = np.concatenate([R, rng.normal(size=(n, v, 3, 1))], axis=-1)
    cam = camera_ground_truth(gt, ext)
    gt2d = rng.uniform(0, SIZE, size=(n, v, 21, 2))
    preds = {"single": cam + rng.normal(size=cam.shape) * noise, "interaction": cam.copy(),
             "single_2d": gt2d + 3.0, "interaction_2d": gt2d.copy(),
             "fusion": gt - gt[:, 9:10], "reference": cam[:, 0]}
    return EvaluationRecords(view_mask=np.ones((n, v), bool), extrinsics=ext, gt_world=gt, gt_2d=gt2d,
                             keypoints=gt2d + np.array([3.0, 4.0]), confidence=np.ones((n, v, 21)), preds=preds,
                             baselines={"triangulation": gt + 0.01})


def test_metric_tables_for_exact_and_perturbed_predictions():
    rec = _records(np.random.default_rng(3), noise=0.005)
    m = evaluate_records(rec)
    for mode in ("interaction", "fusion"):
        assert m["modes"][mode]["mpjpe_mm"] < 1e-6 and m["modes"][mode]["pa_mpjpe_mm"] < 1e-6
        assert m["modes"][mode]["auc_0_50mm"] > 0.99
    assert m["modes"]["interaction"]["error_2d_px"] < 1e-9
    assert m["modes"]["single"]["error_2d_px"] == pytest.approx(3 * np.sqrt(2))
    assert 3 < m["modes"]["single"]["mpjpe_mm"] < 12  # 5 mm Gaussian per axis → ~8 mm per joint
    assert m["baselines"]["pseudo_labels"]["error_2d_px"] == pytest.approx(5.0)
    # a rigid offset of the whole hand: zero after root alignment
    assert m["baselines"]["triangulation"]["mpjpe_mm"] < 1e-6
    assert [r["view"] for r in m["per_view"]["single"]] == ["view0", "view1", "view2"]
    assert len(m["pck"]["single"]) == len(m["pck_thresholds_mm"]) == 101


def test_invalid_views_and_samples_without_ground_truth_are_left_out():
    rec = _records(np.random.default_rng(4))
    rec.view_mask[0, 1] = False
    rec.preds["interaction"][0, 1] += 5.0  # garbage in an invalid view
    rec.gt_world[2] = np.nan
    m = evaluate_records(rec)
    assert m["modes"]["interaction"]["mpjpe_mm"] < 1e-6
    assert m["modes"]["interaction"]["count"] == 4 * 3 - 1 - 3
    assert m["modes"]["fusion"]["count"] == 3


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return HaMuCo("resnet18", image_size=SIZE).eval()


@pytest.mark.parametrize("views", [1, 3, 8])
def test_inference_with_and_without_extrinsics(net, views):
    rng = np.random.default_rng(views)
    crops = rng.integers(0, 255, size=(views, SIZE, SIZE, 3), dtype=np.uint8)
    R = random_rotations(rng, views)
    ext = np.concatenate([R, rng.normal(size=(views, 3, 1))], axis=-1)
    world = infer(net, crops, extrinsics=ext)
    assert world.coordinate_frame == "world" and world.joints.shape == (21, 3) and world.view_joints.shape == (views, 21, 3)
    np.testing.assert_allclose(world.joints, np.mean(world.view_joints @ R, axis=0), atol=1e-5)
    assert world.pose.shape == (views, 16, 3) and world.shape.shape == (views, 10)
    ref = min(views - 1, 1)
    cam = infer(net, crops, reference_view=ref)
    assert cam.coordinate_frame == f"camera:{ref}"
    if views == 1:
        np.testing.assert_allclose(cam.joints, cam.view_joints[0], atol=1e-5)
    # the same views in another order (extrinsics along) give the same world hand
    perm = rng.permutation(views)
    again = infer(net, crops[perm], extrinsics=ext[perm])
    np.testing.assert_allclose(again.joints, world.joints, atol=1e-4)
    np.testing.assert_allclose(again.view_joints, world.view_joints[perm], atol=1e-4)
    # a masked view changes nothing about the others' fusion but is left out of it
    if views > 1:
        mask = np.ones(views, bool)
        mask[0] = False
        part = infer(net, crops, view_mask=mask, extrinsics=ext)
        np.testing.assert_allclose(part.joints, np.mean(part.view_joints[1:] @ R[1:], axis=0), atol=1e-5)
        with pytest.raises(Exception, match="reference view 0"):
            infer(net, crops, view_mask=mask, reference_view=0)


def test_flipped_left_hands_land_in_the_left_hand_frame(net):
    """A left hand is shown mirrored to the right-hand network and its result is mirrored back: the
    right-hand model's output for a pose, mirrored so, is exactly the left-hand model's hand (with
    the opposite chirality), and inference applies that mirroring to every output of flipped views."""
    from model.hand_model import HandModel, mirror_axis_angle

    g = torch.Generator().manual_seed(0)
    go, hp = torch.randn(1, 3, generator=g) * 0.5, torch.randn(1, 45, generator=g) * 0.4
    betas = torch.zeros(1, 10)
    right = HandModel()(go, hp, betas).joints[0]
    left = HandModel(side="left")(mirror_axis_angle(go), mirror_axis_angle(hp), betas).joints[0]
    flipped = unflip(right[None, None], torch.tensor([[True]]))[0, 0]
    assert torch.allclose(flipped, left, atol=1e-6)
    assert chirality(flipped.numpy()) == -chirality(right.numpy())

    rng = np.random.default_rng(7)
    crops = rng.integers(0, 255, size=(3, SIZE, SIZE, 3), dtype=np.uint8)
    R = random_rotations(rng, 3)
    ext = np.concatenate([R, np.zeros((3, 3, 1))], axis=-1)
    plain = infer(net, crops, extrinsics=ext)
    mirrored = infer(net, crops, flipped=np.array([True, False, True]), extrinsics=ext)
    m = np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(mirrored.view_joints[[0, 2]], plain.view_joints[[0, 2]] * m, atol=1e-6)
    np.testing.assert_allclose(mirrored.view_joints[1], plain.view_joints[1], atol=1e-6)
    np.testing.assert_allclose(mirrored.single_view_joints[0], plain.single_view_joints[0] * m, atol=1e-6)
    np.testing.assert_allclose(mirrored.joints, np.mean(mirrored.view_joints @ R, axis=0), atol=1e-5)


def test_wrong_crop_size_is_refused(net):
    with pytest.raises(Exception, match="64² crops"):
        infer(net, np.zeros((2, 32, 32, 3), np.uint8))


def test_every_sample_weighs_the_same_in_every_mode():
    """A frame seen by one view (error 30 mm) and a frame seen by three views (10 mm each): the per-view
    modes average the frames alike (20 mm), as the fused mode does; the plain per-view mean is 15 mm."""
    from model.evaluation import summarize_3d

    pa = np.array([[0.030, np.nan, np.nan], [0.010, 0.010, 0.010]])
    joint = np.repeat(pa[..., None], 21, axis=-1)
    t = summarize_3d({"mpjpe": pa, "nmpjpe": pa, "pa_mpjpe": pa, "pa_joint": joint})
    assert t["pa_mpjpe_mm"] == pytest.approx(20.0) and t["pa_mpjpe_per_view_mm"] == pytest.approx(15.0)
    assert t["count"] == 4 and t["samples"] == 2
    # PCK is 0 below 10 mm, 1/2 (one of two equally weighted frames) up to 30 mm, then 1:
    # AUC = (0.5 · 20 + 1 · 20) / 50 = 0.6 (the per-view weighting would give 0.75 · 20 + 20 → 0.7)
    assert t["auc_0_50mm"] == pytest.approx(0.6, abs=0.01)
    fused = summarize_3d({"mpjpe": pa[:, 0], "nmpjpe": pa[:, 0], "pa_mpjpe": pa[:, 0], "pa_joint": joint[:, 0]})
    assert fused["pa_mpjpe_mm"] == pytest.approx(20.0)
