"""Label quality of the pipeline's MediaPipe labels, raw against multi-view bootstrapped against
bootstrapped + smoothed (issue 21), on synthetic captures of both rigs.

    python bench/label_quality.py [--out label_quality_output] [--results results] [--quick]

Protocol (fixed before the first run): captures ring seeds 700, 701 (no occluders) and dome seeds 710,
711 (two occluders), 8 cameras, 24 frames, 256² images, 256² crops, MediaPipe labels; the bootstrapping
and smoothing at their defaults (10 px disagreement, 3 agreeing views, RANSAC 15 px, 7-frame window,
20 mm outlier rejection), chosen before any measurement and never tuned on these captures. Per rig and
version: median 2D error against the ground truth (crop px, over the joints each version labels), PCK
at 5 px, the joints labelled, and the PA-MPJPE of the RANSAC triangulation of the labels (mean over
frames with every joint triangulated); beside it the constant pose (the Procrustes mean of the other
rig's ground truth) on the same frames. Goals (issue 21): bootstrapped + smoothed halve the raw median
2D error on the occluder captures; their triangulation below the constant pose on every rig. Writes
``results/label_quality.json`` and the report (``hamuco labels report``) under ``--out``; the last line
printed is the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from model.metrics import pa_mpjpe  # noqa: E402
from model.statistics import procrustes_mean_pose  # noqa: E402
from pipeline.label_report import label_report, write_label_report  # noqa: E402
from pipeline.shards import ShardReader  # noqa: E402
from tasks.prepare import PrepareDataset, SyntheticCapture  # noqa: E402
from tasks.runner import run_tasks  # noqa: E402

RIGS = {"ring": dict(rig="ring", occluders=0, seeds=(700, 701)),
        "dome-occluders": dict(rig="dome", occluders=2, seeds=(710, 711))}
FULL = dict(cameras=8, frames=24, image_size=256, crop_size=256, frames_per_shard=8)
QUICK = dict(cameras=4, frames=4, image_size=128, crop_size=128, frames_per_shard=2)


def build(tasks: list, what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", flush=True)
    res = run_tasks(tasks, workers=1, prefix="label_quality")
    if not res.ok:
        raise SystemExit(f"label_quality: {what} failed: " + "; ".join(res.failures))


def ground_truth(index_path: Path) -> dict[str, np.ndarray]:
    """Per capture, the ground-truth world joints of its frames, in the index's order."""
    out: dict[str, list] = {}
    for s in json.loads(index_path.read_text())["shards"]:
        with ShardReader(s["path"]) as r:
            out.setdefault(s["capture"], []).extend(x.gt_joints_world for x in r)
    return {k: np.stack(v) for k, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="label_quality_output")
    ap.add_argument("--results", default="results")
    ap.add_argument("--quick", action="store_true", help="a smoke run (tiny captures): not a result")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    out = Path(args.out)
    t0 = time.perf_counter()
    caps = {rig: [SyntheticCapture(dest=str(out / "captures" / f"{rig}-{s}"), seed=s, rig=kw["rig"],
                                   occluders=kw["occluders"], cameras=cfg["cameras"], frames=cfg["frames"],
                                   image_size=cfg["image_size"]) for s in kw["seeds"]] for rig, kw in RIGS.items()}
    build([c for v in caps.values() for c in v], "captures")
    common = dict(out=str(out / "prepared"), labeler="mediapipe", crop_size=cfg["crop_size"],
                  frames_per_shard=cfg["frames_per_shard"], val_fraction=0.0, test_fraction=0.0)
    results: dict = {"rigs": {}, "protocol": __doc__.split("Protocol (fixed before the first run): ")[1].split(
        " Writes")[0].replace("\n", " ")}
    gts = {}
    for rig, cs in caps.items():
        refs = [c.dest for c in cs]
        boot = PrepareDataset(captures=refs, bootstrap=True, **common)
        smooth = PrepareDataset(captures=refs, bootstrap=True, smooth=True, **common)
        build([boot, smooth], f"{rig}: MediaPipe labels, bootstrapped, bootstrapped + smoothed")
        report = label_report(boot.output().path, against=smooth.output().path)
        write_label_report(out / "reports" / rig, report)
        gts[rig] = ground_truth(Path(boot.output().path))
        results["rigs"][rig] = {"report": report, "index": boot.output().path, "index_smoothed": smooth.output().path}
    # the constant pose of each rig: the Procrustes mean of the other rig's ground truth
    table = {}
    for rig, r in results["rigs"].items():
        other = np.concatenate([g for k, v in gts.items() if k != rig for g in v.values()])
        mean = procrustes_mean_pose(other)
        frames = np.concatenate(list(gts[rig].values()))
        constant = float(np.mean(pa_mpjpe(np.broadcast_to(mean, frames.shape), frames))) * 1000
        rows = {}
        for name, v in r["report"]["versions"].items():
            a = v["all"]
            rows[name] = {"median_px": a.get("median_px"), "pck_5px": a.get("pck_5px"),
                          "labelled_joints": a["labelled_joints"], "misses": a["misses"],
                          "reprojection_median_px": a.get("reprojection_median_px"),
                          "outlier_share": a.get("outlier_share"),
                          "triangulation_pa_mpjpe_mm": v["triangulation"].get("all", {}).get("pa_mpjpe_mm"),
                          "triangulated_share": v["triangulation"].get("all", {}).get("triangulated_share")}
        table[rig] = {"versions": rows, "constant_pose_pa_mpjpe_mm": round(constant, 3),
                      "frames": int(frames.shape[0])}
    results["table"] = table
    results["minutes"] = round((time.perf_counter() - t0) / 60, 1)
    from model.precision import resolve_precision

    choice = resolve_precision("auto", "cpu", warn=False)
    results["hardware"] = {"cpu": choice.cpu_model, "cpu_kind": choice.cpu_capability}
    results["date"] = time.strftime("%Y-%m-%d")
    for rig, t in table.items():
        print(f"{rig} (constant pose {t['constant_pose_pa_mpjpe_mm']:.2f} mm, {t['frames']} frames):")
        for name, row in t["versions"].items():
            print(f"  {name:40s} median {row['median_px']} px, PCK@5 {row['pck_5px']}, labelled {row['labelled_joints']}, "
                  f"triangulation {row['triangulation_pa_mpjpe_mm']} mm")
    if not args.quick:
        from model.atomic import atomic_write_text

        Path(args.results).mkdir(parents=True, exist_ok=True)
        slim = {k: v for k, v in results.items() if k != "rigs"}
        slim["reports"] = {rig: str(out / "reports" / rig / "labels_report.html") for rig in table}
        atomic_write_text(Path(args.results) / "label_quality.json", json.dumps(slim, indent=1) + "\n")
    print(json.dumps({"table": table, "minutes": results["minutes"], "hardware": results["hardware"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
