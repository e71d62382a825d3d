"""The training task on prepared shards: runs, learns the 2D labels, resumes, refuses bad input."""
import json
from dataclasses import replace
from pathlib import Path

import luigi
import pytest
import torch

from model.errors import HamucoError
from model.hamuco import HaMuCo
from model.trainer import CHECKPOINT_LAST, check_architecture, load_checkpoint
from pipeline.synthetic import DEMO_CONFIG, generate_capture
from tasks.cli import main
from tasks.prepare import PrepareDataset
from tasks.train import TrainModel


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    cap = generate_capture(root / "cap", replace(DEMO_CONFIG, cameras=4, frames=8, seed=21), progress=False)
    task = PrepareDataset(captures=[str(cap.root)], out=str(root / "out"), frames_per_shard=8, crop_size=128,
                          val_fraction=0.0, test_fraction=0.0)
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    return task.output().path


STEPS = 150  # each of the three runs below, which the learning tests share


def _mean(rows: list[dict]) -> dict:
    """The mean of each numeric entry of metrics.jsonl rows."""
    return {k: sum(r[k] for r in rows) / len(rows) for k, v in rows[0].items() if isinstance(v, (int, float))}


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """The training runs the learning tests read, each made once on first use: ``plain`` (scheme 1, as
    configured by default), ``calibrated`` (the extrinsics in the consistency term) and
    ``calibrated_no_consistency`` (the same without the consistency term).

    Each runs on one thread whatever the session has (conftest.py gives a pytest-xdist worker its share of
    the cores, a plain pytest run has torch's default): the thread count changes the order of floating-point
    sums, so a run's trajectory, and the figures the tests compare, would depend on how the tests were
    started."""
    root = tmp_path_factory.mktemp("runs")
    options = {"plain": {}, "calibrated": {"use_extrinsics": True},
               "calibrated_no_consistency": {"use_extrinsics": True, "consistency_weight": 0.0}}
    made = {}

    def get(name: str):
        if name not in made:
            task = TrainModel(dataset=dataset, out=str(root / name), backbone="resnet18", batch_size=2,
                              **{"steps": STEPS, "lr": 1e-3, "checkpoint_every": 100, **options[name]})
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                assert luigi.build([task], local_scheduler=True, log_level="WARNING")
            finally:
                torch.set_num_threads(threads)
            made[name] = (task, [json.loads(x) for x in (task.run_dir / "metrics.jsonl").read_text().splitlines()])
        return made[name]
    return get


def test_training_lowers_the_2d_losses(runs):
    task, rows = runs("plain")
    assert len(rows) == STEPS
    first, last = _mean(rows[:20]), _mean(rows[-20:])
    for key in ("joint_2d/single", "joint_2d/interaction", "total"):
        assert last[key] < 0.75 * first[key], (key, first[key], last[key])
    # the views start out predicting nearly the same pose (trivially consistent); the consistency
    # term then keeps the views' 3D predictions in agreement while they learn
    assert max(r["consistency"] for r in rows) < 0.02
    ckpt = load_checkpoint(Path(task.output().path))
    assert ckpt["provenance"]["code_version"] and ckpt["provenance"]["dataset_sha256"]
    assert ckpt["architecture"]["backbone"] == "resnet18"
    assert (task.run_dir / "loss_curve.png").stat().st_size > 1000
    # a rerun finds the task complete
    before = (task.run_dir / "metrics.jsonl").read_text()
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    assert (task.run_dir / "metrics.jsonl").read_text() == before


def test_calibrated_training_lowers_2d_and_consistency_losses(runs):
    """With extrinsics in training the consistency uses the known relative rotations, so views that all
    start at the same camera-frame pose are inconsistent at first: the term must fall, with both 2D losses."""
    _, rows = runs("calibrated")
    first, last = _mean(rows[:20]), _mean(rows[-20:])
    # fp32, 150 steps: 0.049 → 0.029 (0.59x) in two runs here, while the same run without the term stays at
    # 0.053-0.056 throughout
    assert last["consistency"] < 0.7 * first["consistency"], (first["consistency"], last["consistency"])
    for key in ("joint_2d/single", "joint_2d/interaction"):
        assert last[key] < 0.95 * first[key], (key, first[key], last[key])


