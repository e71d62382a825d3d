"""Synthetic captures: deterministic, consistent ground truth, projections on the rendered hand."""
import hashlib

import cv2
import numpy as np
import pytest
import torch

from model.hand_model import MIRROR, OPENPOSE_PARENTS, HandModel, mirror_axis_angle
from pipeline.capture import load_capture
from pipeline.render import LABEL_HAND, LABEL_OCCLUDER
from pipeline.synthetic import SynthConfig, generate_capture
from pipeline.validate import validate_capture
from tasks.cli import main

from .conftest import SMALL


def digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "capture.json"):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_capture(small_capture, tmp_path):
    again = generate_capture(tmp_path / "again", SMALL, progress=False, workers=2)  # other worker count
    assert digest(again.root) == digest(small_capture.root)
    other = generate_capture(tmp_path / "other", SynthConfig(**{**SMALL.__dict__, "seed": 8}), progress=False)
    assert digest(other.root) != digest(small_capture.root)


def skeleton_mask(j2d, shape, thickness):
    canvas = np.zeros(shape, np.uint8)
    for j, p in enumerate(OPENPOSE_PARENTS):
        if p >= 0:
            cv2.line(canvas, tuple(np.round(j2d[j]).astype(int)), tuple(np.round(j2d[p]).astype(int)), 1, thickness)
    return canvas.astype(bool)


def test_projections_match_rendered_hand(small_capture):
    cap = load_capture(small_capture.root)
    gt = cap.ground_truth
    inside, overlap, shifted = [], [], []
    for f in range(cap.num_frames):
        for v, cam in enumerate(cap.cameras):
            mask = cv2.imread(str(cap.mask_path(v, f)), cv2.IMREAD_UNCHANGED)
            hand = cv2.dilate((mask == LABEL_HAND).astype(np.uint8), np.ones((3, 3))).astype(bool)
            j2d = gt.joints_2d[f, v]
            assert np.allclose(j2d, cam.project(gt.joints_world[f])[0])  # stored = projected
            vis = gt.visibility[f, v]
            px = np.round(j2d[vis]).astype(int)
            inside.extend(hand[px[:, 1], px[:, 0]])
            bones = skeleton_mask(j2d, mask.shape, 3)
            overlap.append((bones & hand).sum() / bones.sum())
            moved = skeleton_mask(j2d + [25, -20], mask.shape, 3)
            shifted.append((moved & hand).sum() / max(moved.sum(), 1))
    assert np.mean(inside) > 0.97  # visible joints land on the rendered hand
    assert np.mean(overlap) > 0.85  # the skeleton lies on the hand ...
    assert np.mean(shifted) < 0.5 * np.mean(overlap)  # ... and a displaced one does not


def test_hand_inside_every_view_with_margin(small_capture):
    cap = load_capture(small_capture.root)
    j2d = cap.ground_truth.joints_2d
    size = np.array([cap.cameras[0].width, cap.cameras[0].height])
    margin = np.minimum(j2d.min(axis=2), size - 1 - j2d.max(axis=2)).min(axis=-1)
    extent = (j2d.max(axis=2) - j2d.min(axis=2)).max(axis=-1)
    assert margin.min() >= 0.04 * size[0]  # no joint outside or at the border
    assert 0.3 * size[0] < np.median(extent) < 0.8 * size[0]  # the hand fills a good part of the view


def test_unwritable_output_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["synth", str(blocker / "sub"), "--cameras", "1", "--frames", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and str(blocker) in err and "Traceback" not in err


def test_ground_truth_parameters_reproduce_joints(small_capture):
    gt = load_capture(small_capture.root).ground_truth
    model = HandModel(dtype=torch.float64)
    pose = torch.as_tensor(gt.hand_pose)
    out = model(pose[:, :3], pose[:, 3:], torch.as_tensor(gt.betas)[None].expand(len(pose), -1),
                torch.as_tensor(gt.transl))
    assert np.allclose(out.joints.numpy(), gt.joints_world, atol=1e-9)
    assert gt.hand_model == "procedural"
    assert 0.2 < gt.visibility.mean() < 1.0  # some joints are self-occluded, most are not


def test_left_hand_capture(tmp_path):
    cfg = SynthConfig(cameras=3, frames=2, seed=3, image_size=128, handedness="left")
    cap = generate_capture(tmp_path / "left", cfg, progress=False)
    gt = cap.ground_truth
    assert cap.handedness == "left" and validate_capture(cap.root).ok
    model = HandModel(side="left", dtype=torch.float64)
    pose = torch.as_tensor(gt.hand_pose)
    out = model(pose[:, :3], pose[:, 3:], torch.as_tensor(gt.betas)[None].expand(2, -1), torch.as_tensor(gt.transl))
    assert np.allclose(out.joints.numpy(), gt.joints_world, atol=1e-9)
    # the capture's left hand is the mirror image of a right hand with mirrored parameters
    right = HandModel(dtype=torch.float64)
    mirrored = right(mirror_axis_angle(pose[:, :3]), mirror_axis_angle(pose[:, 3:]),
                     torch.as_tensor(gt.betas)[None].expand(2, -1), torch.as_tensor(gt.transl * MIRROR))
    assert np.allclose(mirrored.joints.numpy() * MIRROR, gt.joints_world, atol=1e-6)


def test_occluders_hide_joints(tmp_path):
    cfg = SynthConfig(cameras=6, frames=2, seed=5, image_size=128, occluders=3)
    cap = generate_capture(tmp_path / "occ", cfg, progress=False)
    gt = cap.ground_truth
    hidden = 0
    for f in range(2):
        for v in range(6):
            mask = cv2.imread(str(cap.mask_path(v, f)), cv2.IMREAD_UNCHANGED)
            px = np.clip(np.round(gt.joints_2d[f, v]).astype(int), 0, 127)
            on_occluder = mask[px[:, 1], px[:, 0]] == LABEL_OCCLUDER
            assert not np.any(gt.visibility[f, v] & on_occluder)  # a joint behind an occluder is not visible
            hidden += on_occluder.sum()
    assert (cv2.imread(str(cap.mask_path(0, 0)), cv2.IMREAD_UNCHANGED) >= 0).all()
    assert hidden > 0  # the occluders do cover some joints


def test_cli_synth_help_and_errors(tmp_path, capsys):
    for cmd in (["--help"], ["synth", "--help"], ["validate", "--help"], ["prepare-mano", "--help"],
                ["demo", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(cmd)
        assert exc.value.code == 0
    capsys.readouterr()
    out = tmp_path / "c"
    assert main(["synth", str(out), "--cameras", "2", "--frames", "1", "--image-size", "96", "--quiet"]) == 0
    assert "cameras          2" in capsys.readouterr().out
    assert main(["synth", str(out), "--cameras", "2", "--frames", "1", "--quiet"]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # refused by the option's type, before anything runs
        main(["synth", str(tmp_path / "d"), "--cameras", "0", "--quiet"])
    assert exc.value.code == 2 and "--cameras: must be at least 1, got 0" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "d"), "--cameras", "65", "--quiet"]) == 2
    assert "cameras must be between 1 and 64" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "e"), "--hand-model", str(tmp_path / "no.npz"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "hand-model file not found" in err and "Traceback" not in err
    assert not (tmp_path / "e").exists()
