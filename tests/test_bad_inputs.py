"""A catalogue of bad input, each through the ``hamuco`` program as a user types it.

Each case asserts the exit status, that no traceback is printed, that the message names the file
(and the frame and camera where there is one), that nothing half-written is left, and, for data
preparation, that every skipped view is in the quarantine report with its reason.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import h5py
import numpy as np
import pytest
import torch

from tests.helpers import clean_env, run_cli, temporaries

OK, FAILED, USAGE = 0, 1, 2


class Evil:
    """A pickle that would run a command when loaded (it must be refused, never executed)."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/hamuco-pwned",))


@dataclass
class Case:
    name: str
    make: Callable  # (ctx) -> list of arguments (after "hamuco"); may break files in ctx.tmp
    status: int
    says: list = field(default_factory=list)  # substrings of stderr (or of the quarantine report)
    quarantined: list = field(default_factory=list)  # (frame, camera, substring of the reason)
    absent: list = field(default_factory=list)  # paths (relative to ctx.tmp) that must not exist afterwards
    env: dict = field(default_factory=dict)


class Ctx:
    def __init__(self, tmp: Path, capture: Path, dataset: Path, checkpoint: Path):
        self.tmp, self._capture, self.dataset, self.checkpoint = tmp, capture, dataset, checkpoint

    def capture(self) -> Path:
        dst = self.tmp / "cap"
        if not dst.exists():
            shutil.copytree(self._capture, dst)
        return dst

    def doc(self) -> dict:
        return json.loads((self.capture() / "capture.json").read_text())

    def write_doc(self, doc: dict) -> Path:
        (self.capture() / "capture.json").write_text(json.dumps(doc))
        return self.capture()

    def edit_cameras(self, fn) -> Path:
        doc = self.doc()
        fn(doc)
        return self.write_doc(doc)

    def jpeg_capture(self, truncate: str | None = None) -> Path:
        """The capture with JPEG images; ``truncate`` = "<camera>/<frame>" cut in half."""
        cap = self.capture()
        doc = self.doc()
        for cam in doc["cameras"]:
            for fid in doc["frames"]:
                png = cap / cam["images"].format(frame=fid, camera=cam["name"])
                img = cv2.imread(str(png))
                cv2.imwrite(str(png.with_suffix(".jpg")), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
                png.unlink()
            cam["images"] = cam["images"].replace(".png", ".jpg")
        self.write_doc(doc)
        if truncate:
            path = cap / "images" / f"{truncate}.jpg"
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        return cap

    def video_capture(self, damage: bool) -> Path:
        """The capture with camera cam01 as an MP4 video, optionally with bytes zeroed mid-file."""
        cap = self.capture()
        doc = self.doc()
        cam = doc["cameras"][1]
        writer = cv2.VideoWriter(str(cap / "cam01.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10,
                                 tuple(cam["image_size"]))
        for fid in doc["frames"]:
            writer.write(cv2.imread(str(cap / cam["images"].format(frame=fid, camera=cam["name"]))))
        writer.release()
        del cam["images"]
        cam["video"] = "cam01.mp4"
        self.write_doc(doc)
        data = bytearray((cap / "cam01.mp4").read_bytes())
        if damage:
            mid = len(data) // 2
            data[mid:mid + 400] = bytes(400)
        else:
            data = data[: len(data) // 2]  # truncated: the index at the end is lost
        (cap / "cam01.mp4").write_bytes(bytes(data))
        return cap

    def ground_truth(self, **arrays) -> Path:
        cap = self.capture()
        with np.load(cap / "ground_truth.npz") as z:
            gt = {k: z[k] for k in z.files}
        gt.update(arrays)
        np.savez(cap / "ground_truth.npz", **gt)
        return cap

    def weights(self, kind: str) -> Path:
        path = self.tmp / f"{kind}.pth"
        if kind == "junk":
            path.write_bytes(b"these are not weights" * 20)
        elif kind == "evil":
            torch.save({"conv": Evil()}, path)
        elif kind == "wrong-keys":
            torch.save({"layer.weight": torch.zeros(3, 3)}, path)
        elif kind == "good":
            from pipeline.labelers.openpose import OpenPoseHandNet

            torch.manual_seed(0)
            torch.save(OpenPoseHandNet().state_dict(), path)
        return path

    def index_copy(self, edit=None, shard_edit=None) -> Path:
        """A copy of the tiny dataset (index and shards) with the index or its train shard edited."""
        dst = self.tmp / "dataset"
        index = json.loads(self.dataset.read_text())
        dst.mkdir(exist_ok=True)
        mapping = {}
        for s in index["shards"]:
            new = dst / f"{Path(s['path']).parent.name}-{Path(s['path']).name}"
            shutil.copy(s["path"], new)
            mapping[s["path"]] = str(new)
        index["shards"] = [{**s, "path": mapping[s["path"]]} for s in index["shards"]]
        for split in ("train", "val", "test"):
            index["split"][split] = [mapping[p] for p in index["split"][split]]
        if shard_edit:
            shard_edit(Path(index["split"]["train"][0]))
        if edit:
            edit(index)
        path = dst / "index.json"
        path.write_text(json.dumps(index))
        return path

    def run_dir(self, backbone: str = "resnet18") -> Path:
        from tasks.train import TrainModel

        return TrainModel(dataset=str(self.dataset), out=str(self.tmp / "train"), backbone=backbone, steps=2,
                          batch_size=1).run_dir


def _set_attr(path: Path, key: str, value) -> None:
    with h5py.File(path, "r+") as f:
        f.attrs[key] = value


def _invalid_views(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f["view_valid"][...] = False


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _prep(ctx, cap=None, *extra):
    return ["prepare", cap or ctx.capture(), "--out", ctx.tmp / "out", "--frames-per-shard", "8", "--crop-size", "64",
            *extra]


def _train(ctx, *extra, dataset=None, backbone="resnet18"):
    return ["train", "--dataset", dataset or ctx.dataset, "--out", ctx.tmp / "train", "--backbone", backbone,
            "--steps", "2", "--batch-size", "1", *extra]


def _evil_checkpoint(ctx) -> list:
    run = ctx.run_dir()
    run.mkdir(parents=True)
    torch.save({"model": Evil()}, run / "checkpoint-last.pt")
    return _train(ctx, "--resume")


def _other_backbone_checkpoint(ctx) -> list:
    run = ctx.run_dir("resnet34")
    run.mkdir(parents=True)
    shutil.copy(ctx.checkpoint, run / "checkpoint-last.pt")  # a resnet18 checkpoint
    return _train(ctx, "--resume", backbone="resnet34")


def _file_in_the_way(ctx) -> Path:
    f = ctx.tmp / "a-file"
    f.write_text("not a directory")
    return f


def _blank_capture(ctx) -> Path:
    """The capture with every image replaced by a grey one (no hand anywhere)."""
    for png in ctx.capture().glob("images/*/*.png"):
        cv2.imwrite(str(png), np.full((160, 160, 3), 90, np.uint8))
    return ctx.capture()


CAM, F = "cam01", "000001"
CASES = [
    # ---------------------------------------------------------------- captures: capture.json
    Case("capture directory missing", lambda c: ["prepare", c.tmp / "nope", "--out", c.tmp / "out"], USAGE,
         ["nope", "no such capture directory"], absent=["out"]),
    Case("capture.json not JSON", lambda c: ((c.capture() / "capture.json").write_text("{ not json"), _prep(c))[1],
         USAGE,
         ["capture.json", "not valid JSON"], absent=["out"]),
    Case("unsupported format version", lambda c: _prep(c, c.write_doc({**c.doc(), "version": 2})), USAGE,
         ["capture.json", "version 2 is not supported"], absent=["out"]),
    Case("NaN in the intrinsics", lambda c: _prep(c, c.edit_cameras(
        lambda d: d["cameras"][2]["K"][0].__setitem__(2, float("nan")))), USAGE,
         ["capture.json", "camera cam02", "NaN"], absent=["out"]),
    Case("R is not a rotation", lambda c: _prep(c, c.edit_cameras(
        lambda d: d["cameras"][1].__setitem__("R", [[2, 0, 0], [0, 1, 0], [0, 0, 1]]))), USAGE,
         ["capture.json", "camera cam01", "R is not a rotation"], absent=["out"]),
    Case("duplicate camera names", lambda c: _prep(c, c.edit_cameras(
        lambda d: d["cameras"][3].__setitem__("name", "cam00"))), USAGE,
         ["capture.json", "cam00", "used by more than one camera"], absent=["out"]),
    Case("image pattern outside the capture", lambda c: _prep(c, c.edit_cameras(
        lambda d: d["cameras"][0].__setitem__("images", "../../../../etc/{frame}"))), USAGE,
         ["capture.json", "camera cam00", "points outside the capture directory"], absent=["out"]),
    Case("absolute image path", lambda c: ["validate", c.edit_cameras(
        lambda d: d["cameras"][0].__setitem__("images", "/etc/{frame}"))], FAILED,
         ["capture.json", "camera cam00", "points outside the capture directory"]),
    Case("frame id with a path in it", lambda c: _prep(c, c.write_doc({**c.doc(), "frames": ["000000", "../x", "000002"]})),
         USAGE, ["capture.json", "frame ../x", "path separator"], absent=["out"]),
    # ---------------------------------------------------------------- captures: images and videos
    Case("truncated JPEG (validate)", lambda c: ["validate", c.jpeg_capture(truncate=f"{CAM}/{F}")], FAILED,
         [f"{CAM}/{F}.jpg", f"frame {F}", f"camera {CAM}", "truncated JPEG"]),
    Case("truncated JPEG (prepare)", lambda c: _prep(c, c.jpeg_capture(truncate=f"{CAM}/{F}")), OK,
         quarantined=[(F, CAM, "unreadable (truncated JPEG")]),
    Case("corrupt PNG", lambda c: ((c.capture() / "images" / CAM / f"{F}.png").write_bytes(b"\x89PNG\r\n\x1a\n junk"),
                                   _prep(c))[1], OK, quarantined=[(F, CAM, "image unreadable")]),
    Case("missing image", lambda c: ((c.capture() / "images" / "cam02" / "000000.png").unlink(), _prep(c))[1], OK,
         quarantined=[("000000", "cam02", "image missing")]),
    Case("empty image", lambda c: ((c.capture() / "images" / "cam03" / "000002.png").write_bytes(b""), _prep(c))[1],
         OK, quarantined=[("000002", "cam03", "empty file")]),
    Case("image of another size", lambda c: (cv2.imwrite(str(c.capture() / "images" / "cam00" / "000002.png"),
                                                         np.zeros((40, 50, 3), np.uint8)), _prep(c))[1], OK,
         quarantined=[("000002", "cam00", "image is 50x40 but the calibration says 160x160")]),
    Case("truncated video (validate)", lambda c: ["validate", c.video_capture(damage=False)], FAILED,
         ["cam01.mp4", "camera cam01", "no frame of the video can be decoded"]),
    Case("damaged video frame (validate)", lambda c: ["validate", c.video_capture(damage=True)], FAILED,
         ["cam01.mp4", "camera cam01", "frame decodes with errors"]),
    Case("damaged video frame (prepare)", lambda c: _prep(c, c.video_capture(damage=True)), OK,
         quarantined=[(None, "cam01", "damaged video frame")]),
    # ---------------------------------------------------------------- ground truth
    Case("ground truth pickled", lambda c: (np.savez(c.capture() / "ground_truth.npz",
                                                     joints_world=np.array([{"a": 1}], dtype=object)), _prep(c))[1],
         USAGE, ["ground_truth.npz", "unreadable ground truth"], absent=["out"]),
    Case("ground truth of the wrong shape", lambda c: _prep(c, c.ground_truth(joints_world=np.zeros((2, 21, 3)))),
         USAGE, ["ground_truth.npz", "joints_world has shape (2, 21, 3), expected (3, 21, 3)"], absent=["out"]),
    Case("ground truth file missing", lambda c: ((c.capture() / "ground_truth.npz").unlink(), _prep(c))[1], USAGE,
         ["ground_truth.npz", "not found"], absent=["out"]),
    # ---------------------------------------------------------------- OpenPose weights
    Case("OpenPose weights missing", lambda c: _prep(c, None, "--labeler", "openpose", "--weights",
                                                     c.tmp / "missing.pth"), USAGE,
         ["missing.pth", "not found"], absent=["out"]),
    Case("OpenPose weights are junk", lambda c: _prep(c, None, "--labeler", "openpose", "--weights", c.weights("junk")),
         FAILED, ["LabelShard failed", "junk.pth", "not a PyTorch file"]),
    Case("OpenPose weights are a malicious pickle", lambda c: _prep(c, None, "--labeler", "openpose", "--weights",
                                                                   c.weights("evil")),
         FAILED, ["LabelShard failed", "evil.pth", "refused"]),
    Case("OpenPose weights of another network", lambda c: _prep(c, None, "--labeler", "openpose", "--weights",
                                                               c.weights("wrong-keys")),
         FAILED, ["wrong-keys.pth", "do not match the OpenPose hand network layout"]),
    Case("OpenPose weights with the wrong pinned sha256",
         lambda c: ((c.tmp / "pin.cfg").write_text(f"[OpenPoseLabeler]\nweights_path = {c.weights('good')}\n"
                                                   f"weights_sha256 = {'0' * 64}\n"),
                    _prep(c, None, "--labeler", "openpose"))[1],
         FAILED, ["good.pth", "wrong SHA-256"], env={"LUIGI_CONFIG_PATH": "pin.cfg"}),
    # ---------------------------------------------------------------- parameters
    Case("frames per shard 0", lambda c: _prep(c, None)[:-4] + ["--frames-per-shard", "0"], USAGE,
         ["frames_per_shard (--frames-per-shard) must be at least 1, got 0"], absent=["out"]),
    Case("crop size 8", lambda c: _prep(c)[:-2] + ["--crop-size", "8"], USAGE, ["crop_size", "got 8"],
         absent=["out"]),
    Case("outlier rate 1.5", lambda c: _prep(c, None, "--labeler", "noisy-gt", "--noise-outlier-rate", "1.5"), USAGE,
         ["noise_outlier_rate", "got 1.5"], absent=["out"]),
    Case("zero workers", lambda c: _prep(c, None, "--workers", "0"), USAGE, ["--workers", "must be at least 1"],
         absent=["out"]),
    Case("steps -3", lambda c: _train(c)[:-4] + ["--steps", "-3", "--batch-size", "1"], USAGE,
         ["steps (--steps) must be at least 1, got -3"], absent=["train"]),
    Case("batch size 0", lambda c: _train(c)[:-2] + ["--batch-size", "0"], USAGE,
         ["batch_size (--batch-size) must be at least 1, got 0"], absent=["train"]),
    Case("learning rate NaN", lambda c: _train(c, "--lr", "nan"), USAGE, ["lr (--lr) must be a positive finite"],
         absent=["train"]),
    Case("weak supervision by a camera the capture does not have", lambda c: _train(c, "--weak-camera", "cam99"),
         USAGE, [".h5", "no camera 'cam99' for weak supervision", "cam00"], absent=["train"]),
    Case("synthetic capture of 0 cameras", lambda c: ["synth", c.tmp / "syn", "--cameras", "0"], USAGE,
         ["--cameras", "must be at least 1"], absent=["syn"]),
    Case("central scheduler unreachable", lambda c: _prep(c, None, "--scheduler-host", "127.0.0.1",
                                                          "--scheduler-port", "9"), USAGE,
         ["cannot reach the central scheduler", "127.0.0.1:9"], absent=["out"]),
    # ---------------------------------------------------------------- outputs
    Case("output directory under a file", lambda c: _prep(c, None)[:2] + ["--out", _file_in_the_way(c) / "out"],
         USAGE, ["a-file is a file"]),
    Case("training output is a file", lambda c: ["train", "--dataset", c.dataset, "--out", _file_in_the_way(c)],
         USAGE, ["a-file", "must be a directory"]),
    Case("infer output under a file", lambda c: ["infer", "--checkpoint", c.checkpoint, "--capture", c.capture(),
                                                 "--out", _file_in_the_way(c) / "pred.json"], USAGE,
         ["a-file is a file"]),
    # ---------------------------------------------------------------- datasets and checkpoints
    Case("dataset index missing", lambda c: _train(c, dataset=c.tmp / "none.json"), USAGE,
         ["none.json", "dataset index not found"], absent=["train"]),
    Case("dataset index is not JSON", lambda c: ((c.tmp / "bad.json").write_text("[1,"),
                                                 _train(c, dataset=c.tmp / "bad.json"))[1], USAGE,
         ["bad.json", "not a dataset index"], absent=["train"]),
    Case("shard listed in the index is missing", lambda c: _train(c, dataset=c.index_copy(
        shard_edit=lambda p: p.unlink())), USAGE, ["shard listed in", "not found"], absent=["train"]),
    Case("truncated shard", lambda c: _train(c, dataset=c.index_copy(shard_edit=_truncate)), USAGE,
         ["dataset/labels-", ".h5", "truncated or corrupt"], absent=["train"]),
    Case("shard of another schema version", lambda c: _train(c, dataset=c.index_copy(
        shard_edit=lambda p: _set_attr(p, "schema_version", 7))), USAGE, ["shard schema version 7"],
         absent=["train"]),
    Case("no sample with a valid view", lambda c: _train(c, dataset=c.index_copy(shard_edit=_invalid_views)), USAGE,
         ["index.json", "no sample with a valid view"], absent=["train"]),
    Case("resume from a malicious checkpoint", _evil_checkpoint, FAILED,
         ["TrainModel failed", "checkpoint-last.pt", "refused"]),
    Case("resume from another backbone's checkpoint", _other_backbone_checkpoint, FAILED,
         ["TrainModel failed", "checkpoint-last.pt", "another architecture", "resnet18", "resnet34"]),
    Case("backbone weights are junk", lambda c: _train(c, "--backbone-weights", c.weights("junk")), FAILED,
         ["TrainModel failed", "junk.pth", "not a PyTorch file"]),
    Case("evaluate a junk checkpoint", lambda c: ["evaluate", "--checkpoint", c.weights("junk"), "--dataset", c.dataset,
                                                  "--out", c.tmp / "eval"], USAGE,
         ["junk.pth", "not a PyTorch file"], absent=["eval"]),
    Case("evaluate a malicious checkpoint", lambda c: ["evaluate", "--checkpoint", c.weights("evil"), "--dataset",
                                                       c.dataset, "--out", c.tmp / "eval"], USAGE,
         ["evil.pth", "refused"], absent=["eval"]),
    Case("infer on a capture without a hand", lambda c: ["infer", "--checkpoint", c.checkpoint, "--capture",
                                                         _blank_capture(c), "--out", c.tmp / "pred.json"], USAGE,
         ["no hand found in any view of any of the 3 frame(s) (12 of 12 views skipped"], absent=["pred.json"]),
    Case("infer on a truncated JPEG", lambda c: ["infer", "--checkpoint", c.checkpoint,
                                                 c.jpeg_capture(truncate=f"{CAM}/{F}") / "images" / CAM / f"{F}.jpg",
                                                 "--out", c.tmp / "pred.json"], USAGE,
         [f"{F}.jpg", "truncated JPEG"], absent=["pred.json"]),
]


def _log_case(case: Case, result, tmp_path: Path) -> None:
    """With HAMUCO_CATALOGUE_LOG=<file>, append what the user saw (for the documentation of the catalogue)."""
    log = os.environ.get("HAMUCO_CATALOGUE_LOG")
    if not log:
        return
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and "%|" not in ln]
    said = [ln for ln in lines if "error" in ln.lower()] or lines[-1:]
    if case.status == OK:
        reasons = []
        for report in tmp_path.glob("out/**/quarantine.json"):
            reasons += [f"{e['frame']}/{e['camera']}: {e['reason']}" for e in json.loads(report.read_text())["entries"]
                        if e["action"] == "skipped"]
        said = said + reasons[:2]
    with open(log, "a") as f:
        f.write(json.dumps({"case": case.name, "status": result.returncode, "said": said[:3]}) + "\n")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, small_capture, tiny_dataset, tiny_checkpoint, tmp_path):
    ctx = Ctx(tmp_path, small_capture.root, tiny_dataset, tiny_checkpoint)
    args = case.make(ctx)
    env = clean_env(**{k: str(tmp_path / v) if k == "LUIGI_CONFIG_PATH" else v for k, v in case.env.items()})
    result = run_cli(*args, env=env, timeout=300)
    assert result.returncode == case.status, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert "weights_only" not in result.stderr  # never the advice to load an untrusted pickle
    assert not os.path.exists("/tmp/hamuco-pwned")
    for text in case.says:
        assert text in result.stderr + result.stdout, (text, result.stderr[-3000:])
    if case.status != OK:
        assert result.stderr.strip(), "a refusal says why"
    for rel in case.absent:
        assert not (tmp_path / rel).exists(), f"{rel} was written by a refused run"
    assert not temporaries(tmp_path)
    _log_case(case, result, tmp_path)
    if case.quarantined:
        (index,) = (tmp_path / "out").glob("dataset-*.json")
        reports = json.loads(index.read_text())["quarantine"]
        entries = [e for r in reports for e in json.loads(Path(r["report"]).read_text())["entries"]]
        skipped = [e for e in entries if e["action"] == "skipped"]
        for frame, camera, reason in case.quarantined:
            hits = [e for e in skipped if e["camera"] == camera and (frame is None or e["frame"] == frame)
                    and reason in e["reason"]]
            assert hits, (frame, camera, reason, skipped)
            assert all(f"camera {camera}" in e["reason"] or e["camera"] == camera for e in hits)
        # every view that is not valid in a shard is listed in the report
        for r in reports:
            for shard in Path(r["report"]).parent.glob("shard-*.h5"):
                with h5py.File(shard) as f:
                    valid, frames = f["view_valid"][()], [x.decode() for x in f["frame_ids"][()]]
                    cams = [x.decode() for x in f["camera_names"][()]]
                listed = {(e["frame"], e["camera"]) for e in entries if e["action"] in ("skipped", "masked")}
                for i, j in zip(*np.nonzero(~valid)):
                    assert (frames[i], cams[j]) in listed, (frames[i], cams[j])


def test_the_catalogue_is_long_enough():
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
