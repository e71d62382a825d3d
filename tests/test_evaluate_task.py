"""The evaluation task, its report in headless Chromium, inference on captures and images, bad input."""
import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import luigi
import numpy as np
import pytest
import torch

from model.errors import HamucoError
from model.inference import load_model
from model.trainer import load_checkpoint, save_checkpoint
from pipeline.synthetic import DEMO_CONFIG, generate_capture
from tasks.cli import main
from tasks.evaluate import EvaluateModel
from tasks.prepare import PrepareDataset
from tasks.train import TrainModel

CROP = 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small calibrated capture with exact (noisy-gt, σ = 0) and MediaPipe labels, and a short run."""
    root = tmp_path_factory.mktemp("evaluate")
    cap = generate_capture(root / "cap", replace(DEMO_CONFIG, cameras=4, frames=6, seed=31), progress=False)
    common = dict(captures=[str(cap.root)], out=str(root / "prepared"), frames_per_shard=2, crop_size=CROP,
                  val_fraction=0.0, test_fraction=0.34)
    exact = PrepareDataset(labeler="noisy-gt", **common)
    mediapipe = PrepareDataset(**common)
    assert luigi.build([exact, mediapipe], local_scheduler=True, log_level="WARNING")
    train = TrainModel(dataset=mediapipe.output().path, out=str(root / "runs"), backbone="resnet18", steps=6,
                       batch_size=1, checkpoint_every=3)
    assert luigi.build([train], local_scheduler=True, log_level="WARNING")
    return {"root": root, "capture": cap.root, "exact": exact.output().path, "dataset": mediapipe.output().path,
            "checkpoint": train.output().path}


@pytest.fixture(scope="module")
def evaluation(trained):
    task = EvaluateModel(checkpoint=trained["checkpoint"], dataset=trained["dataset"],
                         out=str(trained["root"] / "evaluation"))
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    return task


def test_evaluation_outputs(evaluation):
    out = evaluation.output()
    m = json.loads(Path(out["metrics"].path).read_text())
    assert set(m["modes"]) == {"single", "interaction", "fusion"}
    assert {"triangulation", "pseudo_labels", "multi_view_reference"} <= set(m["baselines"])
    for mode in ("single", "interaction", "fusion"):
        t = m["modes"][mode]
        assert t["count"] > 0 and 0 < t["pa_mpjpe_mm"] < t["mpjpe_mm"] + 1e-6 and 0 <= t["auc_0_50mm"] <= 1
    assert len(m["per_view"]["single"]) == 4
    assert m["provenance"]["checkpoint_sha256"] and m["provenance"]["code_version"]
    assert m["provenance"]["training_step"] == 6
    from model.precision import resolve_precision

    # what the evaluation and the training computed in, and on what, are recorded
    here = resolve_precision("auto", warn=False)
    for key in ("precision", "trained_in_precision"):
        rec = m["provenance"][key]
        assert rec["precision"] == here.precision and rec["requested"] == "auto"
        assert rec["cpu_capability"] == here.cpu_capability and rec["cpu_model"] == here.cpu_model
    rows = list(csv.DictReader(open(out["csv"].path)))
    assert {r["name"] for r in rows} >= {"single", "interaction", "fusion", "triangulation", "pseudo_labels"}
    samples = list(csv.DictReader(open(Path(out["csv"].path).parent / "per_sample.csv")))
    assert len(samples) == m["samples"] > 0
    # a rerun finds the task complete; the report is the last file written
    assert evaluation.complete()


def test_evaluation_scores_the_untrained_network_beside_the_trained_one(trained, evaluation):
    """metrics.json records the run's own initialisation on the same split (the comparison a user
    needs: what training bought), and that network is the one training started from: after one step
    at a learning rate of 1e-30 the run's parameters equal the rebuilt initial network's."""
    from model.inference import initial_network_of

    m = json.loads(Path(evaluation.output()["metrics"].path).read_text())
    assert m["untrained"]["init_seed"] == 0
    assert set(m["untrained"]["modes"]) == {"single", "interaction", "fusion"}
    for mode in ("single", "interaction", "fusion"):
        u, t = m["untrained"]["modes"][mode], m["modes"][mode]
        assert u["count"] == t["count"] and u["pa_mpjpe_mm"] > 0 and u["pa_mpjpe_mm"] != t["pa_mpjpe_mm"]
    from pipeline.evaluate import summary_table

    assert "untrained: fusion" in summary_table(m)
    assert "untrained: " in Path(evaluation.output()["report"].path).read_text()

    still = TrainModel(dataset=trained["dataset"], out=str(trained["root"] / "runs-lr0"), backbone="resnet18", steps=1,
                       batch_size=1, lr=1e-30, seed=7)
    assert luigi.build([still], local_scheduler=True, log_level="WARNING")
    model, info = load_model(still.output().path)
    initial = initial_network_of(info)
    params = dict(initial.named_parameters())
    assert len(params) > 100
    for name, p in model.named_parameters():
        assert torch.allclose(p, params[name], rtol=0, atol=1e-20), name
    model2, info2 = load_model(trained["checkpoint"])  # seed 0, 6 steps at the default rate: it moved
    moved = dict(initial_network_of(info2).named_parameters())
    assert any(not torch.equal(p, moved[n]) for n, p in model2.named_parameters())


def test_exact_labels_make_exact_baselines(trained, tmp_path):
    """With σ = 0 labels the pseudo labels match the 2D ground truth and triangulating them with the
    crop cameras gives the 3D ground truth: a check of the crop geometry used by the baselines."""
    model, _ = load_model(trained["checkpoint"])
    from pipeline.evaluate import evaluate_split

    ev = evaluate_split(model, trained["exact"], split="test", progress=False)
    assert ev.metrics["baselines"]["pseudo_labels"]["error_2d_px"] < 0.01
    tri = ev.metrics["baselines"]["triangulation"]
    assert tri["mpjpe_mm"] < 0.5 and tri["pa_mpjpe_mm"] < 0.5


def test_report_renders_in_headless_chromium(evaluation, tmp_path):
    """Every image decodes, every table has rows, and the console has no error."""
    from .helpers import render_in_chromium

    seen = render_in_chromium(Path(evaluation.output()["report"].path), tmp_path / "profile")
    images, tables = seen["images"], seen["tables"]
    alts = [a for a, *_ in images]
    assert all(ok and w > 0 and h > 0 for _, ok, w, h in images), images
    for needed in ("PCK curves", "2D overlay", "3D skeleton", "training curves"):
        assert needed in alts, alts
    assert len(tables) >= 5 and all(n > 0 for n in tables), tables
    assert {"Metrics", "Error versus threshold", "Best and worst samples", "Training curves",
            "Data preparation: quarantine"} <= set(seen["headings"])
    assert seen["errors"] == []


def test_cli_evaluate_and_errors(trained, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", trained["checkpoint"], "--dataset", trained["dataset"],
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PA-MPJPE" in out and "fusion" in out and "report: " in out
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--dataset", trained["dataset"],
                 "--out", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_checkpoint_that_does_not_match_the_model(trained, tmp_path):
    ckpt = load_checkpoint(Path(trained["checkpoint"]))
    other = dict(ckpt, architecture={**ckpt["architecture"], "hand_model": "0" * 64})
    save_checkpoint(tmp_path / "other-hand.pt", other)
    with pytest.raises(HamucoError, match="trained with hand model sha256 000000000000"):
        load_model(tmp_path / "other-hand.pt")
    sd = dict(ckpt["model"])
    sd.pop(next(iter(sd)))
    save_checkpoint(tmp_path / "missing.pt", dict(ckpt, model=sd))
    with pytest.raises(HamucoError, match="does not match the resnet18 HaMuCo model: missing"):
        load_model(tmp_path / "missing.pt")
    wrong = dict(ckpt, architecture={**ckpt["architecture"], "backbone": "resnet34"})
    save_checkpoint(tmp_path / "wrong.pt", wrong)
    with pytest.raises(HamucoError, match="does not match"):
        load_model(tmp_path / "wrong.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HamucoError, match="junk.pt: cannot load the checkpoint: not a PyTorch file"):
        load_model(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(HamucoError, match="not a HaMuCo training checkpoint"):
        load_model(tmp_path / "plain.pt")


def test_infer_capture_with_and_without_extrinsics(trained, tmp_path, capsys):
    out = tmp_path / "pred.json"
    assert main(["infer", "--checkpoint", trained["checkpoint"], "--capture", str(trained["capture"]),
                 "--out", str(out), "--overlays", "--quiet"]) == 0
    doc = json.loads(out.read_text())
    rec = doc["records"][0]
    assert rec["frame"] == "000000" and rec["views"] == ["cam00", "cam01", "cam02", "cam03"]
    assert np.array(rec["joints"]).shape == (21, 3) and np.array(rec["view_joints"]).shape == (4, 21, 3)
    assert np.array(rec["joints_2d_image"], dtype=float).shape == (4, 21, 2)
    assert {r["coordinate_frame"] for r in doc["records"]} == {"world"}
    assert len({r["frame"] for r in doc["records"]}) == len(doc["records"])
    assert any(Path(str(out.parent / "pred_overlays")).glob("*.png"))
    # without extrinsics: in the reference camera's frame, and an HDF5 output
    h5 = tmp_path / "pred.h5"
    assert main(["infer", "--checkpoint", trained["checkpoint"], "--capture", str(trained["capture"]),
                 "--out", str(h5), "--no-extrinsics", "--reference-view", "cam02", "--quiet"]) == 0
    import h5py

    with h5py.File(h5) as f:
        refs = set(f["coordinate_frame"].asstr()[()])
        assert f["joints"].shape[1:] == (21, 3) and f["view_joints"].shape[1:] == (4, 21, 3)
    assert refs <= {"camera:2", "camera:0", "camera:1", "camera:3"} and "camera:2" in refs


def test_infer_capture_bad_input(trained, tmp_path, capsys):
    """Images of another size than the calibration are skipped with the reason; a capture with no hand in
    any view is a clear error."""
    cap = tmp_path / "cap"
    shutil.copytree(trained["capture"], cap)
    capture = json.loads((cap / "capture.json").read_text())
    first = sorted((cap / "images").rglob("*.png"))[0]
    img = cv2.imread(str(first))
    cv2.imwrite(str(first), cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2)))
    from model.inference import load_model as lm
    from pipeline.infer import infer_capture

    model, _ = lm(trained["checkpoint"])
    res = infer_capture(model, cap, frames=[0], progress=False)
    reasons = [s["reason"] for s in res.skipped]
    assert any("calibration says" in r for r in reasons), reasons
    assert res.skipped[0]["frame"] == "000000"
    # no hand anywhere: blank every image
    for p in (cap / "images").rglob("*.png"):
        w, h = capture["cameras"][0]["image_size"]
        cv2.imwrite(str(p), np.full((h, w, 3), 90, np.uint8))
    with pytest.raises(HamucoError, match="no hand found in any view"):
        infer_capture(model, cap, frames=[0, 1], progress=False)
    assert main(["infer", "--checkpoint", trained["checkpoint"], "--capture", str(cap), "--out",
                 str(tmp_path / "x.json"), "--quiet"]) == 2
    assert "no hand found in any view" in capsys.readouterr().err


def test_infer_images_and_video_in_the_wild(trained, tmp_path):
    """A rendered view as a photo, the same view mirrored (a left hand), and a short video."""
    from model.inference import load_model as lm
    from pipeline.infer import infer_images

    model, _ = lm(trained["checkpoint"])
    img = cv2.imread(str(sorted((Path(trained["capture"]) / "images").rglob("*.png"))[0]))
    cv2.imwrite(str(tmp_path / "photo.png"), img)
    cv2.imwrite(str(tmp_path / "mirrored.png"), img[:, ::-1])
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, img.shape[1::-1])
    for _ in range(3):
        writer.write(img)
    writer.release()
    res = infer_images(model, [tmp_path / "photo.png", tmp_path / "mirrored.png", tmp_path / "clip.avi"],
                       overlay_dir=tmp_path / "ov", progress=False)
    by_source = {}
    for r in res.records:
        by_source.setdefault(Path(r.source).name, []).append(r)
    found = set(by_source) | {Path(s["source"]).name for s in res.skipped}
    assert found == {"photo.png", "mirrored.png", "clip.avi"}  # every input is either a result or listed
    assert "photo.png" in by_source and "clip.avi" in by_source, res.skipped
    assert [r.frame for r in by_source["clip.avi"]] == ["0", "1", "2"]
    from model.inference import infer
    from pipeline.crop import crop_affine, warp_crop

    video = cv2.VideoCapture(str(tmp_path / "clip.avi"))
    frames = {str(i): video.read()[1] for i in range(3)}
    video.release()
    inputs = {"photo.png": lambda r: img, "mirrored.png": lambda r: img[:, ::-1], "clip.avi": lambda r: frames[r.frame]}
    for name, recs in by_source.items():
        for r in recs:
            assert r.prediction.joints.shape == (21, 3) and r.prediction.coordinate_frame == "camera:0"
            assert np.all(np.isfinite(r.joints_2d_image[0]))
            # the recorded box, mirrored for a left hand, reproduces the prediction
            flip = r.handedness == "left"
            crop = warp_crop(inputs[name](r), crop_affine(r.boxes[0], CROP, flip=flip), CROP)[..., ::-1]
            again = infer(model, crop[None], flipped=np.array([flip]))
            np.testing.assert_allclose(again.joints, r.prediction.joints, atol=1e-5)
    assert len(list((tmp_path / "ov").glob("*.png"))) >= 2
    with pytest.raises(HamucoError, match="no such image"):
        infer_images(model, [tmp_path / "missing.png"], progress=False)


def test_demo_states_what_training_bought_per_mode():
    from tasks.cli import training_gain_lines

    t = {"pa_mpjpe_mm": 20.0, "nmpjpe_mm": 30.0}
    metrics = {"modes": {"single": t, "fusion": {"pa_mpjpe_mm": 9.0, "nmpjpe_mm": 12.0}},
               "untrained": {"modes": {"single": {"pa_mpjpe_mm": 13.0, "nmpjpe_mm": 100.0},
                                       "fusion": {"pa_mpjpe_mm": 29.0, "nmpjpe_mm": 101.0}}}}
    single, fusion = training_gain_lines(metrics)
    assert single.startswith("single") and "PA-MPJPE 20.0 vs 13.0 (+7.0, NOT better)" in single
    assert "NMPJPE 30.0 vs 100.0 (-70.0, better)" in single
    assert "PA-MPJPE 9.0 vs 29.0 (-20.0, better)" in fusion
    assert training_gain_lines({"modes": {"single": t}}) == []  # an evaluation without the untrained rows
