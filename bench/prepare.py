"""Benchmark: what `hamuco prepare` adds to its models (pipeline overhead) and how it scales with workers.

On a synthetic capture (the embedded demo's rig, ``--frames`` frames, 8 cameras, 256² images):

1. the raw throughput of the models alone, in this process, on images already in memory: MediaPipe
   Hands (the detector) on every view, then the labeler on the crops it found;
2. ``hamuco prepare`` end to end (a fresh output directory each time) with 1 and with 2 workers:
   views/s, and the share of the time per stage as the tasks record it (decode, detect, select,
   crop, label, refine, write, model loading) — the rest is Luigi, process start and file outputs;
   decoding and cropping run a frame ahead in a background thread, listed apart (``*_background``)
   since they overlap the models, with the time the main thread waited for them (``prefetch_wait``);
3. the fixed cost of a command: the same command rerun with every output complete (interpreter,
   imports, Luigi's scheduling and completeness checks), and the overhead ratio without it;
4. the overhead ratio: end-to-end time with 1 worker over the models' time for the same work, minus 1
   (goal ≤ 0.10): the detector on every view plus the labeler, at its raw rate, on every crop the
   pipeline labelled (cross-view selection adds crops for views the detector missed); and the
   2-worker speed-up (goal ≥ 1.7).

Prints progress lines, then one JSON object on the last line.
Usage: python bench/prepare.py [--frames 24] [--labeler mediapipe]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def raw_models(capture_dir: Path, crop_size: int, labeler_name: str) -> dict:
    from pipeline.capture import load_capture
    from pipeline.crop import crop_affine, square_box, warp_crop
    from pipeline.detect import MediaPipeHands, _pick_by_handedness
    from pipeline.prepare import make_labeler

    cap = load_capture(capture_dir)
    images = [[cap.read_image(ci, fi) for ci in range(cap.num_views)] for fi in range(cap.num_frames)]
    det = MediaPipeHands()
    det(images[0][0])  # warm-up (graph start)
    t0 = time.perf_counter()
    found = []
    for fi, views in enumerate(images):
        for ci, img in enumerate(views):
            hand = _pick_by_handedness(det(img), cap.handedness)
            if hand is not None:
                found.append((img, hand))
    detect_s = time.perf_counter() - t0
    det.close()
    crops = np.stack([warp_crop(img, crop_affine(square_box(h.landmarks, 0.3), crop_size, False), crop_size)
                      for img, h in found])
    labeler = make_labeler(labeler_name)
    labeler.label(crops[:1])  # warm-up
    t0 = time.perf_counter()
    labeler.label(crops)
    label_s = time.perf_counter() - t0
    labeler.close()
    views = cap.num_frames * cap.num_views
    return {"views": views, "crops": len(crops), "detect_s": detect_s, "label_s": label_s,
            "detector_views_per_s": views / detect_s, "labeler_crops_per_s": len(crops) / label_s}


def prepare(capture_dir: Path, out: Path, workers: int, crop_size: int, labeler: str, frames_per_shard: int) -> dict:
    hamuco = str(Path(sys.executable).with_name("hamuco"))
    cmd = [hamuco, "prepare", str(capture_dir), "--out", str(out), "--workers", str(workers), "--crop-size",
           str(crop_size), "--labeler", labeler, "--frames-per-shard", str(frames_per_shard)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"hamuco prepare failed:\n{r.stderr[-3000:]}")
    stages: dict[str, float] = {}
    items: dict[str, int] = {}
    for p in list(out.rglob("detect-*/shard-*.json")):
        for k, v in json.loads(p.read_text())["meta"].get("seconds", {}).items():
            stages[k] = stages.get(k, 0.0) + v
    for p in out.rglob("labels-*/shard-*.quarantine.json"):
        q = json.loads(p.read_text())
        for k, v in q.get("seconds", {}).items():
            stages[k] = stages.get(k, 0.0) + v
        for k, v in q.get("items", {}).items():
            items[k] = items.get(k, 0) + v
    return {"wall_s": wall, "stages_s": stages, "items": items}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--crop-size", type=int, default=256)
    ap.add_argument("--labeler", default="mediapipe", choices=["mediapipe", "openpose"])
    ap.add_argument("--frames-per-shard", type=int, default=6)
    args = ap.parse_args()
    from pipeline.synthetic import DEMO_CONFIG, generate_capture

    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        cfg = DEMO_CONFIG.__class__(**{**DEMO_CONFIG.__dict__, "frames": args.frames})
        generate_capture(tmp / "capture", cfg, workers=2, progress=False)
        raw = raw_models(tmp / "capture", args.crop_size, args.labeler)
        print(f"models alone: MediaPipe detector {raw['detector_views_per_s']:.1f} views/s, {args.labeler} labeler "
              f"{raw['labeler_crops_per_s']:.1f} crops/s ({raw['crops']} crops)", flush=True)
        runs = {}
        for workers in (1, 2):
            r = prepare(tmp / "capture", tmp / f"out-{workers}", workers, args.crop_size, args.labeler,
                        args.frames_per_shard)
            runs[workers] = r
            print(f"hamuco prepare, {workers} worker(s): {r['wall_s']:.1f} s, {raw['views'] / r['wall_s']:.1f} views/s",
                  flush=True)
        # the fixed cost of one command (interpreter, imports, MediaPipe, Luigi, checking outputs): the same
        # command again, every output already complete
        startup_s = prepare(tmp / "capture", tmp / "out-1", 1, args.crop_size, args.labeler,
                            args.frames_per_shard)["wall_s"]
        print(f"hamuco prepare with every output complete: {startup_s:.1f} s (fixed cost per command)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    one = runs[1]
    # work in the prefetch threads (<stage>_background) overlaps the main thread's stages: listed apart
    main_thread = {k: v for k, v in one["stages_s"].items() if not k.endswith("_background")}
    in_stages = sum(main_thread.values())
    shares = {k: round(v / one["wall_s"], 3) for k, v in sorted(main_thread.items(), key=lambda kv: -kv[1])}
    shares["outside_stages (luigi, processes, files)"] = round(1 - in_stages / one["wall_s"], 3)
    background = {k: round(v / one["wall_s"], 3) for k, v in sorted(one["stages_s"].items(), key=lambda kv: -kv[1])
                  if k.endswith("_background")}
    # the models' time for the pipeline's work: the detector on every view, the labeler on every crop the
    # pipeline labelled (detected views and the views cross-view selection filled in), at the raw rates
    labelled = one["items"].get("label", raw["crops"])
    models_s = raw["detect_s"] + labelled / raw["labeler_crops_per_s"]
    from model.precision import hardware

    result = {
        "benchmark": "prepare", "frames": args.frames, "views": raw["views"], "labeler": args.labeler,
        "crop_size": args.crop_size, "cpus": os.cpu_count(), "hardware": hardware("cpu"),
        "models_alone": {"detector_views_per_s": round(raw["detector_views_per_s"], 1),
                         "labeler_crops_per_s": round(raw["labeler_crops_per_s"], 1),
                         "crops_labelled_by_pipeline": labelled,
                         "detector_plus_labeler_s": round(models_s, 2)},
        "prepare_views_per_s": {str(w): round(raw["views"] / r["wall_s"], 2) for w, r in runs.items()},
        "prepare_wall_s": {str(w): round(r["wall_s"], 2) for w, r in runs.items()},
        "stage_share_1_worker": shares,
        "background_share_1_worker (overlapped)": background,
        "overhead_ratio": round(one["wall_s"] / models_s - 1, 3),
        "fixed_cost_per_command_s": round(startup_s, 2),
        # what the pipeline adds per view, the fixed cost of starting a command set apart: the ratio a capture
        # of many frames approaches
        "overhead_ratio_without_fixed_cost": round((one["wall_s"] - startup_s) / models_s - 1, 3),
        "two_worker_speedup": round(one["wall_s"] / runs[2]["wall_s"], 2),
        "goals": {"overhead_ratio_max": 0.10, "two_worker_speedup_min": 1.7},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
