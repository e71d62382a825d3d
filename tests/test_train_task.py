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


def test_training_lowers_the_2d_losses(dataset, tmp_path):
    task = TrainModel(dataset=dataset, out=str(tmp_path), backbone="resnet18", steps=60, batch_size=2, lr=1e-3,
                      checkpoint_every=20)
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    rows = [json.loads(x) for x in (task.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 60
    first = {k: sum(r[k] for r in rows[:5]) / 5 for k in rows[0]}
    last = {k: sum(r[k] for r in rows[-5:]) / 5 for k in rows[0]}
    for key in ("joint_2d/single", "joint_2d/interaction", "total"):
        assert last[key] < 0.8 * first[key], (key, first[key], last[key])
    ckpt = load_checkpoint(Path(task.output().path))
    assert ckpt["provenance"]["code_version"] and ckpt["provenance"]["dataset_sha256"]
    assert ckpt["architecture"]["backbone"] == "resnet18"
    assert (task.run_dir / "loss_curve.png").stat().st_size > 1000
    # a rerun finds the task complete
    before = (task.run_dir / "metrics.jsonl").read_text()
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    assert (task.run_dir / "metrics.jsonl").read_text() == before


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
