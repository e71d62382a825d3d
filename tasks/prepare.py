"""Luigi tasks of data preparation. Each is requires/output/run; the work is in ``pipeline``.

    SyntheticCapture           the demo capture (or any synthetic one)
    ValidateCapture            capture.json-level errors stop here; image problems are quarantined
    DetectHands    (per shard) MediaPipe boxes, cross-view consistency, triangulated recovery
    LabelShard     (per shard) crops, pseudo labels, multi-view refinement → HDF5 shard
    CaptureReport              quarantine report (JSON + table) and the list of a capture's shards
    BootstrapLabels            (with --bootstrap) a capture's shards again, with a multi-view
                               bootstrapped (and optionally smoothed) label version beside the raw one
    PrepareDataset             all captures → dataset index with train/val/test split

Outputs live under ``<out>/<capture name>-<content hash>/``; detection and label directories
carry a hash of every parameter that determines them (and of the weights), so a new labeler
or weights file writes a new version beside the old one. Parameters can be set in luigi.cfg
sections named after the task classes (values given to PrepareDataset propagate to the tasks
it requires) or on the command line:

    python -m luigi --module tasks PrepareDataset --captures '["demo_output/capture"]' \\
        --out demo_output/prepared --local-scheduler
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path

import luigi

from model.atomic import atomic_write_text
from model.errors import HamucoError
from pipeline.capture import Capture
from pipeline.prepare import (DetectorParams, RefineParams, append_run_log, capture_key, detect_frames,
                              detections_from_json, detections_to_json, format_quarantine, make_labeler,
                              open_capture, quarantine_report, remove_stale_temporaries, shard_frames,
                              split_shards, version_hash, write_json, write_label_shard)
from pipeline.provenance import StageTimes, code_version
from pipeline.validate import capture_level_errors, validate_capture

from .base import HamucoTask, at_least, in_range, positive_finite

_WEIGHTS_SHA: dict = {}


class SyntheticCapture(HamucoTask):
    """Generate a synthetic capture (the embedded demo default unless told otherwise)."""

    dest = luigi.Parameter(description="capture directory to write")
    cameras = luigi.IntParameter(default=8)
    frames = luigi.IntParameter(default=12)
    seed = luigi.IntParameter(default=0)
    image_size = luigi.IntParameter(default=256)
    rig = luigi.ChoiceParameter(choices=["ring", "dome"], default="ring")
    occluders = luigi.IntParameter(default=0)
    hand_model = luigi.OptionalParameter(default=None)
    distance = luigi.FloatParameter(default=0.65, description="metres from the hand to the cameras")
    keyframe_every = luigi.IntParameter(default=15, description="a new key pose every this many frames "
                                        "(1: an independent pose per frame)")
    pose_prior = luigi.ChoiceParameter(choices=["default", "wide"], default="default",
                                       description="'wide': grasps, pinches, pointing, spread, fist and uniform poses")
    shape_sigma = luigi.FloatParameter(default=0.8, description="spread of the hand-shape coefficients")
    roll_deg = luigi.FloatParameter(default=8.0, description="camera roll about its axis, uniform in +-this")
    checks = {"cameras": at_least(1), "frames": at_least(1), "image_size": in_range(32, 4096),
              "occluders": in_range(0, 16), "keyframe_every": at_least(1), "shape_sigma": in_range(0, 3),
              "roll_deg": in_range(0, 180), "distance": in_range(0.2, 5)}

    def output(self):
        return luigi.LocalTarget(os.path.join(self.dest, "capture.json"))

    def run(self):
        from pipeline.synthetic import SynthConfig, generate_capture

        cfg = SynthConfig(cameras=self.cameras, frames=self.frames, seed=self.seed, image_size=self.image_size,
                          rig=self.rig, occluders=self.occluders, hand_model=self.hand_model, distance=self.distance,
                          keyframe_every=self.keyframe_every, pose_prior=self.pose_prior,
                          shape_sigma=self.shape_sigma, roll_deg=self.roll_deg)
        generate_capture(self.dest, cfg, overwrite=True, workers=min(2, os.cpu_count() or 1))


class _CaptureTask(HamucoTask):
    capture = luigi.Parameter(description="capture directory, or hanco:<root>#<sequence>")
    out = luigi.Parameter(description="root directory of prepared outputs")
    allow_external_paths = luigi.BoolParameter(default=False, significant=False,
                                               description="let capture.json name files outside the capture "
                                               "directory (absolute paths, '..')")

    @cached_property
    def capture_obj(self) -> Capture:
        return open_capture(self.capture, allow_external_paths=self.allow_external_paths)

    @property
    def capture_dir(self) -> Path:
        return Path(self.out) / capture_key(self.capture_obj)


class _DetectParams(HamucoTask):
    frames_per_shard = luigi.IntParameter(default=64, description="frames per shard (the unit of parallel work)")
    max_num_hands = luigi.IntParameter(default=2)
    min_detection_confidence = luigi.FloatParameter(default=0.5)
    model_complexity = luigi.IntParameter(default=1)
    margin = luigi.FloatParameter(default=0.3, description="box margin around the landmarks, per side")
    checks = {"frames_per_shard": at_least(1), "max_num_hands": in_range(1, 8),
              "min_detection_confidence": in_range(0, 1), "model_complexity": in_range(0, 1),
              "margin": in_range(0, 4)}

    @property
    def detector_params(self) -> DetectorParams:
        return DetectorParams(self.max_num_hands, self.min_detection_confidence, self.model_complexity, self.margin)

    @property
    def detect_version(self) -> str:
        import mediapipe

        return version_hash("detect", self.detector_params.__dict__, self.frames_per_shard, mediapipe.__version__)


class OpenPoseLabeler(luigi.Config):
    """Where the OpenPose hand weights come from ([OpenPoseLabeler] in luigi.cfg)."""

    weights_path = luigi.OptionalParameter(default=None, description="hand_pose_model.pth on disk")
    weights_url = luigi.OptionalParameter(default=None, description="URL of hand_pose_model.pth")
    weights_sha256 = luigi.OptionalParameter(default=None, description="expected sha256 of the weights")
    weights_dir = luigi.OptionalParameter(default=None, description="download cache (default TORCH_HOME/hub)")
    weights_file_name = luigi.Parameter(default="hand_pose_model.pth", description="file name in the cache")


class _LabelParams(HamucoTask):
    labeler = luigi.ChoiceParameter(choices=["mediapipe", "openpose", "imported", "noisy-gt"], default="mediapipe")
    crop_size = luigi.IntParameter(default=256)
    refine_threshold_px = luigi.FloatParameter(default=15.0)
    noise_sigma_px = luigi.FloatParameter(default=0.0, description="noisy-gt labeler: Gaussian noise, pixels")
    noise_outlier_rate = luigi.FloatParameter(default=0.0, description="noisy-gt labeler: fraction of outliers")
    noise_confidence = luigi.ChoiceParameter(choices=["informative", "uninformative"], default="informative",
                                             description="noisy-gt labeler: does confidence reflect the error")
    openpose_precision = luigi.ChoiceParameter(choices=["auto", "fp32", "fast"], default="auto",
                                               description="OpenPose: auto/fast = the fastest path of this machine "
                                               "(bf16 on a CPU with native bf16, NNPACK fp32 on other CPUs, fp16 on "
                                               "a GPU), fp32 = the published algorithm; what runs is part of the "
                                               "label version")
    checks = {"crop_size": in_range(32, 2048), "refine_threshold_px": positive_finite(),
              "noise_sigma_px": in_range(0, 1e4), "noise_outlier_rate": in_range(0, 1)}

    @property
    def noise(self) -> dict:
        return {"sigma_px": self.noise_sigma_px, "outlier_rate": self.noise_outlier_rate,
                "confidence": self.noise_confidence}

    @property
    def weights(self) -> OpenPoseLabeler:
        return OpenPoseLabeler()

    @property
    def refine_params(self) -> RefineParams:
        return RefineParams(threshold_px=self.refine_threshold_px)

    def weights_identity(self) -> str:
        """What identifies the labeler's weights before they are loaded (for output paths)."""
        if self.labeler != "openpose":
            import mediapipe

            return {"mediapipe": f"mediapipe-{mediapipe.__version__}", "imported": "hanco-published"}.get(
                self.labeler, "ground-truth")
        w = self.weights
        if w.weights_sha256:
            return w.weights_sha256
        if w.weights_path:
            path = Path(w.weights_path)
            if not path.is_file():
                raise HamucoError(f"{path}: OpenPose weights not found (weights_path)")
            key = (str(path), path.stat().st_size, path.stat().st_mtime_ns)
            if key not in _WEIGHTS_SHA:
                _WEIGHTS_SHA[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            return _WEIGHTS_SHA[key]
        return f"url:{w.weights_url or 'default'}/{w.weights_file_name}"

    @property
    def label_version(self) -> str:
        noise = self.noise if self.labeler == "noisy-gt" else None
        # a fast OpenPose path gives other labels: its own version (fp32 keeps the earlier one; bf16 keeps
        # the version the fast path had when it was the only one)
        fast = []
        if self.labeler == "openpose":
            from pipeline.labelers.openpose import LABEL_VERSION_TAG, resolve_implementation

            tag = LABEL_VERSION_TAG[resolve_implementation(self.openpose_precision, "cpu")[0]]
            fast = ["openpose-precision", tag] if tag else []
        return version_hash("label", self.labeler, self.weights_identity(), self.crop_size,
                            self.refine_params.__dict__, *([noise] if noise else []), *fast)


class ValidateCapture(_CaptureTask):
    """Validate a capture; errors in capture.json stop the pipeline, image problems are quarantined later."""

    def output(self):
        return luigi.LocalTarget(str(self.capture_dir / "validation.json"))

    def run(self):
        # Images are not decoded here: detection decodes every view anyway and quarantines the missing,
        # unreadable, truncated and mis-sized ones with their reasons (a third decode of every image
        # cost ~4% of a preparation). `hamuco validate` still checks every image.
        report = validate_capture(self.capture_obj, check_images=False)
        fatal = capture_level_errors(report)
        if fatal:
            raise HamucoError(f"{self.capture}: invalid capture:\n  " + "\n  ".join(str(p) for p in fatal))
        write_json(Path(self.output().path), {**report.to_dict(),
                                              "images": "checked per view by DetectHands (see the quarantine)"})


class DetectHands(_CaptureTask, _DetectParams):
    """Hand boxes of one shard's frames (JSON)."""

    shard = luigi.IntParameter()
    resources = {"detection": 1}

    def requires(self):
        return self.clone(ValidateCapture)

    def output(self):
        return luigi.LocalTarget(str(self.capture_dir / f"detect-{self.detect_version}" / f"shard-{self.shard:05d}.json"))

    def run(self):
        frames = shard_frames(self.capture_obj.num_frames, self.frames_per_shard)[self.shard]
        out = Path(self.output().path)  # once: the output path hashes every file of the capture
        remove_stale_temporaries(out)
        times = StageTimes()
        dets = detect_frames(self.capture_obj, frames, self.detector_params, times=times)
        meta = {"detector": self.detector_params.__dict__, "code_version": code_version(), "capture": self.capture,
                "seconds": times.to_json()}
        write_json(out, detections_to_json(frames, dets, meta))
        append_run_log(Path(self.out), self.task_family, out)


class LabelShard(_CaptureTask, _DetectParams, _LabelParams):
    """Crops, pseudo labels and refinement of one shard's frames → HDF5 shard (+ its quarantine entries)."""

    shard = luigi.IntParameter()
    resources = {"labeling": 1}

    def requires(self):
        return self.clone(DetectHands)

    @property
    def label_dir(self) -> Path:
        return self.capture_dir / f"labels-{self.labeler}-{self.detect_version}-{self.label_version}"

    def output(self):
        base = self.label_dir / f"shard-{self.shard:05d}"
        return {"shard": luigi.LocalTarget(str(base) + ".h5"),
                "quarantine": luigi.LocalTarget(str(base) + ".quarantine.json")}

    def run(self):
        doc = json.loads(Path(self.input().path).read_text())
        frames, dets = doc["frames"], detections_from_json(doc)
        out = self.output()  # once: the output paths hash every file of the capture
        w = self.weights
        times = StageTimes()
        with times("labeler_load"):
            labeler = make_labeler(self.labeler, w.weights_path, w.weights_url, w.weights_sha256, w.weights_dir,
                                   w.weights_file_name, noise=self.noise, precision=self.openpose_precision)
        try:
            params = getattr(labeler, "params", {"source": "rgb_2D_keypoints"})
            sha = getattr(labeler, "weights_sha256", "hanco-published")
            provenance = {"detector": doc["meta"]["detector"], "detect_version": self.detect_version,
                          "label_version": self.label_version, "frames": [frames[0], frames[-1] + 1],
                          "refine": self.refine_params.__dict__, "shard": self.shard}
            entries = write_label_shard(Path(out["shard"].path), self.capture_obj, frames, dets, labeler,
                                        self.labeler, params, sha, self.crop_size, self.refine_params, provenance,
                                        times=times)
        finally:
            if labeler is not None and hasattr(labeler, "close"):
                labeler.close()
        remove_stale_temporaries(Path(out["quarantine"].path))
        write_json(Path(out["quarantine"].path), {"frames": frames, "entries": entries,
                                                  "seconds": times.to_json(), "items": times.items})
        append_run_log(Path(self.out), self.task_family, Path(out["shard"].path))


class CaptureReport(_CaptureTask, _DetectParams, _LabelParams):
    """Quarantine report (JSON + readable table) and shard list of one capture."""

    def requires(self):
        n = len(shard_frames(self.capture_obj.num_frames, self.frames_per_shard))
        return [self.clone(LabelShard, shard=i) for i in range(n)]

    def output(self):
        d = self.clone(LabelShard, shard=0).label_dir
        return {"report": luigi.LocalTarget(str(d / "quarantine.json")),
                "table": luigi.LocalTarget(str(d / "quarantine.txt")),
                "shards": luigi.LocalTarget(str(d / "shards.json"))}

    def run(self):
        entries, shards = [], []
        ranges = shard_frames(self.capture_obj.num_frames, self.frames_per_shard)
        for i, target in enumerate(self.input()):
            entries += json.loads(Path(target["quarantine"].path).read_text())["entries"]
            shards.append({"path": target["shard"].path, "capture": self.capture_obj.name, "shard": i,
                           "first_frame": ranges[i].start, "frames": len(ranges[i])})
        report = quarantine_report(self.capture_obj, entries, self.capture_obj.num_frames * self.capture_obj.num_views)
        out = self.output()
        write_json(Path(out["report"].path), report)
        atomic_write_text(out["table"].path, format_quarantine(report, limit=10_000) + "\n")
        write_json(Path(out["shards"].path), shards)


class _BootstrapParams(HamucoTask):
    """Multi-view bootstrapping of the labels (``pipeline/bootstrap.py``); the RANSAC threshold is the
    refinement's (``refine_threshold_px``)."""

    bootstrap_disagree_px = luigi.FloatParameter(default=10.0, description="bootstrapping: a label farther than "
                                                 "this (image px) from the multi-view reprojection is replaced")
    bootstrap_min_inliers = luigi.IntParameter(default=3, description="bootstrapping: views that must agree on a "
                                               "joint before it is reprojected into the others")
    smooth = luigi.BoolParameter(default=False, description="bootstrapping: smooth the triangulated joints over "
                                 "the capture's frames first")
    smooth_window = luigi.IntParameter(default=7, description="smoothing: frames of the local fit (odd)")
    smooth_outlier_mm = luigi.FloatParameter(default=20.0, description="smoothing: a triangulated joint this far "
                                             "from its neighbours' fit is rejected")
    checks = {"bootstrap_disagree_px": positive_finite(), "bootstrap_min_inliers": in_range(2, 1000),
              "smooth_window": (lambda v: v >= 3 and v % 2 == 1, "an odd number of frames >= 3"),
              "smooth_outlier_mm": positive_finite()}

    @property
    def bootstrap_params(self):
        from pipeline.bootstrap import BootstrapParams

        return BootstrapParams(threshold_px=self.refine_threshold_px, disagree_px=self.bootstrap_disagree_px,
                               min_inliers=self.bootstrap_min_inliers, smooth=self.smooth,
                               smooth_window=self.smooth_window, outlier_mm=self.smooth_outlier_mm)


class BootstrapLabels(_CaptureTask, _DetectParams, _LabelParams, _BootstrapParams):
    """A capture's shards with the bootstrapped label version beside the labeler's (a new label directory:
    the raw shards are never touched), the quarantine report carried over, and ``bootstrap.json``
    (per camera: labels kept, replaced, filled; with ground truth, the median 2D errors)."""

    def requires(self):
        return self.clone(CaptureReport)

    @property
    def label_dir(self) -> Path:
        raw = Path(self.input()["shards"].path).parent
        return raw.with_name(f"{raw.name}-boot-{version_hash('bootstrap', self.bootstrap_params.to_json())}")

    def output(self):
        d = self.label_dir
        return {"report": luigi.LocalTarget(str(d / "quarantine.json")),
                "table": luigi.LocalTarget(str(d / "quarantine.txt")),
                "shards": luigi.LocalTarget(str(d / "shards.json")),
                "bootstrap": luigi.LocalTarget(str(d / "bootstrap.json"))}

    def run(self):
        from pipeline.bootstrap import bootstrap_shards

        raw = json.loads(Path(self.input()["shards"].path).read_text())
        out = self.output()
        d = self.label_dir
        d.mkdir(parents=True, exist_ok=True)
        paths = [str(d / Path(s["path"]).name) for s in raw]
        provenance = {"params": self.bootstrap_params.to_json(), "raw_label_dir": str(Path(raw[0]["path"]).parent)
                      if raw else None, "code_version": code_version()}
        stats = bootstrap_shards(self.capture_obj, [s["path"] for s in raw], paths, self.bootstrap_params,
                                 provenance)
        write_json(Path(out["bootstrap"].path), stats)
        write_json(Path(out["report"].path), json.loads(Path(self.input()["report"].path).read_text()))
        atomic_write_text(out["table"].path, Path(self.input()["table"].path).read_text())
        write_json(Path(out["shards"].path), [dict(s, path=p) for s, p in zip(raw, paths)])  # last
        append_run_log(Path(self.out), self.task_family, d)


class PrepareDataset(_DetectParams, _LabelParams, _BootstrapParams):
    """Every capture through detection, labelling and refinement into shards, then the dataset index."""

    captures = luigi.ListParameter(description="capture directories or hanco:<root>#<seq> references")
    out = luigi.Parameter(description="root directory of prepared outputs")
    split_by = luigi.ChoiceParameter(choices=["capture", "frame", "hanco"], default="frame")
    val_fraction = luigi.FloatParameter(default=0.1)
    test_fraction = luigi.FloatParameter(default=0.1)
    allow_external_paths = luigi.BoolParameter(default=False, significant=False,
                                               description="let capture.json name files outside the capture "
                                               "directory (absolute paths, '..')")
    bootstrap = luigi.BoolParameter(default=False, description="also write a multi-view bootstrapped label "
                                    "version (BootstrapLabels) and index its shards; training chooses with labels")
    checks = {"val_fraction": in_range(0, 1, high_open=True), "test_fraction": in_range(0, 1, high_open=True),
              "captures": (lambda v: len(v) > 0, "a non-empty list of captures")}

    def check_parameters(self) -> None:
        super().check_parameters()
        if self.val_fraction + self.test_fraction >= 1:
            raise HamucoError(f"{self.task_family}: val_fraction + test_fraction must be below 1 (nothing would be "
                              f"left to train on), got {self.val_fraction} + {self.test_fraction}")
        if self.smooth and not self.bootstrap:
            raise HamucoError(f"{self.task_family}: smoothing (--smooth) feeds the bootstrapped labels: it needs "
                              "--bootstrap")

    def requires(self):
        return [self.clone(BootstrapLabels if self.bootstrap else CaptureReport, capture=c) for c in self.captures]

    def output(self):
        keys = [Path(r.output()["shards"].path).parent.as_posix() for r in self.requires()]
        h = version_hash("dataset", keys, self.split_by, self.val_fraction, self.test_fraction)
        return luigi.LocalTarget(os.path.join(self.out, f"dataset-{h}.json"))

    def run(self):
        shards, reports = [], []
        for target in self.input():
            shards += json.loads(Path(target["shards"].path).read_text())
            rep = json.loads(Path(target["report"].path).read_text())
            reports.append({"capture": rep["capture"], "views": rep["views"], "counts": rep["counts"],
                            "report": target["report"].path, "table": target["table"].path})
        index = {
            "format": "hamuco-dataset-index", "version": 1, "code_version": code_version(),
            "labeler": self.labeler, "crop_size": self.crop_size,
            "label_versions": ["raw", "bootstrapped"] if self.bootstrap else ["raw"],
            **({"bootstrap": dict(self.bootstrap_params.to_json(),
                                  reports=[t["bootstrap"].path for t in self.input()])} if self.bootstrap else {}),
            "split": {"by": self.split_by, "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                      **split_shards(shards, self.split_by, self.val_fraction, self.test_fraction)},
            "shards": shards, "quarantine": reports,
        }
        write_json(Path(self.output().path), index)


def _train_option_names() -> set[str]:
    from .train import TrainModel  # (tasks.train imports this module)

    return {name for name, _ in TrainModel.get_params()}


class Demo(HamucoTask):
    """The main job on the embedded synthetic capture: generate, prepare, train briefly, evaluate, report."""

    out = luigi.Parameter(default="demo_output")
    frames_per_shard = luigi.IntParameter(default=3)
    crop_size = luigi.IntParameter(default=64, description="crop size of the demo's shards (64: a short run on "
                                   "2 cores gets past the untrained network)")
    train_steps = luigi.IntParameter(default=300)
    batch_size = luigi.IntParameter(default=2)
    lr = luigi.FloatParameter(default=1e-3)
    backbone = luigi.ChoiceParameter(choices=["resnet18", "resnet34", "resnet50"], default="resnet18")
    precision = luigi.ChoiceParameter(choices=["auto", "bf16", "fp32"], default="auto",
                                      description="training and evaluation (auto: bf16 where the CPU computes it "
                                      "natively, else fp32)")
    train_options = luigi.DictParameter(default={}, description="further TrainModel options (e.g. "
                                        "{\"articulation\": \"pca\"}); empty: TrainModel's defaults")
    pretrain_steps = luigi.IntParameter(default=0, description="first pretrain the backbone this many steps on "
                                        "the demo's 2D pseudo labels (PretrainBackbone) and start training from it "
                                        "(and the keypoint head, with single_view_input keypoints or "
                                        "joint_features); 0: no pretraining")
    # TrainModel parameters the demo sets itself (its own parameters or fixed): not in train_options
    SETS_ITSELF = ("dataset", "out", "backbone", "steps", "batch_size", "lr", "checkpoint_every", "use_extrinsics",
                   "precision")
    checks = {"frames_per_shard": at_least(1), "train_steps": at_least(1), "batch_size": at_least(1),
              "pretrain_steps": at_least(0),
              "crop_size": in_range(32, 2048), "lr": positive_finite(),
              "train_options": (lambda v: set(v) <= _train_option_names() - set(Demo.SETS_ITSELF),
                                "TrainModel options other than " + ", ".join(SETS_ITSELF))}

    def check_parameters(self) -> None:
        super().check_parameters()
        if self.pretrain_steps and {"backbone_weights", "keypoint_head_weights"} & set(self.train_options):
            raise HamucoError(f"{self.task_family}: --pretrain-steps sets the backbone (and keypoint head) weights "
                              "itself; leave backbone_weights and keypoint_head_weights out of the train options")

    def requires(self):
        return SyntheticCapture(dest=os.path.join(self.out, "capture"))

    def output(self):
        return luigi.LocalTarget(os.path.join(self.out, "demo-result.json"))

    def run(self):
        from .train import TrainModel

        dataset = yield PrepareDataset(captures=[os.path.join(self.out, "capture")],
                                       out=os.path.join(self.out, "prepared"), frames_per_shard=self.frames_per_shard,
                                       crop_size=self.crop_size)
        options = dict(self.train_options)
        if self.pretrain_steps:
            from model.single_view import KEYPOINT_INPUTS

            from .train import PretrainBackbone, keypoint_head_beside

            weights = yield PretrainBackbone(dataset=dataset.path, out=os.path.join(self.out, "pretrain"),
                                             backbone=self.backbone, steps=self.pretrain_steps,
                                             batch_size=2 * self.batch_size, lr=self.lr,
                                             checkpoint_every=self.pretrain_steps, seed=options.get("seed", 0),
                                             confidence=options.get("confidence", "refined"),
                                             precision=self.precision)
            options["backbone_weights"] = weights.path
            if options.get("single_view_input") in KEYPOINT_INPUTS:
                options["keypoint_head_weights"] = keypoint_head_beside(weights.path)
        checkpoint = yield TrainModel(dataset=dataset.path, out=os.path.join(self.out, "training"),
                                      backbone=self.backbone, steps=self.train_steps, batch_size=self.batch_size,
                                      lr=self.lr, checkpoint_every=self.train_steps, use_extrinsics=True,
                                      precision=self.precision, **options)
        from .evaluate import EvaluateModel

        evaluation = yield EvaluateModel(checkpoint=checkpoint.path, dataset=dataset.path,
                                         out=os.path.join(self.out, "evaluation"), split="test",
                                         precision=self.precision)
        write_json(Path(self.output().path), {"dataset_index": dataset.path, "checkpoint": checkpoint.path,
                                              "metrics": evaluation["metrics"].path,
                                              "report": evaluation["report"].path})
