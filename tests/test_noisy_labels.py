"""The noisy ground-truth labeler: controlled label noise through the real pipeline."""
import json
from dataclasses import replace
from pathlib import Path

import luigi
import numpy as np
import pytest

from model.errors import HamucoError
from pipeline.labelers.noisy_gt import NoisyGroundTruthLabeler
from pipeline.shards import ShardReader
from pipeline.synthetic import DEMO_CONFIG, generate_capture
from tasks.cli import main
from tasks.prepare import PrepareDataset


def test_noise_statistics_and_confidence_modes():
    gt = np.random.default_rng(0).uniform(40, 200, (400, 21, 2))
    kp, conf = NoisyGroundTruthLabeler().label_views(gt, 256, 0)
    assert np.array_equal(kp, gt.astype(np.float32)) and np.all(conf == 1)
    kp, conf = NoisyGroundTruthLabeler(sigma_px=3.0).label_views(gt, 256, 0)
    err = np.linalg.norm(kp - gt, axis=-1)
    assert abs(err.mean() - 3.0 * np.sqrt(np.pi / 2)) < 0.1  # Rayleigh mean of 2D Gaussian noise
    lab = NoisyGroundTruthLabeler(sigma_px=2.0, outlier_rate=0.3, seed=1)
    kp, conf = lab.label_views(gt, 256, 7)
    err = np.linalg.norm(kp - gt, axis=-1)
    outliers = err > 20
    assert 0.25 < outliers.mean() < 0.35
    assert conf[outliers].mean() < 0.1 < 0.8 < conf[~outliers].mean()  # informative: reflects the error
    kp2, conf2 = lab.label_views(gt, 256, 7)
    assert np.array_equal(kp, kp2)  # deterministic for (seed, frame)
    _, flat = NoisyGroundTruthLabeler(sigma_px=2.0, outlier_rate=0.3, seed=1,
                                      confidence="uninformative").label_views(gt, 256, 7)
    assert abs(flat[outliers].mean() - flat[~outliers].mean()) < 0.05  # uninformative: does not
    with pytest.raises(HamucoError):
        NoisyGroundTruthLabeler(confidence="psychic")


def test_noisy_gt_through_the_pipeline(tmp_path, capsys):
    cap = generate_capture(tmp_path / "cap", replace(DEMO_CONFIG, cameras=4, frames=2, seed=3), progress=False)
    exact = PrepareDataset(captures=[str(cap.root)], out=str(tmp_path / "out"), labeler="noisy-gt",
                           frames_per_shard=2)
    assert luigi.build([exact], local_scheduler=True, log_level="WARNING")
    index = json.loads(Path(exact.output().path).read_text())
    with ShardReader(index["shards"][0]["path"]) as r:
        s = r[0]
        v = s.view_valid
        assert r.attrs["labeler"] == "noisy-gt"
        assert np.allclose(s.keypoints[v], s.gt_joints_2d[v], atol=1e-3)
        tri = np.linalg.norm(s.triangulated - s.gt_joints_world, axis=-1)
        assert np.nanmax(tri) < 1e-3  # exact labels triangulate to the true joints
    assert main(["prepare", str(cap.root), "--out", str(tmp_path / "out"), "--labeler", "noisy-gt",
                 "--frames-per-shard", "2", "--noise-sigma-px", "4", "--noise-outlier-rate", "0.2"]) == 0
    noisy_dirs = {p.parent for p in (tmp_path / "out").rglob("shard-00000.h5")}
    assert len(noisy_dirs) == 2  # a new version beside the exact one
