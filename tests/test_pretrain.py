"""The backbone pretrained on 2D pseudo labels alone, and its weights read by --backbone-weights."""
import json
from pathlib import Path

import luigi
import pytest
import torch

from model.pretrain import KeypointNet, keypoint_objective, soft_argmax
from model.single_view import normalized_to_pixels
from tasks.cli import main
from tasks.train import PretrainBackbone, TrainModel


def test_soft_argmax_finds_the_cell_centre_in_crop_pixels():
    maps = torch.full((1, 21, 16, 16), -50.0)
    maps[0, 4, 3, 10] = 50.0  # joint 4: row 3, column 10 of a stride-4 map on a 64² crop
    px = normalized_to_pixels(soft_argmax(maps, 64), 64)[0, 4]
    assert px.tolist() == pytest.approx([4 * 10 + 1.5, 4 * 3 + 1.5], abs=1e-3)
    flat = normalized_to_pixels(soft_argmax(torch.zeros(1, 21, 16, 16), 64), 64)[0]
    torch.testing.assert_close(flat, torch.full((21, 2), 31.5), atol=1e-4, rtol=0)  # uniform maps: the centre


def test_keypoint_objective_uses_valid_views_only():
    torch.manual_seed(0)
    net = KeypointNet("resnet18").eval()
    images = torch.randn(1, 3, 3, 64, 64)
    batch = {"images": images, "view_mask": torch.tensor([[True, False, True]]),
             "keypoints": torch.full((1, 3, 21, 2), 32.0), "confidence": torch.ones(1, 3, 21)}
    a = keypoint_objective(net, batch, 0)["total"]
    batch["keypoints"][0, 1] = 1e4  # an invalid view's labels do not count
    batch["images"][0, 1] = 1e3
    assert keypoint_objective(net, batch, 0)["total"] == a


@pytest.fixture(scope="module")
def pretrained(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    assert main(["pretrain", "--dataset", str(tiny_dataset), "--out", str(out), "--steps", "30",
                 "--batch-size", "1", "--lr", "1e-3"]) == 0
    task = PretrainBackbone(dataset=str(tiny_dataset), out=str(out), steps=30, batch_size=1, lr=1e-3)
    return task


def test_pretraining_learns_the_pseudo_labels(pretrained):
    rows = [json.loads(line) for line in (pretrained.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 30
    first = sum(r["joint_2d"] for r in rows[:5]) / 5
    last = sum(r["joint_2d"] for r in rows[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    payload = torch.load(pretrained.output().path, weights_only=True)
    assert "pretrained on 2D pseudo labels" in payload["provenance"]["what"]
    assert not any(k.startswith(("fc.", "head.")) for k in payload["state_dict"])


def test_train_reads_the_pretrained_backbone(pretrained, tiny_dataset, tmp_path):
    from model.inference import initial_network

    path = pretrained.output().path
    state = torch.load(path, weights_only=True)["state_dict"]
    net = initial_network("resnet18", 64, 0, backbone_weights=path)
    own = net.single_view.backbone.state_dict()
    assert set(own) == set(state) and all(torch.equal(own[k], state[k]) for k in state)
    task = TrainModel(dataset=str(tiny_dataset), out=str(tmp_path), backbone="resnet18", steps=1, batch_size=1,
                      backbone_weights=path, validate_every=0)
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    assert Path(task.output().path).is_file()
    # the run is named by the weights' content: other weights at the same path make another run
    copy = tmp_path / "w.pt"
    copy.write_bytes(Path(path).read_bytes())
    named = TrainModel(dataset=str(tiny_dataset), out=str(tmp_path), backbone="resnet18", backbone_weights=str(copy))
    before = named.run_dir
    torch.save({"state_dict": {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}}, copy)
    assert named.run_dir != before


def test_pretrain_refuses_a_missing_dataset(tmp_path, capsys):
    assert main(["pretrain", "--dataset", str(tmp_path / "none.json"), "--out", str(tmp_path / "o")]) == 2
    assert "none.json" in capsys.readouterr().err


def test_label_version_names_a_pretraining_run_only_when_not_raw(tmp_path, capsys):
    base = dict(dataset=str(tmp_path / "d.json"), out=str(tmp_path))
    plain = PretrainBackbone(**base).run_dir
    assert PretrainBackbone(**base, labels="raw").run_dir == plain
    assert PretrainBackbone(**base, labels="bootstrapped").run_dir != plain
