"""Evaluate a HaMuCo network on a split of prepared shards: predictions, baselines, JSON and CSV.

:func:`evaluate_split` runs the network over every sample of a split (no augmentation, stored view
order), gathers the predictions of the three modes (``model.evaluation``), and the two baselines
computed from the same shards:

* ``pseudo_labels``: the labeler's 2D joints against the 2D ground truth (pixels in the crop);
* ``triangulation``: confidence-weighted algebraic (DLT) triangulation of the pseudo labels with
  the crop cameras ``crop_K [R | t]`` of the calibrated views, scored as 3D joints in the world.

:func:`write_results` writes ``metrics.json`` (tables + provenance), ``metrics.csv`` (one row per
mode/baseline and view) and ``per_sample.csv`` (one row per sample).
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.errors import HamucoError
from model.evaluation import EvaluationRecords, evaluate_records, per_sample_errors, predictions, ranking_error
from model.precision import PrecisionChoice, run_in

from .capture import atomic_write_bytes
from .dataset import ShardDataset
from .triangulate import triangulate_dlt


@dataclass
class SampleRef:
    shard: str
    index: int  # sample index in the shard
    frame_id: str


@dataclass
class Evaluation:
    records: EvaluationRecords
    metrics: dict
    samples: list[SampleRef]
    errors: dict  # per_sample_errors(records)


def triangulate_pseudo_labels(keypoints: np.ndarray, confidence: np.ndarray, crop_K: np.ndarray,
                              extrinsics: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Confidence-weighted DLT of one sample's labels: (V, 21, 2), (V, 21), (V, 3, 3), (V, 3, 4), (V,) → (21, 3)."""
    ok = usable & np.all(np.isfinite(crop_K.reshape(len(crop_K), -1)), axis=1)
    if ok.sum() < 2:
        return np.full((21, 3), np.nan)
    P = crop_K[ok] @ extrinsics[ok]
    return triangulate_dlt(P, keypoints[ok], np.clip(confidence[ok], 0, None))


def _collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def evaluate_split(model: torch.nn.Module, dataset: str | os.PathLike | list, split: str = "test",
                   confidence: str = "raw", batch_size: int = 4, progress: bool = True,
                   max_samples: Optional[int] = None, precision: Optional[PrecisionChoice] = None) -> Evaluation:
    """Run ``model`` over a split of a dataset index (or a list of shard paths) and score it;
    ``precision``: the network's forward in bf16 autocast when that choice is bf16 (None: fp32)."""
    ds = ShardDataset(dataset, split=split, confidence=confidence, augmentation=None, ground_truth=True)
    if len(ds) == 0:
        raise HamucoError(f"{dataset}: the {split!r} split has no sample with a valid view "
                          f"({ds.skipped_samples} skipped); prepare more frames or choose another split")
    if not all("gt_joints_world" in r.ground_truth_fields for r in ds.readers):
        missing = [r.path for r in ds.readers if "gt_joints_world" not in r.ground_truth_fields]
        raise HamucoError(f"{missing[0]}: no ground truth in the shard; evaluation needs captures with "
                          f"ground truth (use 'hamuco infer' for data without)")
    n = len(ds) if max_samples is None else min(len(ds), int(max_samples))
    subset = torch.utils.data.Subset(ds, range(n))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=_collate)
    crop = int(ds.readers[0].crop_size)
    model.eval()
    parts = []
    with torch.no_grad():
        for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
            out = run_in(precision, model, batch["images"], batch["view_mask"])
            preds = predictions(out, batch, crop)
            kp, conf = batch["keypoints"].numpy(), batch["confidence"].numpy()
            K, ext = batch["crop_K"].numpy().astype(np.float64), batch["extrinsics"].numpy().astype(np.float64)
            usable = (batch["view_mask"] & batch["extrinsics_known"]).numpy()
            tri = np.stack([triangulate_pseudo_labels(kp[b], conf[b], K[b], ext[b], usable[b])
                            for b in range(len(kp))])
            parts.append(EvaluationRecords(
                view_mask=batch["view_mask"].numpy(), extrinsics=ext, gt_world=batch["gt_joints_world"].numpy(),
                gt_2d=batch["gt_joints_2d"].numpy(), keypoints=kp, confidence=conf, preds=preds,
                baselines={"triangulation": tri}))
    rec = EvaluationRecords.concatenate(parts)
    rec.camera_names = list(ds.readers[0].camera_names)
    samples = []
    for ri, si in ds.items[:n]:
        r = ds.readers[ri]
        fid = r.field("frame_ids")[si]
        samples.append(SampleRef(str(r.path), int(si), fid.decode() if isinstance(fid, bytes) else str(fid)))
    return Evaluation(records=rec, metrics=evaluate_records(rec), samples=samples, errors=per_sample_errors(rec))


