"""Crops (affine, flip, intrinsics) and MediaPipe detection with cross-view recovery."""
from dataclasses import replace

import numpy as np
import pytest

from pipeline.crop import apply_affine, crop_affine, crop_intrinsics, invert_affine, square_box, warp_crop
from pipeline.detect import DETECTED, INVALID, RECOVERED, MediaPipeHands, detect_frame, select_consistent
from pipeline.synthetic import DEMO_CONFIG, generate_capture


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    """The embedded demo capture's first frames (8 cameras, 256²)."""
    return generate_capture(tmp_path_factory.mktemp("det") / "cap", replace(DEMO_CONFIG, frames=2), progress=False)


def test_crop_affine_maps_box_onto_crop():
    box = np.array([40.0, 60.0, 140.0, 160.0])
    A = crop_affine(box, 256)
    edges = apply_affine(np.array([[40.0, 60.0], [140.0, 160.0]]), A)
    assert np.allclose(edges, [[-0.5, -0.5], [255.5, 255.5]])
    F = crop_affine(box, 256, flip=True)
    p = np.array([[50.0, 70.0]])
    assert np.allclose(apply_affine(p, F)[0, 0], 255 - apply_affine(p, A)[0, 0])
    assert np.allclose(apply_affine(apply_affine(p, F), invert_affine(F)), p)
    # the warp puts image content where the affine says
    img = np.zeros((200, 200, 3), np.uint8)
    img[100:104, 90:94] = 255
    crop = warp_crop(img, A, 256)
    ys, xs = np.nonzero(crop[..., 0] > 128)
    assert np.allclose([xs.mean(), ys.mean()], apply_affine(np.array([[91.5, 101.5]]), A)[0], atol=1.0)


def test_crop_intrinsics_project_into_the_crop(demo_like):
    cam = demo_like.cameras[3]
    X = demo_like.ground_truth.joints_world[0]
    uv, _ = cam.project(X)
    for flip in (False, True):
        A = crop_affine(square_box(uv), 256, flip)
        Kc = crop_intrinsics(cam.K, A)
        pc = (X @ cam.R.T + cam.t) @ Kc.T
        assert np.allclose(pc[:, :2] / pc[:, 2:], apply_affine(uv, A), atol=1e-6)
    assert np.isnan(crop_intrinsics(None, A)).all()


def test_detection_finds_the_hand(demo_like):
    with MediaPipeHands() as det:
        views = detect_frame(demo_like, 0, det)
    gt = demo_like.ground_truth.joints_2d[0]
    detected = [i for i, v in enumerate(views) if v.status == DETECTED]
    assert len(detected) >= 3
    inside = [np.all((gt[i] >= views[i].box[:2]) & (gt[i] <= views[i].box[2:]), axis=1).mean() for i in detected]
    assert min(inside) > 0.6 and np.mean(inside) > 0.9, inside  # detected boxes hold the true hand
    assert all(v.status in (DETECTED, RECOVERED) for v in views)  # calibrated: nothing lost


def test_recovered_views_land_on_the_true_hand(demo_like):
    with MediaPipeHands() as det:
        candidates = [det(demo_like.read_image(c, 0)) for c in range(demo_like.num_views)]
    found = [i for i, c in enumerate(candidates) if c]
    assert len(found) >= 4
    dropped = found[:2]  # pretend MediaPipe missed these views
    for i in dropped:
        candidates[i] = []
    views = select_consistent(demo_like, 0, candidates)
    gt = demo_like.ground_truth.joints_2d[0]
    for i in dropped:
        v = views[i]
        assert v.status == RECOVERED and "recovered by triangulation" in v.reason
        inside = np.all((gt[i] >= v.box[:2]) & (gt[i] <= v.box[2:]), axis=1)
        assert inside.all(), (i, v.box, gt[i].min(0), gt[i].max(0))
        gt_side = np.ptp(gt[i], axis=0).max()
        assert v.box[2] - v.box[0] < 3 * gt_side  # a tight box, not the whole image


def test_without_calibration_missing_views_are_invalid(demo_like):
    cap = replace(demo_like, cameras=[replace(c, R=None, t=None) for c in demo_like.cameras])
    candidates = [[] for _ in cap.cameras]
    views = select_consistent(cap, 0, candidates)
    assert all(v.status == INVALID and v.reason == "no hand found" for v in views)


def test_unusable_image_is_invalid_with_reason(demo_like, tmp_path):
    import shutil
    root = tmp_path / "broken"
    shutil.copytree(demo_like.root, root)
    from pipeline.capture import load_capture
    cap = load_capture(root)
    (root / "images" / "cam05" / "000000.png").write_bytes(b"\xff\xd8\xff garbage")
    with MediaPipeHands() as det:
        views = detect_frame(cap, 0, det)
    assert views[5].status == INVALID and "cam05" in views[5].reason and "unreadable" in views[5].reason


def test_the_hand_consistent_across_views_is_kept(demo_like):
    """A second, inconsistent 'hand' with a higher score loses to the one all views agree on."""
    from pipeline.detect import Hand
    with MediaPipeHands() as det:
        candidates = [det(demo_like.read_image(c, 0)) for c in range(demo_like.num_views)]
    found = [i for i, c in enumerate(candidates) if c]
    assert len(found) >= 4
    decoy_view = found[0]
    true = candidates[decoy_view][0]
    decoy = Hand(landmarks=true.landmarks + [60.0, 45.0], handedness=true.handedness, score=0.999)
    candidates[decoy_view] = [decoy, true]
    views = select_consistent(demo_like, 0, candidates)
    assert np.allclose(views[decoy_view].landmarks, true.landmarks)
    candidates[decoy_view] = [decoy]  # only the decoy: rejected, and the view recovered instead
    views = select_consistent(demo_like, 0, candidates)
    assert views[decoy_view].status == RECOVERED and "from the other views' hand" in views[decoy_view].reason


def test_left_hands_are_flipped(tmp_path):
    cap = generate_capture(tmp_path / "left", replace(DEMO_CONFIG, cameras=4, frames=1, seed=4, handedness="left"),
                           progress=False)
    with MediaPipeHands() as det:
        views = detect_frame(cap, 0, det)
    usable = [v for v in views if v.status != INVALID]
    assert usable and all(v.flipped for v in usable)
    A = crop_affine(usable[0].box, 256, usable[0].flipped)
    assert np.linalg.det(A[:, :2]) < 0  # the crop mirrors the image: a left hand shows as a right one
