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

from pipeline.prepare import version_hash
from pipeline.provenance import code_version

from .base import HamucoTask, at_least, in_range, optional, positive_finite


class DatasetIndex(luigi.ExternalTask):
    """A dataset index written by PrepareDataset (hamuco prepare)."""

    path = luigi.Parameter()

    def output(self):
        return luigi.LocalTarget(self.path)


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
    precision = luigi.ChoiceParameter(choices=["bf16", "fp32"], default="bf16",
                                      description="bf16 CPU autocast (bench/train.py: same loss, 1.7x faster)")
    weak_view = luigi.OptionalIntParameter(default=None, description="weakly supervised: view position whose "
                                           "labels are replaced by 2D ground truth (confidence 1)")
    consistency_weight = luigi.FloatParameter(default=1.0, description="weight of the multi-view consistency loss")
    alpha = luigi.FloatParameter(default=0.01, description="pose prior weight (seed B.4)")
    gamma = luigi.FloatParameter(default=100.0, description="shape prior weight (seed B.4)")
    checks = {"steps": at_least(1), "batch_size": at_least(1), "lr": positive_finite(),
              "weight_decay": in_range(0, 10), "checkpoint_every": at_least(1), "seed": in_range(0, 2**32 - 1),
              "num_workers": in_range(0, 64), "weak_view": optional(at_least(0)),
              "consistency_weight": in_range(0, 1e6), "alpha": in_range(0, 1e6), "gamma": in_range(0, 1e6)}

    def requires(self):
        return DatasetIndex(path=self.dataset)

    def dataset_sha256(self) -> str:
        path = Path(self.dataset)
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""

    @property
    def run_dir(self) -> Path:
        digest = self.dataset_sha256()
        params = {k: v for k, v in self.to_str_params().items() if k not in ("out", "num_workers")}
        return Path(self.out) / f"train-{self.backbone}-{version_hash(params, digest)}"

    def output(self):
        from model.trainer import CHECKPOINT_FINAL

        return luigi.LocalTarget(str(self.run_dir / CHECKPOINT_FINAL))

    def run(self):
        import torch

        from model.hamuco import HaMuCo
        from model.losses import LossWeights
        from model.objective import HaMuCoObjective
        from model.trainer import TrainConfig, Trainer
        from pipeline.dataset import Augmentation, ShardDataset, load_index

        index = load_index(self.dataset)
        torch.manual_seed(self.seed)  # the network's initialisation is part of the run: same seed, same bits
        data = ShardDataset(self.dataset, split="train", confidence=self.confidence, augmentation=Augmentation(),
                            seed=self.seed)
        size = int(index["crop_size"])
        model = HaMuCo(backbone_name=self.backbone, backbone_weights=self.backbone_weights,
                       hand_model=self.hand_model, image_size=size)
        architecture = {"model": "HaMuCo", "backbone": self.backbone, "image_size": size,
                        "hand_model": model.hand_model.sha256}
        provenance = {"code_version": code_version(), "dataset": os.path.abspath(self.dataset),
                      "dataset_sha256": self.dataset_sha256(),
                      "params": self.to_str_params(), "skipped_samples": data.skipped_samples}
        cfg = TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                          checkpoint_every=self.checkpoint_every, seed=self.seed, num_workers=self.num_workers,
                          precision=self.precision, channels_last=True)
        objective = HaMuCoObjective(LossWeights(alpha=self.alpha, gamma=self.gamma,
                                                consistency=self.consistency_weight), self.use_extrinsics,
                                    self.weak_view)
        Trainer(model, data, objective, cfg, self.run_dir, architecture, provenance).train(resume=True)