def validation_pass(source: str | os.PathLike | list, split: str = "val", max_samples: int = 16,
                    batch_size: int = 4, confidence: str = "raw", precision: Optional[PrecisionChoice] = None):
    """The validation pass a :class:`model.trainer.Trainer` runs every N steps: a callable
    ``model -> signals`` (:func:`model.validation.validation_signals`) over the first ``max_samples``
    view groups of ``split`` (no augmentation, read once and kept in memory), with the
    ground-truth signals when every shard has ground truth. None when the split has no usable sample."""
    from model.validation import validation_signals

    ds = ShardDataset(source, split=split, confidence=confidence, augmentation=None)
    if len(ds) == 0:
        return None
    ds.ground_truth = all("gt_joints_world" in r.ground_truth_fields for r in ds.readers)
    # spread the samples over the split (every k-th), not just its first frames
    n = min(len(ds), int(max_samples))
    picks = np.unique(np.linspace(0, len(ds) - 1, n).round().astype(int))
    items = [ds[int(i)] for i in picks]
    batches = [_collate(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    crop = int(ds.readers[0].crop_size)

    def run(model: torch.nn.Module) -> dict:
        return validation_signals(model, batches, crop, precision)

    run.samples = len(items)
    run.ground_truth = ds.ground_truth
    run.batches, run.crop_size = batches, crop  # the same pass batch by batch (bench/validation_check.py)
    return run


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(data))


def _csv_bytes(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue().encode()


def metric_rows(metrics: dict) -> list[dict]:
    """The tables of :func:`model.evaluation.evaluate_records` as flat CSV rows."""
    rows = []
    for mode, t in metrics["modes"].items():
        rows.append({"kind": "mode", "name": mode, "view": "all", **t})
        for r in metrics["per_view"].get(mode, []):
            rows.append({"kind": "mode", "name": mode, **r})
    for name, t in metrics["baselines"].items():
        rows.append({"kind": "baseline", "name": name, "view": "all", **t})
    return rows


def sample_rows(ev: Evaluation) -> list[dict]:
    rank = ranking_error(ev.errors)
    rows = []
    for i, s in enumerate(ev.samples):
        row = {"shard": s.shard, "index": s.index, "frame_id": s.frame_id, "ranking_pa_mpjpe_mm": rank[i] * 1000}
        for mode in ("single", "interaction"):
            if mode in ev.errors:
                with np.errstate(all="ignore"):
                    row[f"{mode}_pa_mpjpe_mm"] = float(np.nanmean(ev.errors[mode]["pa_mpjpe"][i])) * 1000 \
                        if np.isfinite(ev.errors[mode]["pa_mpjpe"][i]).any() else float("nan")
        for key in ("fusion", "baseline/triangulation"):
            if key in ev.errors:
                row[f"{key.replace('baseline/', '')}_pa_mpjpe_mm"] = float(ev.errors[key]["pa_mpjpe"][i]) * 1000
        rows.append(row)
    return rows


def write_results(ev: Evaluation, out_dir: str | os.PathLike, provenance: dict) -> dict[str, Path]:
    """metrics.json, metrics.csv and per_sample.csv in ``out_dir`` (each written atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "metrics.json", "csv": out / "metrics.csv", "samples": out / "per_sample.csv"}
    doc = {"format": "hamuco-evaluation", "version": 1, "provenance": provenance, **ev.metrics}
    write_bytes(paths["csv"], _csv_bytes(metric_rows(ev.metrics)))
    write_bytes(paths["samples"], _csv_bytes(sample_rows(ev)))
    write_bytes(paths["json"], (json.dumps(doc, indent=1, allow_nan=True) + "\n").encode())
    return paths


def summary_table(metrics: dict) -> str:
    """A one-screen text table: PA-MPJPE / NMPJPE / MPJPE / AUC / 2D px per mode and baseline."""
    lines = [f"{'':24s}{'PA-MPJPE':>10s}{'NMPJPE':>9s}{'MPJPE':>9s}{'AUC':>7s}{'2D px':>8s}",
             f"{'':24s}{'mm':>10s}{'mm':>9s}{'mm':>9s}{'0-50':>7s}{'':>8s}"]

    def fmt(x, w, p=1):
        return f"{x:{w}.{p}f}" if isinstance(x, (int, float)) and np.isfinite(x) else f"{'-':>{w}s}"
    groups = [("", metrics["modes"])]
    if "untrained" in metrics:
        groups.append(("untrained: ", metrics["untrained"]["modes"]))
    groups.append(("baseline: ", metrics["baselines"]))
    for group, tables in groups:
        for name, t in tables.items():
            lines.append(f"{(group + name)[:24]:24s}{fmt(t.get('pa_mpjpe_mm'), 10)}{fmt(t.get('nmpjpe_mm'), 9)}"
                         f"{fmt(t.get('mpjpe_mm'), 9)}{fmt(t.get('auc_0_50mm'), 7, 3)}{fmt(t.get('error_2d_px'), 8)}")
    lines.append(f"{metrics['samples']} samples, {metrics['valid_views']} valid views")
    return "\n".join(lines)
