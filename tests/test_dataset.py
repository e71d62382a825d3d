"""The torch Dataset over shards: items, masks, documented skips, augmentation geometry, workers."""
import json
from dataclasses import replace
from pathlib import Path

import luigi
import numpy as np
import pytest
import torch

from model.errors import HamucoError
from pipeline.dataset import Augmentation, ShardDataset
from pipeline.shards import ShardReader, ShardWriter
from pipeline.synthetic import DEMO_CONFIG, generate_capture
from tasks.prepare import PrepareDataset


@pytest.fixture(scope="module")
def index_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    cap = generate_capture(root / "cap", replace(DEMO_CONFIG, cameras=4, frames=6, seed=12), progress=False)
    task = PrepareDataset(captures=[str(cap.root)], out=str(root / "out"), frames_per_shard=2)
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    return task.output().path


def test_items_have_model_ready_shapes(index_path):
    ds = ShardDataset(index_path, split="train")
    assert len(ds) == 2  # 3 shards of 2 frames: train 1, val 1, test 1
    item = ds[0]
    assert item["images"].shape == (4, 3, 256, 256) and item["images"].dtype == torch.float32
    assert item["keypoints"].shape == (4, 21, 2) and item["confidence"].shape == (4, 21)
    assert item["view_mask"].dtype == torch.bool
    assert not [k for k in item if "gt" in k or "weak" in k]  # no ground truth in a training item
    assert ShardDataset(index_path, split="train", ground_truth=True)[0]["gt_joints_world"].shape == (21, 3)
    assert abs(float(item["images"].mean())) < 2.0  # normalised
    index = json.loads(Path(index_path).read_text())
    raw = ShardDataset(index_path, split="train", confidence="raw")[0]["confidence"]
    with ShardReader(index["split"]["train"][0]) as r:
        assert torch.allclose(raw, torch.from_numpy(r[0].confidence))
        assert torch.allclose(item["confidence"], torch.from_numpy(r[0].refined_confidence))
    with pytest.raises(HamucoError, match="confidence must be"):
        ShardDataset(index_path, confidence="best")


def test_augmentation_keeps_labels_and_geometry_consistent(index_path):
    ds = ShardDataset(index_path, split="train", augmentation=Augmentation(rotation_deg=10), ground_truth=True)
    item = ds[1]
    order = item["view_order"].numpy()
    assert sorted(order) == [0, 1, 2, 3]
    X = item["gt_joints_world"].numpy().astype(np.float64)
    for v in range(4):
        if not item["view_mask"][v]:
            continue
        E = item["extrinsics"][v].numpy().astype(np.float64)
        K = item["crop_K"][v].numpy().astype(np.float64)
        p = (X @ E[:, :3].T + E[:, 3]) @ K.T
        assert np.allclose(p[:, :2] / p[:, 2:], item["gt_joints_2d"][v].numpy(), atol=0.05)
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["images"], item["images"])  # a new draw each epoch
    ds.set_epoch(0)
    assert torch.equal(ds[1]["images"], item["images"])  # deterministic for (seed, epoch, index)


def test_all_invalid_samples_are_skipped_and_nan_labels_zeroed(index_path, tmp_path):
    index = json.loads(Path(index_path).read_text())
    with ShardReader(index["split"]["train"][0]) as r:
        samples = [r[i] for i in range(len(r))]
        names, size, attrs = r.camera_names, r.crop_size, {k: r.attrs[k] for k in
                                                          ("labeler", "source_capture", "capture_hash", "handedness")}
    bad = replace(samples[0], view_valid=np.zeros(4, bool))
    nan = replace(samples[1], keypoints=samples[1].keypoints.copy())
    nan.keypoints[0, 3] = np.nan
    path = tmp_path / "shard.h5"
    with ShardWriter(path, names, size, attrs) as w:
        w.add(bad)
        w.add(nan)
    ds = ShardDataset([path])
    assert len(ds) == 1 and ds.skipped_samples == 1
    item = ds[0]
    pos = int(np.nonzero(item["view_order"].numpy() == 0)[0][0])
    assert item["confidence"][pos, 3] == 0 and torch.isfinite(item["keypoints"]).all()
    assert ds.nan_labels == 1


def test_dataloader_workers_read_their_own_handles(index_path):
    ds = ShardDataset(index_path, split="train", augmentation=Augmentation())
    single = [ds[i] for i in range(len(ds))]
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, shuffle=False)
    for a, b in zip(single, loader):
        assert torch.equal(a["images"], b["images"][0]) and torch.equal(a["view_order"], b["view_order"][0])


