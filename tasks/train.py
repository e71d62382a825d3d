"""Luigi task of training: the work is model.trainer.Trainer over pipeline.dataset.ShardDataset.

    python -m luigi --module tasks TrainModel --dataset prepared/dataset-XXXX.json --out runs \\
        --backbone resnet50 --steps 1000 --local-scheduler

Parameters can be set in luigi.cfg section [TrainModel]. The output directory carries a hash of
the parameters and of the dataset index; a killed run started again resumes from its last
checkpoint exactly.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import luigi

from model.errors import HamucoError
from pipeline.prepare import version_hash
from pipeline.provenance import code_version

from .base import HamucoTask, at_least, in_range, positive_finite


class DatasetIndex(luigi.ExternalTask):
    """A dataset index written by PrepareDataset (hamuco prepare)."""

    path = luigi.Parameter()

    def output(self):
        return luigi.LocalTarget(self.path)


AUGMENTATION_OPTIONS = ("aug_rotation_deg", "aug_colour", "aug_blur_prob", "aug_occlusion_prob")
# options added after runs were named by their parameters: at these values a run keeps the name it had
NEUTRAL_OPTIONS = {"initial_orientation": "identity", "cross_view_warmup": "0", "view_keep_prob": "0.5",
                   "view_keep_anneal_steps": "0", "articulation": "full", "lr_schedule": "cosine",
                   "lr_warmup_steps": "0", "labels": "raw", "single_view_input": "gap", "keypoint_head_weights": "none",
                   "grad_clip": "0.0"}
# what a validation pass watches does not change the trained weights: not part of the run's name
VALIDATION_OPTIONS = ("validate_every", "val_dataset", "val_split", "val_samples")


class TrainModel(HamucoTask):
    dataset = luigi.Parameter(description="dataset index (JSON) from PrepareDataset")
    out = luigi.Parameter(description="root directory of training runs")
    backbone = luigi.ChoiceParameter(choices=["resnet18", "resnet34", "resnet50"], default="resnet50")
    backbone_weights = luigi.Parameter(default="none", description="imagenet, none, or a file path")
    hand_model = luigi.OptionalParameter(default=None, description="converted MANO .npz (default: procedural)")
    steps = luigi.IntParameter(default=1000)
    batch_size = luigi.IntParameter(default=8, description="view groups per step (official: 8 groups x 8 views)")
    lr = luigi.FloatParameter(default=3e-4)
    weight_decay = luigi.FloatParameter(default=1e-2)
    checkpoint_every = luigi.IntParameter(default=100)
    seed = luigi.IntParameter(default=0)
    num_workers = luigi.IntParameter(default=0)
    confidence = luigi.ChoiceParameter(choices=["refined", "raw"], default="refined")
    use_extrinsics = luigi.BoolParameter(default=False)
    precision = luigi.ChoiceParameter(choices=["auto", "bf16", "fp32"], default="auto",
                                      description="auto: bf16 CPU autocast where the CPU computes bf16 natively "
                                      "(AVX512_BF16/AMX: same loss, ~2x faster), fp32 elsewhere (emulated bf16 is "
                                      "10-18x slower); the choice is printed and recorded in the checkpoint")
    weak_camera = luigi.OptionalParameter(default=None, description="weakly supervised (seed C.4): the camera "
                                          "whose 2D ground truth replaces its labels (confidence 1)")
    consistency_weight = luigi.FloatParameter(default=1.0, description="weight of the multi-view consistency loss")
    distillation_weight = luigi.FloatParameter(default=1.0, description="weight of the distillation loss")
    alpha = luigi.FloatParameter(default=0.01, description="pose prior weight (seed B.4, official code)")
    gamma = luigi.FloatParameter(default=1.0, description="shape prior weight (official code 1; the seed's 100 is "
                                 "the other reading)")
    points = luigi.ChoiceParameter(choices=["mesh", "joints"], default="mesh",
                                   description="3D terms on the mesh vertices and joints (official) or joints only")
    distill_to = luigi.ChoiceParameter(choices=["fused", "interaction"], default="fused",
                                       description="distillation target: the fused multi-view result (official) "
                                       "or the view's own interaction output")
    branches = luigi.ChoiceParameter(choices=["both", "single"], default="both",
                                     description="'single': the ablation training only the single-view branch "
                                     "(its 2D and prior terms; no cross-view terms)")
    aug_rotation_deg = luigi.FloatParameter(default=0.0, description="augmentation: in-plane rotation of each "
                                            "crop, uniform in ±this many degrees (its camera turns alike)")
    aug_colour = luigi.FloatParameter(default=0.0, description="augmentation: brightness/contrast/saturation "
                                      "jitter strength (0 off; 0.3 = factors in 0.7..1.3)")
    aug_blur_prob = luigi.FloatParameter(default=0.0, description="augmentation: share of crops blurred")
    aug_occlusion_prob = luigi.FloatParameter(default=0.0, description="augmentation: share of crops with a "
                                              "random occluding rectangle")
    initial_orientation = luigi.ChoiceParameter(choices=["identity", "upright"], default="identity",
                                                description="global orientation the pose heads start from: the "
                                                "rest pose (official) or turned upright as cameras see a raised hand")
    articulation = luigi.ChoiceParameter(choices=["full", "pca"], default="full",
                                         description="pose heads: 16 free rotations (official) or the global "
                                         "orientation and pca_components coefficients around the mean pose")
    pca_components = luigi.IntParameter(default=12, description="principal components of the pca articulation")
    single_view_input = luigi.ChoiceParameter(choices=["gap", "keypoints", "joint_features"], default="gap",
                                              description="what the single view's heads read: the pooled H4 "
                                              "(official), beside it the 21 joints from a keypoint head, or "
                                              "beside both the features sampled at those joints")
    keypoint_head_weights = luigi.Parameter(default="none", description="with single_view_input=keypoints or "
                                            "joint_features: the "
                                            "2D pretraining's checkpoint-final.pt that starts the keypoint head")
    cross_view_warmup = luigi.IntParameter(default=0, description="steps over which consistency and distillation "
                                           "ramp up from 0 (0: from the start, official)")
    view_keep_prob = luigi.FloatParameter(default=0.5, description="view masking in the cross-view branch: "
                                          "probability of keeping each other view (1: off, the official code)")
    view_keep_anneal_steps = luigi.IntParameter(default=0, description="the keep probability rises linearly to 1 "
                                                "over these steps (0: constant)")
    labels = luigi.ChoiceParameter(choices=["raw", "bootstrapped"], default="raw",
                                   description="label version to train on: the labeler's (raw) or the multi-view "
                                   "bootstrapped one (a dataset prepared with --bootstrap; its own confidence)")
    lr_schedule = luigi.ChoiceParameter(choices=["cosine", "constant", "warmup-cosine"], default="cosine",
                                        description="learning-rate schedule: cosine to 0 over the run, constant, or "
                                        "a linear warm-up over lr_warmup_steps then cosine")
    lr_warmup_steps = luigi.IntParameter(default=0, description="steps of the warm-up of lr_schedule=warmup-cosine")
    grad_clip = luigi.FloatParameter(default=0.0, description="clip the gradients' total norm to this before each "
                                     "step (0: off, the official code); the norm before clipping goes to metrics.jsonl")
    validate_every = luigi.IntParameter(default=100, description="a validation pass every N steps on frames "
                                        "training never uses (0: none); validation.jsonl, TensorBoard, "
                                        "checkpoint-best.pt")
    val_dataset = luigi.OptionalParameter(default=None, description="dataset index of the validation pass "
                                          "(default: this dataset's val split)")
    val_split = luigi.ChoiceParameter(choices=["train", "val", "test"], default="val",
                                      description="split of the validation dataset")
    val_samples = luigi.IntParameter(default=16, description="view groups of the validation pass")
    checks = {"steps": at_least(1), "batch_size": at_least(1), "lr": positive_finite(),
              "aug_rotation_deg": in_range(0, 180), "aug_colour": in_range(0, 1, high_open=True),
              "aug_blur_prob": in_range(0, 1), "aug_occlusion_prob": in_range(0, 1),
              "weight_decay": in_range(0, 10), "checkpoint_every": at_least(1), "seed": in_range(0, 2**32 - 1),
              "num_workers": in_range(0, 64), "consistency_weight": in_range(0, 1e6),
              "distillation_weight": in_range(0, 1e6), "alpha": in_range(0, 1e6), "gamma": in_range(0, 1e6),
              "cross_view_warmup": at_least(0), "view_keep_prob": (lambda v: v is not None and 0 < v <= 1, "in (0, 1]"),
              "view_keep_anneal_steps": at_least(0), "pca_components": in_range(1, 45), "validate_every": at_least(0), "val_samples": at_least(1),
              "lr_warmup_steps": at_least(0), "grad_clip": in_range(0, 1e6)}

    def check_parameters(self) -> None:
        super().check_parameters()
        if self.lr_schedule == "warmup-cosine" and not 0 < self.lr_warmup_steps < self.steps:
            raise HamucoError(f"{self.task_family}: --lr-schedule warmup-cosine needs 0 < --lr-warmup-steps < "
                              f"--steps, got {self.lr_warmup_steps} and {self.steps}")
        if self.lr_schedule != "warmup-cosine" and self.lr_warmup_steps:
            raise HamucoError(f"{self.task_family}: --lr-warmup-steps belongs to --lr-schedule warmup-cosine "
                              f"(the schedule is {self.lr_schedule})")
        if self.keypoint_head_weights.lower() not in ("none", ""):
            if self.single_view_input not in ("keypoints", "joint_features"):
                raise HamucoError(f"{self.task_family}: --keypoint-head-weights belongs to --single-view-input "
                                  f"keypoints or joint_features (the input is {self.single_view_input})")
            if not Path(self.keypoint_head_weights).is_file():
                raise HamucoError(f"{self.task_family}: keypoint head weights {self.keypoint_head_weights} not found "
                                  "(a 2D pretraining's checkpoint-final.pt, beside its backbone.pt)")

    def requires(self):
        return DatasetIndex(path=self.dataset)

    def dataset_sha256(self) -> str:
        path = Path(self.dataset)
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""

    @property
    def run_dir(self) -> Path:
        digest = self.dataset_sha256()
        params = {k: v for k, v in self.to_str_params().items()
                  if k not in ("out", "num_workers") + VALIDATION_OPTIONS}
        for name in AUGMENTATION_OPTIONS:  # off: the run's name is the one it had before the option existed
            if getattr(self, name) == 0:
                params.pop(name, None)
        for name, neutral in NEUTRAL_OPTIONS.items():
            if params.get(name) == neutral:
                params.pop(name)
        if self.articulation == "full":
            params.pop("pca_components", None)
        weights = Path(self.backbone_weights)
        if self.backbone_weights.lower() not in ("none", "", "imagenet") and weights.is_file():
            # a weights file is named by its content too: new pretrained weights at the same path, a new run
            params["backbone_weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        head = Path(self.keypoint_head_weights)
        if self.keypoint_head_weights.lower() not in ("none", "") and head.is_file():
            params["keypoint_head_weights_sha256"] = hashlib.sha256(head.read_bytes()).hexdigest()
        return Path(self.out) / f"train-{self.backbone}-{version_hash(params, digest)}"

    @property
    def augmentation(self):
        from pipeline.dataset import Augmentation

        return Augmentation(rotation_deg=self.aug_rotation_deg, colour=self.aug_colour, blur_prob=self.aug_blur_prob,
                            occlusion_prob=self.aug_occlusion_prob)

    def output(self):
        from model.trainer import CHECKPOINT_FINAL

        return luigi.LocalTarget(str(self.run_dir / CHECKPOINT_FINAL))

    def run(self):
        import torch

        from model.inference import articulation_name, initial_network
        from model.losses import LossWeights
        from model.objective import HaMuCoObjective
        from model.precision import resolve_precision
        from model.trainer import TrainConfig, Trainer, keep_freed_memory_in_process
        from pipeline.dataset import ShardDataset, load_index
        from pipeline.evaluate import validation_pass

        keep_freed_memory_in_process()  # 5-15% shorter CPU steps (model/trainer.py)
        index = load_index(self.dataset)
        torch.manual_seed(self.seed)  # the network's initialisation is part of the run: same seed, same bits
        data = ShardDataset(self.dataset, split="train", confidence=self.confidence, augmentation=self.augmentation,
                            seed=self.seed, weak_camera=self.weak_camera, labels=self.labels)
        size = int(index["crop_size"])
        # the run's initial network (initial_network seeds torch with the run's seed again, so an
        # evaluation can rebuild the untrained reference bit for bit)
        model = initial_network(self.backbone, size, self.seed, self.backbone_weights, self.hand_model,
                                self.initial_orientation, self.articulation, self.pca_components,
                                self.single_view_input, self.keypoint_head_weights).train()
        architecture = {"model": "HaMuCo", "backbone": self.backbone, "image_size": size,
                        "hand_model": model.hand_model.sha256}
        if articulation_name(self.articulation, self.pca_components):
            architecture["articulation"] = articulation_name(self.articulation, self.pca_components)
        if self.single_view_input != "gap":  # recorded only off the official value: older checkpoints load as before
            architecture["single_view_input"] = self.single_view_input
        provenance = {"code_version": code_version(), "dataset": os.path.abspath(self.dataset),
                      "dataset_sha256": self.dataset_sha256(),
                      "params": self.to_str_params(), "skipped_samples": data.skipped_samples}
        cfg = TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                          checkpoint_every=self.checkpoint_every, seed=self.seed, num_workers=self.num_workers,
                          precision=self.precision, channels_last=True, validate_every=self.validate_every,
                          lr_schedule=self.lr_schedule, lr_warmup_steps=self.lr_warmup_steps,
                          grad_clip=self.grad_clip or None)
        weights = LossWeights(alpha=self.alpha, gamma=self.gamma, consistency=self.consistency_weight,
                              distillation=self.distillation_weight, cross_view_warmup=self.cross_view_warmup)
        validation = None
        if self.validate_every > 0:
            validation = validation_pass(self.val_dataset or self.dataset, self.val_split, self.val_samples,
                                         precision=resolve_precision(self.precision, "cpu", warn=False))
            provenance["validation"] = ({"dataset": os.path.abspath(self.val_dataset or self.dataset),
                                         "split": self.val_split, "samples": validation.samples,
                                         "ground_truth": validation.ground_truth, "every": self.validate_every}
                                        if validation else "none: the validation split has no usable sample")
        objective = HaMuCoObjective(weights, use_extrinsics=self.use_extrinsics,
                                    weak_supervision=self.weak_camera is not None, points=self.points,
                                    distill_to=self.distill_to, single_view_only=self.branches == "single",
                                    view_keep_prob=self.view_keep_prob, view_keep_anneal_steps=self.view_keep_anneal_steps)
        Trainer(model, data, objective, cfg, self.run_dir, architecture, provenance, validation).train(resume=True)


def keypoint_head_beside(backbone_weights: str) -> str:
    """The keypoint head of the 2D pretraining whose ``backbone.pt`` is ``backbone_weights``: its run's
    final checkpoint, the ``keypoint_head_weights`` of a TrainModel with ``single_view_input`` keypoints or
    joint_features."""
    from model.trainer import CHECKPOINT_FINAL

    return str(Path(backbone_weights).parent / CHECKPOINT_FINAL)


class PretrainBackbone(HamucoTask):
    """A backbone pretrained on the 2D pseudo labels of a dataset's training split (``model.pretrain``):
    no 3D and no ground truth. Its output, ``backbone.pt``, is what ``TrainModel(backbone_weights=...)``
    (``hamuco train --backbone-weights``) reads; a killed run resumes from its last checkpoint."""

    dataset = luigi.Parameter(description="dataset index (JSON) from PrepareDataset")
    out = luigi.Parameter(description="root directory of pretraining runs")
    backbone = luigi.ChoiceParameter(choices=["resnet18", "resnet34", "resnet50"], default="resnet18")
    steps = luigi.IntParameter(default=1000)
    batch_size = luigi.IntParameter(default=4, description="view groups per step (every valid view is a sample)")
    lr = luigi.FloatParameter(default=1e-3)
    weight_decay = luigi.FloatParameter(default=1e-2)
    checkpoint_every = luigi.IntParameter(default=100)
    seed = luigi.IntParameter(default=0)
    confidence = luigi.ChoiceParameter(choices=["refined", "raw"], default="refined")
    labels = luigi.ChoiceParameter(choices=["raw", "bootstrapped"], default="raw",
                                   description="label version (as TrainModel's labels)")
    precision = luigi.ChoiceParameter(choices=["auto", "bf16", "fp32"], default="auto")
    aug_rotation_deg = luigi.FloatParameter(default=0.0, description="augmentation: in-plane rotation, +-degrees")
    aug_colour = luigi.FloatParameter(default=0.0, description="augmentation: colour jitter strength")
    checks = {"steps": at_least(1), "batch_size": at_least(1), "lr": positive_finite(),
              "weight_decay": in_range(0, 10), "checkpoint_every": at_least(1), "seed": in_range(0, 2**32 - 1),
              "aug_rotation_deg": in_range(0, 180), "aug_colour": in_range(0, 1, high_open=True)}

    def requires(self):
        return DatasetIndex(path=self.dataset)

    @property
    def run_dir(self) -> Path:
        path = Path(self.dataset)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""
        params = {k: v for k, v in self.to_str_params().items() if k != "out"}
        if params.get("labels") == "raw":  # the option's neutral value: runs keep the names they had before it
            params.pop("labels")
        return Path(self.out) / f"pretrain-{self.backbone}-{version_hash(params, digest)}"

    def output(self):
        return luigi.LocalTarget(str(self.run_dir / "backbone.pt"))

    def run(self):
        import torch

        from model.atomic import atomic_write_file
        from model.pretrain import KeypointNet, backbone_state_dict, keypoint_objective
        from model.trainer import CHECKPOINT_FINAL, TrainConfig, Trainer, keep_freed_memory_in_process, load_checkpoint
        from pipeline.dataset import Augmentation, ShardDataset

        keep_freed_memory_in_process()
        data = ShardDataset(self.dataset, split="train", confidence=self.confidence, seed=self.seed, labels=self.labels,
                            augmentation=Augmentation(rotation_deg=self.aug_rotation_deg, colour=self.aug_colour))
        torch.manual_seed(self.seed)
        model = KeypointNet(self.backbone).train()
        provenance = {"code_version": code_version(), "dataset": os.path.abspath(self.dataset),
                      "dataset_sha256": hashlib.sha256(Path(self.dataset).read_bytes()).hexdigest(),
                      "params": self.to_str_params(), "what": "backbone pretrained on 2D pseudo labels "
                      "(heatmap head, soft-argmax, confidence-weighted L1); no 3D, no ground truth"}
        cfg = TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                          checkpoint_every=self.checkpoint_every, seed=self.seed, precision=self.precision,
                          channels_last=True)
        architecture = {"model": "KeypointNet", "backbone": self.backbone}
        Trainer(model, data, keypoint_objective, cfg, self.run_dir, architecture, provenance).train(resume=True)
        model.load_state_dict(load_checkpoint(self.run_dir / CHECKPOINT_FINAL)["model"])
        payload = {"state_dict": backbone_state_dict(model), "provenance": provenance}
        atomic_write_file(Path(self.output().path), lambda tmp: torch.save(payload, str(tmp)))
