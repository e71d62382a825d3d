"""Reproducing the paper on HanCo: prepare (imported HaMuCo pseudo labels), train, evaluate.

    LUIGI_CONFIG_PATH=configs/hanco-paper.cfg hamuco reproduce-hanco --root /data/HanCo --out runs/hanco

or ``python -m luigi --module tasks ReproduceHanCo --root /data/HanCo --out runs/hanco --local-scheduler``.
The defaults follow the paper and the official code (ResNet-50, 256² crops of the 224² images, 8 groups ×
8 views per step, AdamW at 3e-4 with cosine decay, sequences < 1200 for training and ≥ 1200 for testing,
the pseudo labels shipped with HanCo in ``rgb_2D_keypoints``); ``configs/hanco-paper.cfg`` holds them
and is where to change them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import luigi

from pipeline.hanco import list_hanco_sequences
from pipeline.prepare import write_json

from .base import HamucoTask, at_least, in_range, positive_finite
from .evaluate import EvaluateModel
from .prepare import PrepareDataset
from .train import TrainModel


class ReproduceHanCo(HamucoTask):
    root = luigi.Parameter(description="HanCo root (rgb/, calib/, xyz/, rgb_2D_keypoints/ …)")
    out = luigi.Parameter(description="output directory")
    sequences = luigi.ListParameter(default=[], description="sequence ids (default: every sequence under rgb/)")
    crop_size = luigi.IntParameter(default=256)
    backbone = luigi.ChoiceParameter(choices=["resnet18", "resnet34", "resnet50"], default="resnet50")
    backbone_weights = luigi.Parameter(default="imagenet")
    steps = luigi.IntParameter(default=100_000)
    batch_size = luigi.IntParameter(default=8)
    lr = luigi.FloatParameter(default=3e-4)
    use_extrinsics = luigi.BoolParameter(default=False)
    precision = luigi.ChoiceParameter(choices=["auto", "bf16", "fp32"], default="auto")
    num_workers = luigi.IntParameter(default=4)
    checks = {"crop_size": in_range(32, 2048), "steps": at_least(1), "batch_size": at_least(1),
              "lr": positive_finite(), "num_workers": in_range(0, 64)}

    def captures(self) -> list[str]:
        seqs = list(self.sequences) or list_hanco_sequences(self.root)
        return [f"hanco:{self.root}#{s}" for s in seqs]

    def requires(self):
        return PrepareDataset(captures=self.captures(), out=os.path.join(self.out, "prepared"), labeler="imported",
                              crop_size=self.crop_size, split_by="hanco")

    def output(self):
        return luigi.LocalTarget(os.path.join(self.out, "hanco-paper.json"))

    def run(self):
        dataset = self.input().path
        checkpoint = yield TrainModel(dataset=dataset, out=os.path.join(self.out, "training"), backbone=self.backbone,
                                      backbone_weights=self.backbone_weights, steps=self.steps,
                                      batch_size=self.batch_size, lr=self.lr, use_extrinsics=self.use_extrinsics,
                                      precision=self.precision, num_workers=self.num_workers)
        evaluation = yield EvaluateModel(checkpoint=checkpoint.path, dataset=dataset,
                                         out=os.path.join(self.out, "evaluation"), split="test")
        metrics = json.loads(Path(evaluation["metrics"].path).read_text())
        paper = {"nmpjpe_mm": {"single": 11.17, "interaction": 8.28, "fusion": 7.75},
                 "pa_mpjpe_mm": {"single": 7.22, "interaction": 5.42, "fusion": 5.40}}
        ours = {k: {m: metrics["modes"][m][k] for m in metrics["modes"]} for k in paper}
        write_json(Path(self.output().path), {"dataset_index": dataset, "checkpoint": checkpoint.path,
                                              "metrics": evaluation["metrics"].path,
                                              "report": evaluation["report"].path, "ours": ours,
                                              "paper_table_c": paper})
