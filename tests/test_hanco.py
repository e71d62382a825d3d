"""HanCo reader on a tiny dataset written in the HanCo layout."""
import json

import cv2
import numpy as np
import pytest

from pipeline.capture import CaptureError
from pipeline.hanco import list_hanco_sequences, read_hanco_keypoints, read_hanco_sequence
from pipeline.validate import validate_capture

SEQS = ("0000", "1201")
CAMS = (0, 1, 2)
FRAMES = ("00000000", "00000001", "00000002")
SIZES = {0: (224, 224), 1: (64, 48), 2: (40, 56)}  # (width, height) per camera


def rotation(rng):
    """A random proper rotation (Rodrigues of a random axis-angle)."""
    R, _ = cv2.Rodrigues(rng.normal(size=3))
    return R


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def make_dataset(root, seed=0):
    """Write the tiny dataset and return what was written, for comparison."""
    rng = np.random.default_rng(seed)
    truth = {}
    for seq in SEQS:
        Ks, Ms = [], []
        for _ in range(8):  # HanCo calib files list all 8 cameras
            f = rng.uniform(150, 300)
            K = np.array([[f, 0, rng.uniform(90, 130)], [0, f * 1.01, rng.uniform(90, 130)], [0, 0, 1]])
            M = np.eye(4)
            M[:3, :3] = rotation(rng)
            M[:3, 3] = rng.normal(size=3) * 0.1 + [0, 0, 0.6]
            Ks.append(K)
            Ms.append(M)
        joints = rng.normal(size=(len(FRAMES), 21, 3)) * 0.05
        shape = {"poses": rng.normal(size=(len(FRAMES), 1, 48)), "shapes": rng.normal(size=(len(FRAMES), 1, 10)),
                 "global_t": rng.normal(size=(len(FRAMES), 1, 1, 3))}
        images, keypoints = {}, {}
        for fi, fid in enumerate(FRAMES):
            write_json(root / "calib" / seq / f"{fid}.json",
                       {"K": [k.tolist() for k in Ks], "M": [m.tolist() for m in Ms]})
            write_json(root / "xyz" / seq / f"{fid}.json", joints[fi].tolist())
            write_json(root / "shape" / seq / f"{fid}.json", {k: v[fi].tolist() for k, v in shape.items()})
            for k in CAMS:
                w, h = SIZES[k]
                yy, xx = np.mgrid[:h, :w]
                base = rng.uniform(0, 100, size=3)
                img = np.clip(base + np.stack([xx, yy, xx + yy], -1) * 0.8, 0, 255).astype(np.uint8)
                path = root / "rgb" / seq / f"cam{k}" / f"{fid}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                assert cv2.imwrite(str(path), img)
                images[k, fid] = img
                kp, conf = rng.uniform(0, 224, size=(21, 2)), rng.uniform(0, 1, size=21)
                value = [kp.tolist(), conf.tolist()] if k != 2 else {"keypoints": kp.tolist(),
                                                                       "confidence": conf.tolist()}
                write_json(root / "rgb_2D_keypoints" / seq / f"cam{k}" / f"{fid}.json", value)
                keypoints[k, fid] = kp, conf
        truth[seq] = dict(K=np.array(Ks), M=np.array(Ms), joints=joints, shape=shape, images=images,
                          keypoints=keypoints)
    return truth


@pytest.fixture
def hanco(tmp_path):
    root = tmp_path / "HanCo"
    return root, make_dataset(root)


def test_sequences_listed(hanco):
    root, _ = hanco
    (root / "rgb" / "notes.txt").write_text("not a sequence")
    assert list_hanco_sequences(root) == list(SEQS)


