"""Luigi task of evaluation: the work is pipeline.evaluate (model.evaluation math) and pipeline.report.

    python -m luigi --module tasks EvaluateModel --checkpoint runs/train-…/checkpoint-final.pt \\
        --dataset prepared/dataset-XXXX.json --out evaluations --local-scheduler

The output directory carries a hash of the checkpoint file, the dataset index and the parameters;
it holds ``metrics.json``, ``metrics.csv``, ``per_sample.csv`` and ``report.html`` (written last:
its presence marks the task complete).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import luigi

from pipeline.prepare import version_hash
from pipeline.provenance import code_version, sha256_file

from .base import HamucoTask, at_least
from .train import DatasetIndex


class Checkpoint(luigi.ExternalTask):
    """A training checkpoint written by TrainModel (hamuco train)."""

    path = luigi.Parameter()

    def output(self):
        return luigi.LocalTarget(self.path)


class EvaluateModel(HamucoTask):
    checkpoint = luigi.Parameter(description="training checkpoint (.pt)")
    dataset = luigi.Parameter(description="dataset index (JSON) with ground truth")
    out = luigi.Parameter(description="root directory of evaluations")
    split = luigi.ChoiceParameter(choices=["test", "val", "train"], default="test")
    confidence = luigi.ChoiceParameter(choices=["raw", "refined"], default="raw",
                                       description="confidence weighting the triangulation baseline")
    batch_size = luigi.IntParameter(default=4)
    compare_untrained = luigi.BoolParameter(default=True, description="also score the run's untrained network "
                                            "(its initialisation, rebuilt from the recorded seed) on the same split")
    precision = luigi.ChoiceParameter(choices=["auto", "bf16", "fp32"], default="auto",
                                      description="the network's forward: auto = bf16 autocast where the CPU "
                                      "computes bf16 natively, else fp32 (recorded in metrics.json)")
    checks = {"batch_size": at_least(1)}
    hand_model = luigi.OptionalParameter(default=None, description="converted MANO .npz the run was trained with")

    def requires(self):
        return {"checkpoint": Checkpoint(path=self.checkpoint), "dataset": DatasetIndex(path=self.dataset)}

    @property
    def eval_dir(self) -> Path:
        digests = [sha256_file(p) if Path(p).is_file() else "" for p in (self.checkpoint, self.dataset)]
        params = {"split": self.split, "confidence": self.confidence, "hand_model": self.hand_model,
                  **({"untrained": True} if self.compare_untrained else {})}
        if self.precision_choice.bf16:  # fp32 keeps the name evaluations had before the option
            params["precision"] = "bf16"
        return Path(self.out) / f"eval-{self.split}-{version_hash(params, *digests)}"

    @property
    def precision_choice(self):
        from model.precision import resolve_precision

        return resolve_precision(self.precision, "cpu", warn=False)

    def output(self):
        d = self.eval_dir
        return {"report": luigi.LocalTarget(str(d / "report.html")), "metrics": luigi.LocalTarget(str(d / "metrics.json")),
                "csv": luigi.LocalTarget(str(d / "metrics.csv"))}

    def complete(self):
        return Path(self.output()["report"].path).exists()

    def run(self):
        from model.inference import initial_network_of, load_model
        from pipeline.dataset import load_index
        from pipeline.evaluate import evaluate_split, write_results
        from pipeline.report import render_report, write_report

        from model.precision import resolve_precision

        index = load_index(self.dataset)
        precision = resolve_precision(self.precision, "cpu")
        print(f"evaluation {precision.line()}", file=sys.stderr, flush=True)
        model, info = load_model(self.checkpoint, self.hand_model)
        ev = evaluate_split(model, self.dataset, split=self.split, confidence=self.confidence,
                            batch_size=self.batch_size, precision=precision)
        if self.compare_untrained:
            seed = info["provenance"].get("params", {}).get("seed")
            untrained = evaluate_split(initial_network_of(info, self.hand_model), self.dataset, split=self.split,
                                       confidence=self.confidence, batch_size=self.batch_size,
                                       precision=precision)
            ev.metrics["untrained"] = {"init_seed": int(seed), "modes": untrained.metrics["modes"],
                                       "what": "the same architecture at the initialisation this run started from"}
        prov = {"checkpoint": os.path.abspath(self.checkpoint), "checkpoint_sha256": sha256_file(self.checkpoint),
                "training_step": info["step"], "backbone": info["architecture"]["backbone"],
                "dataset": os.path.abspath(self.dataset), "split": self.split, "labeler": index.get("labeler"),
                "code_version": code_version(),
                "trained_by_code_version": info["provenance"].get("code_version"),
                "precision": precision.record(), "trained_in_precision": info.get("precision"),
                "training_params": info["provenance"].get("params", {})}
        write_results(ev, self.eval_dir, prov)
        metrics_jsonl = Path(self.checkpoint).parent / "metrics.jsonl"
        doc = render_report(ev, {k: v for k, v in prov.items() if k != "training_params"}, index, metrics_jsonl,
                            title=f"HaMuCo evaluation: {Path(self.checkpoint).parent.name}, {self.split} split")
        write_report(Path(self.output()["report"].path), doc)


def read_metrics(task: EvaluateModel) -> dict:
    return json.loads(Path(task.output()["metrics"].path).read_text())
