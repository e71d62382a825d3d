"""Luigi tasks of the science benchmark (``bench/science.py``): per-frame errors of a trained (or
untrained) network and of the baselines on one split of a dataset index. The work is in
``pipeline.science``; the training is :class:`tasks.train.TrainModel`, required here by its
parameters so that a benchmark interrupted anywhere resumes where it stopped and spreads over
the workers of a central scheduler (``luigid``).
"""
from __future__ import annotations

import json
from pathlib import Path

import luigi

from pipeline.prepare import version_hash

from .base import HamucoTask, at_least
from .train import DatasetIndex, TrainModel


# what a network table holds beyond the first version (a table without it is made again, not read)
NETWORK_TABLE_VERSION = ("keys-name-capture", "orientation_deg")


class NetworkFrameErrors(HamucoTask):
    """Per-frame errors of the network trained by ``TrainModel(**train)`` (or, with ``train`` empty,
    the untrained network of ``backbone`` initialised from ``init_seed``) on ``split`` of ``dataset``."""

    train = luigi.DictParameter(default={}, description="TrainModel parameters; empty: the untrained network")
    dataset = luigi.Parameter(description="dataset index (JSON) with ground truth")
    split = luigi.ChoiceParameter(choices=["train", "val", "test"], default="test")
    out = luigi.Parameter(description="directory of the frame tables")
    backbone = luigi.ChoiceParameter(choices=["resnet18", "resnet34", "resnet50"], default="resnet18",
                                     description="untrained network only")
    init_seed = luigi.IntParameter(default=0, description="untrained network only")
    initial_orientation = luigi.ChoiceParameter(choices=["identity", "upright"], default="identity",
                                                description="untrained network only")
    articulation = luigi.ChoiceParameter(choices=["full", "pca"], default="full", description="untrained network only")
    pca_components = luigi.IntParameter(default=12, description="untrained network only")
    batch_size = luigi.IntParameter(default=4)
    checks = {"batch_size": at_least(1)}

    def requires(self):
        req = {"dataset": DatasetIndex(path=self.dataset)}
        if self.train:
            req["model"] = TrainModel(**dict(self.train))
        return req

    def output(self):
        what = dict(self.train) if self.train else {"untrained": self.backbone, "init_seed": self.init_seed}
        if not self.train and self.initial_orientation != "identity":  # identity: the name tables had before
            what["initial_orientation"] = self.initial_orientation
        if not self.train and self.articulation != "full":
            what["articulation"] = f"{self.articulation}-{self.pca_components}"
        h = version_hash(json.dumps(what, sort_keys=True, default=str), str(Path(self.dataset).resolve()), self.split,
                         *NETWORK_TABLE_VERSION)
        return luigi.LocalTarget(str(Path(self.out) / f"network-{self.split}-{h}.npz"))

    def run(self):
        import torch

        from model.hamuco import HaMuCo
        from model.inference import load_model
        from pipeline.dataset import load_index
        from pipeline.science import network_frame_errors, save_frames

        if self.train:
            model, _ = load_model(self.input()["model"].path)
        else:
            torch.manual_seed(self.init_seed)
            model = HaMuCo(self.backbone, image_size=int(load_index(self.dataset)["crop_size"]),
                           initial_orientation=self.initial_orientation, articulation=self.articulation,
                           pca_components=self.pca_components).eval()
        save_frames(self.output().path, network_frame_errors(model, self.dataset, self.split, self.batch_size))


class BaselineFrameErrors(HamucoTask):
    """Per-frame errors of the baselines that need no training on ``split`` of ``dataset``; the constant
    pose is the Procrustes mean of the ground truth of ``mean_pose_dataset``'s training split."""

    dataset = luigi.Parameter(description="dataset index (JSON) with ground truth")
    split = luigi.ChoiceParameter(choices=["train", "val", "test"], default="test")
    mean_pose_dataset = luigi.Parameter(description="dataset index whose training split gives the constant pose")
    out = luigi.Parameter(description="directory of the frame tables")

    def requires(self):
        return {"dataset": DatasetIndex(path=self.dataset), "mean_pose": DatasetIndex(path=self.mean_pose_dataset)}

    def output(self):
        h = version_hash("baselines", str(Path(self.dataset).resolve()), self.split,
                         str(Path(self.mean_pose_dataset).resolve()), "keys-name-capture")
        return luigi.LocalTarget(str(Path(self.out) / f"baselines-{self.split}-{h}.npz"))

    def run(self):
        from pipeline.science import baseline_frame_errors, save_frames, training_mean_pose

        mean_pose = training_mean_pose(self.mean_pose_dataset, "train")
        arrays = baseline_frame_errors(self.dataset, self.split, mean_pose)
        arrays["mean_pose"] = mean_pose
        save_frames(self.output().path, arrays)