def test_cameras_frames_and_calibration(hanco):
    root, truth = hanco
    for seq, split in zip(SEQS, ("train", "test")):
        cap = read_hanco_sequence(root, seq)
        assert cap.layout == "hanco"
        assert cap.metadata == {"name": f"hanco-{seq}", "dataset": "HanCo", "sequence": seq, "split": split}
        assert cap.frame_ids == list(FRAMES)
        assert [c.name for c in cap.cameras] == [f"cam{k}" for k in CAMS]
        for cam, k in zip(cap.cameras, CAMS):
            assert (cam.width, cam.height) == SIZES[k]
            np.testing.assert_allclose(cam.K, truth[seq]["K"][k])
            np.testing.assert_allclose(cam.R, truth[seq]["M"][k][:3, :3])
            np.testing.assert_allclose(cam.t, truth[seq]["M"][k][:3, 3])
            assert cam.images == f"rgb/{seq}/cam{k}/{{frame}}.jpg"


def test_read_image(hanco):
    root, truth = hanco
    cap = read_hanco_sequence(root, "1201")
    for v, k in enumerate(CAMS):
        for f, fid in enumerate(FRAMES):
            img = cap.read_image(v, f)
            written = truth["1201"]["images"][k, fid]
            assert img.shape == written.shape
            assert np.abs(img.astype(int) - written).mean() < 3  # JPEG is lossy


def test_ground_truth(hanco):
    root, truth = hanco
    cap = read_hanco_sequence(root, "0000")
    gt = cap.ground_truth
    t = truth["0000"]
    np.testing.assert_allclose(gt.joints_world, t["joints"])
    np.testing.assert_allclose(gt.hand_pose, t["shape"]["poses"].reshape(-1, 48))
    np.testing.assert_allclose(gt.betas, t["shape"]["shapes"].reshape(-1, 10))
    np.testing.assert_allclose(gt.transl, t["shape"]["global_t"].reshape(-1, 3))
    assert gt.joints_2d.shape == (len(FRAMES), len(CAMS), 21, 2)
    for v, k in enumerate(CAMS):
        K, M = t["K"][k], t["M"][k]
        homog = np.concatenate([t["joints"], np.ones((len(FRAMES), 21, 1))], axis=-1)
        cam = homog @ M.T  # (F, 21, 4) in camera coordinates
        pix = cam[..., :3] @ K.T
        np.testing.assert_allclose(gt.joints_2d[:, v], pix[..., :2] / pix[..., 2:3], atol=1e-6)
    assert validate_capture(cap).ok


def test_missing_ground_truth_files(hanco):
    root, truth = hanco
    (root / "xyz" / "0000" / f"{FRAMES[1]}.json").unlink()
    for path in (root / "shape" / "0000").iterdir():
        path.unlink()
    (root / "shape" / "0000").rmdir()
    gt = read_hanco_sequence(root, "0000").ground_truth
    assert np.all(np.isnan(gt.joints_world[1])) and np.all(np.isnan(gt.joints_2d[1]))
    np.testing.assert_allclose(gt.joints_world[[0, 2]], truth["0000"]["joints"][[0, 2]])
    assert gt.hand_pose is None and gt.betas is None

    for path in (root / "xyz" / "1201").iterdir():
        path.unlink()
    (root / "xyz" / "1201").rmdir()
    assert read_hanco_sequence(root, "1201").ground_truth is None


def test_calibration_varies(hanco):
    root, truth = hanco
    path = root / "calib" / "0000" / f"{FRAMES[2]}.json"
    doc = json.loads(path.read_text())
    doc["M"][1][0][3] += 0.05
    path.write_text(json.dumps(doc))
    cap = read_hanco_sequence(root, "0000")
    assert cap.metadata["calibration_varies"] is True
    np.testing.assert_allclose(cap.cameras[1].t, truth["0000"]["M"][1][:3, 3])  # first frame's calibration
    assert "calibration_varies" not in read_hanco_sequence(root, "1201").metadata


def test_keypoints(hanco):
    root, truth = hanco
    for k in CAMS:  # cam2 is written as an object, the others as a list
        kp, conf = read_hanco_keypoints(root, "1201", f"cam{k}", FRAMES[1])
        want_kp, want_conf = truth["1201"]["keypoints"][k, FRAMES[1]]
        assert kp.shape == (21, 2) and conf.shape == (21,)
        np.testing.assert_allclose(kp, want_kp)
        np.testing.assert_allclose(conf, want_conf)