def test_weak_camera_brings_only_that_cameras_2d_ground_truth(index_path):
    """Across shuffled epochs, ``weak_joints_2d`` holds the named camera's 2D ground truth at whichever
    position the shuffle put it, and nothing anywhere else; the other ground truth never comes."""
    truth = ShardDataset(index_path, split="train", augmentation=Augmentation(), seed=3, ground_truth=True)
    cams = truth.readers[0].camera_names
    valid = sum(r.field("view_valid").sum(0) for r in truth.readers)
    name = cams[int(np.argmax(valid))]  # the camera that saw the hand most often
    train = ShardDataset(index_path, split="train", augmentation=Augmentation(), seed=3, weak_camera=name)
    positions = set()
    for epoch in range(6):
        train.set_epoch(epoch)
        truth.set_epoch(epoch)
        for i in range(len(train)):
            item, ref = train[i], truth[i]
            assert not [k for k in item if k.startswith("gt_")]
            known = torch.isfinite(item["weak_joints_2d"]).all(-1).any(-1)  # (V,) positions with a weak label
            slot = [v for v in range(len(cams)) if cams[int(item["view_order"][v])] == name][0]
            assert known.tolist() == [v == slot and bool(item["view_mask"][v]) for v in range(len(cams))]
            if known[slot]:
                assert torch.equal(item["weak_joints_2d"][slot], ref["gt_joints_2d"][slot])
                positions.add(slot)
            assert torch.equal(item["images"], ref["images"])  # the same draw as without weak labels
    assert len(positions) > 1  # the camera moved between positions, and its labels followed it
    with pytest.raises(HamucoError, match="no camera 'cam99'.*cam00"):
        ShardDataset(index_path, split="train", weak_camera="cam99")


def test_rotation_turns_the_camera_and_keeps_intrinsics_upper_triangular(index_path):
    """A rotated crop is the camera turned about its optical axis: crop_K stays an intrinsics matrix
    (what a weak-perspective network can be consistent with), the extrinsics turn, and the ground
    truth still projects onto the rotated 2D ground truth."""
    plain = ShardDataset(index_path, split="train", augmentation=Augmentation(), ground_truth=True)[1]
    ds = ShardDataset(index_path, split="train", augmentation=Augmentation(rotation_deg=60, colour=0.4),
                      ground_truth=True)
    item = ds[1]
    X = item["gt_joints_world"].numpy().astype(np.float64)
    turned = 0
    for v in range(4):
        if not item["view_mask"][v]:
            continue
        K = item["crop_K"][v].numpy().astype(np.float64)
        E = item["extrinsics"][v].numpy().astype(np.float64)
        assert abs(K[1, 0]) < 1e-6 * abs(K[0, 0]) and abs(K[0, 1]) < 1e-2 * abs(K[0, 0])  # no rotation left in K
        assert np.allclose(K[2], [0, 0, 1]) and np.isclose(abs(K[0, 0]), abs(K[1, 1]), rtol=1e-2)
        assert np.allclose(E[:, :3] @ E[:, :3].T, np.eye(3), atol=1e-5)  # still a rotation
        p = (X @ E[:, :3].T + E[:, 3]) @ K.T
        assert np.allclose(p[:, :2] / p[:, 2:], item["gt_joints_2d"][v].numpy(), atol=0.05)
        # the same camera (the view order is shuffled alike in both draws: same seed)
        cam = int(item["view_order"][v])
        w = int(np.nonzero(plain["view_order"].numpy() == cam)[0][0])
        R0 = plain["extrinsics"][w].numpy()[:, :3].astype(np.float64)
        Rz = E[:, :3] @ R0.T  # the turn: about the optical axis only
        assert np.allclose(Rz[2], [0, 0, 1], atol=1e-5) and np.allclose(Rz[:, 2], [0, 0, 1], atol=1e-5)
        turned += abs(np.degrees(np.arctan2(Rz[1, 0], Rz[0, 0]))) > 1
    assert turned >= 2  # the draw did rotate views
    # colour jitter changes pixels within the image range, not geometry
    assert float(item["images"].std()) > 0


def test_augmentation_options_off_keep_the_draws_and_the_run_name(index_path, tmp_path):
    from pipeline.prepare import version_hash
    from tasks.train import NEUTRAL_OPTIONS, VALIDATION_OPTIONS, TrainModel

    a = ShardDataset(index_path, split="train", augmentation=Augmentation(), seed=3)[0]
    b = ShardDataset(index_path, split="train", augmentation=Augmentation(colour=0.0, rotation_deg=0.0), seed=3)[0]
    assert all(np.array_equal(a[k].numpy(), b[k].numpy(), equal_nan=a[k].is_floating_point()) for k in a)
    base = TrainModel(dataset=index_path, out=str(tmp_path), backbone="resnet18")
    later = ("out", "num_workers", "pca_components") + VALIDATION_OPTIONS + tuple(NEUTRAL_OPTIONS)  # all off here
    params = {k: v for k, v in base.to_str_params().items() if k not in later and not k.startswith("aug_")}
    assert base.run_dir.name == f"train-resnet18-{version_hash(params, base.dataset_sha256())}"  # as before
    rotated = TrainModel(dataset=index_path, out=str(tmp_path), backbone="resnet18", aug_rotation_deg=30)
    assert rotated.run_dir != base.run_dir and rotated.augmentation.rotation_deg == 30
    with pytest.raises(HamucoError, match="aug_colour"):
        TrainModel(dataset=index_path, out=str(tmp_path), aug_colour=1.5)
