"""The synthetic generator's diversity settings: more poses, a wider prior, shapes and camera roll,
each deterministic for a seed, the defaults drawing what they drew before."""
import json

import numpy as np
import pytest

from model.errors import HamucoError
from model.hand_model import HandModel
from model.hand_pose import JOINT_LIMITS, HandPoseSpace
from pipeline.synthetic import SynthConfig, build_scene
from tasks.cli import main


@pytest.fixture(scope="module")
def space():
    import torch

    hand = HandModel(None, dtype=torch.float64)
    return HandPoseSpace(hand.rest_joints(torch.zeros(10, dtype=torch.float64)).numpy())


def scene(**kw):
    return build_scene(SynthConfig(cameras=3, frames=30, image_size=64, **kw))


def test_same_seed_same_scene_for_every_setting():
    kw = dict(seed=5, keyframe_every=1, pose_prior="wide", shape_sigma=1.5, roll_deg=90.0)
    a, b, c = scene(**kw), scene(**kw), scene(**{**kw, "seed": 6})
    for field in ("hand_pose", "global_orient", "betas", "joints"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert not np.allclose(getattr(a, field), getattr(c, field))
    assert all(np.array_equal(x.R, y.R) for x, y in zip(a.cameras, b.cameras))


def test_default_settings_draw_the_same_scene_as_spelling_them_out():
    a = scene(seed=3)
    b = scene(seed=3, keyframe_every=15, pose_prior="default", shape_sigma=0.8, roll_deg=8.0)
    np.testing.assert_array_equal(a.joints, b.joints)
    np.testing.assert_array_equal(a.betas, b.betas)


def frame_to_frame_change(s):
    return float(np.mean(np.abs(np.diff(s.hand_pose, axis=0))))


def test_keyframe_every_one_gives_an_independent_pose_per_frame():
    smooth = np.mean([frame_to_frame_change(scene(seed=s)) for s in range(3)])
    every = np.mean([frame_to_frame_change(scene(seed=s, keyframe_every=1)) for s in range(3)])
    assert every > 4 * smooth, (every, smooth)
    # distinct poses: with a key every frame, no two frames share their articulation
    s = scene(seed=0, keyframe_every=1)
    d = np.linalg.norm(s.hand_pose[:, None] - s.hand_pose[None], axis=-1) + np.eye(30) * 1e9
    assert d.min() > 0.05


def test_wide_prior_covers_more_of_the_joint_range(space):
    rng = np.random.default_rng(0)
    narrow, wide = space.sample(rng, 3000), space.sample_wide(rng, 3000)
    for poses in (narrow, wide):
        assert np.all(poses >= JOINT_LIMITS[:, 0] - 1e-12) and np.all(poses <= JOINT_LIMITS[:, 1] + 1e-12)
    # the wider prior spreads most angles further and reaches more of every angle's range
    assert np.sum(wide.std(0) > narrow.std(0)) >= 14
    span = JOINT_LIMITS[:, 1] - JOINT_LIMITS[:, 0]
    reach_w = (np.percentile(wide, 99, 0) - np.percentile(wide, 1, 0)) / span
    reach_n = (np.percentile(narrow, 99, 0) - np.percentile(narrow, 1, 0)) / span
    assert reach_w.mean() > reach_n.mean() + 0.1
    # pointing: the index straight while the other fingers curl, which the default prior's shared grasp rarely makes
    def pointing(p):
        return (p[:, 2] < 0.3) & (p[:, 6] > 1.0) & (p[:, 10] > 1.0) & (p[:, 14] > 1.0)
    assert pointing(wide).mean() > 0.05 and pointing(wide).mean() > 3 * pointing(narrow).mean()


def test_shape_and_roll_settings_spread_what_they_name():
    betas = np.stack([scene(seed=s, shape_sigma=0.0).betas for s in range(4)])
    assert np.all(betas == 0)
    wide = np.stack([scene(seed=s, shape_sigma=1.5).betas for s in range(4)])
    assert wide.std() > 0.8

    def rolls(s):
        # a camera's roll: the angle of its x axis against the horizontal plane (look_at keeps it level)
        return np.degrees([np.arcsin(np.clip(c.R[0, 2], -1, 1)) for c in s.cameras])
    small = np.concatenate([rolls(scene(seed=s)) for s in range(6)])
    big = np.concatenate([rolls(scene(seed=s, roll_deg=60.0)) for s in range(6)])
    assert np.abs(small).max() < 9 and np.abs(big).max() > 20


def test_travel_moves_the_hand_through_the_scene_and_keeps_it_in_view():
    still, moving = scene(seed=2), scene(seed=2, travel=0.06)
    # the same articulation, orientation, shape and camera poses: travel has its own random stream
    np.testing.assert_array_equal(still.hand_pose, moving.hand_pose)
    np.testing.assert_array_equal(still.betas, moving.betas)
    assert all(np.array_equal(a.R, b.R) for a, b in zip(still.cameras, moving.cameras))

    def spread(s):  # how far the hand's centre (middle MCP, joint 9) strays from its mean over the capture
        c = s.joints[:, 9]
        return float(np.linalg.norm(c - c.mean(0), axis=1).max())
    assert spread(still) < 0.03 and 0.04 < spread(moving) < 0.12, (spread(still), spread(moving))
    for cam in moving.cameras:  # the widened view keeps every joint inside every image
        uv, depth = cam.project(moving.joints.reshape(-1, 3))
        assert np.all(depth > 0) and np.all((uv >= 0) & (uv <= 63)), cam.name


@pytest.mark.parametrize("bad, message", [(dict(keyframe_every=0), "keyframe_every must be at least 1"),
                                          (dict(travel=0.5), "travel must be between 0 and 0.3"),
                                          (dict(travel=0.1, distance=0.3), "at most a quarter of the camera"),
                                          (dict(pose_prior="any"), "pose prior must be one of default, wide"),
                                          (dict(roll_deg=200.0), "roll_deg must be between 0 and 180")])
def test_bad_diversity_settings_are_refused(bad, message):
    with pytest.raises(HamucoError, match=message):
        SynthConfig(**bad).check()


def test_cli_writes_the_diversity_settings_into_the_capture(tmp_path, capsys):
    out = tmp_path / "wide"
    assert main(["synth", str(out), "--cameras", "2", "--frames", "2", "--image-size", "64", "--quiet",
                 "--keyframe-every", "1", "--pose-prior", "wide", "--shape-sigma", "1.2", "--roll-deg", "30"]) == 0
    config = json.loads((out / "capture.json").read_text())["metadata"]["config"]
    assert (config["keyframe_every"], config["pose_prior"], config["shape_sigma"], config["roll_deg"]) == \
        (1, "wide", 1.2, 30.0)
    assert main(["synth", str(tmp_path / "bad"), "--pose-prior", "wide", "--roll-deg", "181", "--quiet"]) == 2
    assert "roll_deg must be between 0 and 180" in capsys.readouterr().err