def test_keypoints_missing_or_malformed(hanco):
    root, _ = hanco
    missing = root / "rgb_2D_keypoints" / "0000" / "cam5" / f"{FRAMES[0]}.json"
    with pytest.raises(CaptureError, match="not found") as exc:
        read_hanco_keypoints(root, "0000", "cam5", FRAMES[0])
    assert str(missing) in str(exc.value)
    bad = root / "rgb_2D_keypoints" / "0000" / "cam0" / f"{FRAMES[0]}.json"
    bad.write_text(json.dumps([[1.0, 2.0]] * 5))
    with pytest.raises(CaptureError) as exc:
        read_hanco_keypoints(root, "0000", "cam0", FRAMES[0])
    assert str(bad) in str(exc.value)


def test_missing_calibration_names_file(hanco):
    root, _ = hanco
    path = root / "calib" / "0000" / f"{FRAMES[0]}.json"
    path.unlink()
    with pytest.raises(CaptureError) as exc:
        read_hanco_sequence(root, "0000")
    assert str(path) in str(exc.value) and FRAMES[0] in str(exc.value)


def test_malformed_calibration_names_file(hanco):
    root, _ = hanco
    path = root / "calib" / "1201" / f"{FRAMES[0]}.json"
    doc = json.loads(path.read_text())
    doc["M"][2] = [[1, 0, 0], [0, 1, 0]]
    path.write_text(json.dumps(doc))
    with pytest.raises(CaptureError) as exc:
        read_hanco_sequence(root, "1201")
    assert str(path) in str(exc.value) and "cam2" in str(exc.value)
    path.write_text("{not json")
    with pytest.raises(CaptureError, match="not valid JSON"):
        read_hanco_sequence(root, "1201")


def test_bad_input(hanco, tmp_path):
    root, _ = hanco
    with pytest.raises(CaptureError, match="0042"):
        read_hanco_sequence(root, "0042")
    with pytest.raises(CaptureError, match="not found"):
        list_hanco_sequences(tmp_path / "nowhere")
    (root / "rgb" / "0007").mkdir()
    with pytest.raises(CaptureError, match="no camera"):
        read_hanco_sequence(root, "0007")


def test_paper_reproduction_end_to_end_on_a_tiny_hanco(tmp_path, monkeypatch):
    """configs/hanco-paper.cfg + ReproduceHanCo: imported labels, ResNet-50 with a weights file in
    torchvision's layout (ImageNet cannot be downloaded here), the paper's sequence split, evaluation."""
    import luigi
    import torch
    import torchvision

    from tasks.hanco import ReproduceHanCo

    root = tmp_path / "HanCo"
    make_dataset(root)
    weights = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), weights)
    cfg = luigi.configuration.get_config()
    assert cfg.read(["configs/hanco-paper.cfg"])
    try:
        ReproduceHanCo.clear_instance_cache()
        task = ReproduceHanCo(root=str(root), out=str(tmp_path / "out"), steps=2, batch_size=1, num_workers=0,
                              backbone_weights=str(weights))
        assert task.backbone == "resnet50" and task.crop_size == 256 and task.lr == 3e-4
        assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    finally:
        cfg.remove_section("ReproduceHanCo")
        cfg.remove_section("TrainModel")
    result = json.loads((tmp_path / "out" / "hanco-paper.json").read_text())
    index = json.loads(open(result["dataset_index"]).read())
    assert index["labeler"] == "imported"
    by_capture = {s["path"]: s["capture"] for s in index["shards"]}
    assert {by_capture[p] for p in index["split"]["test"]} == {"hanco-1201"}
    assert {by_capture[p] for p in index["split"]["train"]} == {"hanco-0000"}
    assert set(result["ours"]["pa_mpjpe_mm"]) == {"single", "interaction", "fusion"}
    assert (tmp_path / "out" / "evaluation").exists() and open(result["report"]).read().startswith("<!DOCTYPE html>")
