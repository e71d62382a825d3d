"""Benchmark: synthetic capture generation speed and MediaPipe hand detection rate.

Prints progress lines, then one JSON object on the last line:
  views_per_s (2 workers), views_per_s_baseline (1 worker, same process), speedup (ratio),
  detection_rate (views where MediaPipe 0.10.21 finds a hand), detection_rate_matched (the
  found hand's box overlaps the ground-truth joints' box, IoU >= 0.3), goals.
Usage: python bench/synth.py [--hand-model MANO.npz] [--frames N] [--seed S]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.synthetic import DEMO_CONFIG, generate_capture  # noqa: E402


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(hi - lo, 0, None))
    area = lambda r: np.prod(np.clip(r[2:] - r[:2], 0, None))
    return float(inter / max(area(a) + area(b) - inter, 1e-9))


def detection_rate(capture) -> tuple[float, float]:
    import mediapipe as mp

    gt = capture.ground_truth
    found = matched = total = 0
    with mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=2, model_complexity=1,
                                  min_detection_confidence=0.5) as hands:
        for f in range(capture.num_frames):
            for v, cam in enumerate(capture.cameras):
                img = capture.read_image(v, f)
                res = hands.process(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
                total += 1
                if not res.multi_hand_landmarks:
                    continue
                found += 1
                j = gt.joints_2d[f, v]
                gbox = np.concatenate([j.min(0), j.max(0)])
                for lm in res.multi_hand_landmarks:
                    p = np.array([[q.x * cam.width, q.y * cam.height] for q in lm.landmark])
                    if box_iou(np.concatenate([p.min(0), p.max(0)]), gbox) >= 0.3:
                        matched += 1
                        break
    return found / total, matched / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hand-model", default=None, help="converted MANO .npz (default: procedural hand)")
    ap.add_argument("--frames", type=int, default=DEMO_CONFIG.frames)
    ap.add_argument("--seed", type=int, default=DEMO_CONFIG.seed)
    args = ap.parse_args()
    cfg = replace(DEMO_CONFIG, hand_model=args.hand_model, frames=args.frames, seed=args.seed)
    views = cfg.cameras * cfg.frames
    tmp = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    try:
        timings = {}
        for workers in (1, 2):
            t0 = time.perf_counter()
            capture = generate_capture(tmp / f"w{workers}", cfg, workers=workers, progress=False)
            timings[workers] = time.perf_counter() - t0
            print(f"generation with {workers} worker(s): {views} views in {timings[workers]:.2f} s "
                  f"({views / timings[workers]:.1f} views/s)", flush=True)
        t0 = time.perf_counter()
        rate, matched = detection_rate(capture)
        det_s = time.perf_counter() - t0
        print(f"MediaPipe found a hand in {rate:.1%} of views ({matched:.1%} on the right hand), "
              f"{1000 * det_s / views:.1f} ms per view", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    goal = 0.7 if args.hand_model else 0.5
    result = {
        "benchmark": "synth",
        "config": {"cameras": cfg.cameras, "frames": cfg.frames, "seed": cfg.seed,
                   "image_size": cfg.image_size, "hand_model": cfg.hand_model or "procedural"},
        "views": views,
        "views_per_s": round(views / timings[2], 2),
        "views_per_s_baseline": round(views / timings[1], 2),
        "speedup": round(timings[1] / timings[2], 2),
        "detection_rate": round(rate, 4),
        "detection_rate_matched": round(matched, 4),
        "detection_ms_per_view": round(1000 * det_s / views, 1),
        "goal_views_per_s": 20,
        "goal_detection_rate": goal,
        "meets_goals": bool(views / timings[2] >= 20 and rate >= goal),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