def test_checkpoint_from_another_architecture_is_refused(dataset, tmp_path):
    task = TrainModel(dataset=dataset, out=str(tmp_path), backbone="resnet18", steps=2, batch_size=1)
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    ckpt = load_checkpoint(task.run_dir / CHECKPOINT_LAST)
    with pytest.raises(HamucoError, match="another architecture: backbone: checkpoint 'resnet18', model 'resnet34'"):
        check_architecture(ckpt, {**ckpt["architecture"], "backbone": "resnet34"}, task.run_dir / CHECKPOINT_LAST)
    with pytest.raises(RuntimeError):  # and the weights themselves do not fit either
        HaMuCo("resnet34", image_size=128).load_state_dict(ckpt["model"])


def test_cli_train_errors(tmp_path, capsys):
    assert main(["train", "--dataset", str(tmp_path / "none.json"), "--out", str(tmp_path)]) == 2
    assert "dataset index not found" in capsys.readouterr().err


def test_weak_supervision_and_extrinsics_options(dataset):
    from model.objective import HaMuCoObjective
    from pipeline.dataset import Augmentation, ShardDataset

    ds = ShardDataset(dataset, augmentation=Augmentation(), weak_camera="cam01")
    batch = {k: v[None] for k, v in ds[0].items()}
    torch.manual_seed(0)
    model = HaMuCo("resnet18", image_size=128).eval()
    plain = HaMuCoObjective()(model, batch, 0)
    weak = HaMuCoObjective(weak_supervision=True)
    keypoints, conf = weak.labels(batch)
    slot = (batch["view_order"][0] == ds.readers[0].camera_names.index("cam01")).nonzero().item()
    others = [v for v in range(batch["view_mask"].shape[1]) if v != slot]
    assert torch.equal(keypoints[:, others], batch["keypoints"][:, others])  # only that camera's labels change
    assert torch.equal(conf[:, others], batch["confidence"][:, others])
    if batch["view_mask"][0, slot]:
        assert torch.all(conf[:, slot] == 1)
        assert torch.allclose(keypoints[:, slot], batch["weak_joints_2d"][:, slot])
        assert not torch.isclose(plain["joint_2d/single"], weak(model, batch, 0)["joint_2d/single"])
    with pytest.raises(HamucoError, match="weak_joints_2d"):
        weak.labels({k: v for k, v in batch.items() if k != "weak_joints_2d"})
    calibrated = HaMuCoObjective(use_extrinsics=True)(model, batch, 0)
    assert torch.isfinite(calibrated["consistency"]) and torch.isfinite(calibrated["total"])


def test_shards_of_another_schema_version_are_refused(dataset, tmp_path):
    import shutil

    import h5py

    from pipeline.dataset import ShardDataset
    from pipeline.shards import ShardError

    index = json.loads(Path(dataset).read_text())
    copy = tmp_path / "old.h5"
    shutil.copy(index["split"]["train"][0], copy)
    with h5py.File(copy, "r+") as f:
        f.attrs["schema_version"] = 2
    with pytest.raises(ShardError, match="schema version 2"):
        ShardDataset([copy])


def test_consistency_loss_keeps_views_consistent(runs):
    """Ablation: the calibrated run without the consistency term ends far less consistent across views.

    Calibrated, because there the views start inconsistent (each predicts the same camera-frame pose,
    which the known rotations turn into different world poses). Without extrinsics the near-identical
    initial poses are trivially consistent and the term's effect over 150 steps is smaller than the
    difference between trajectories: measured 2026-12-04 (AVX-512/bf16 CPU) as ratios with/without of
    0.20-0.83 across thread counts and precisions, so that comparison is no test. Calibrated, one thread:
    0.027 against 0.047 (0.57) in bf16, 0.031 against 0.048 (0.64) in fp32.
    """
    def last_consistency(name):
        return _mean(runs(name)[1][-50:])["consistency"]

    with_term, without = last_consistency("calibrated"), last_consistency("calibrated_no_consistency")
    assert with_term < 0.75 * without, (with_term, without)
