"""Benchmark: detection, labelers and shard I/O of the data-preparation pipeline.

Prints progress lines, then one JSON object on the last line:
  detection_views_per_s      MediaPipe detection + cross-view selection on the embedded capture
  openpose_crops_per_s       batched OpenPose labeler, published settings (4 scales, box 368), 256² crops
  openpose_plain_crops_per_s the plain one-crop-at-a-time implementation, same run, same crops
  openpose_ratio             batched / plain (goal ≥ 1.0 on CPU)
  openpose_same_peaks        whether both give the same peaks on these crops
  mediapipe_crops_per_s      the MediaPipe labeler
  shards                     write/read MB/s, 8-view samples/s and view-crops/s per process
The OpenPose weights cannot be downloaded here; a randomly initialised network in the published
layout has the same cost. Usage: python bench/labels.py [--crops N] [--weights hand_pose_model.pth]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline.crop import crop_affine, warp_crop  # noqa: E402
from pipeline.detect import INVALID  # noqa: E402
from pipeline.labelers.mediapipe import MediaPipeLabeler  # noqa: E402
from pipeline.labelers.openpose import OpenPoseHandNet, OpenPoseLabeler, label_crop_plain  # noqa: E402
from pipeline.prepare import DetectorParams, detect_frames  # noqa: E402
from pipeline.synthetic import DEMO_CONFIG, generate_capture  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crops", type=int, default=4, help="crops for the OpenPose comparison (default 4)")
    ap.add_argument("--weights", default=None, help="published hand_pose_model.pth (default: random init)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-labels-"))
    try:
        capture = generate_capture(tmp / "capture", DEMO_CONFIG, workers=2, progress=False)
        frames = range(capture.num_frames)
        t0 = time.perf_counter()
        dets = detect_frames(capture, frames, DetectorParams(), progress=False)
        det_s = time.perf_counter() - t0
        views = capture.num_frames * capture.num_views
        print(f"detection: {views} views in {det_s:.2f} s ({views / det_s:.1f} views/s)", flush=True)

        crops = []
        for fi, vs in zip(frames, dets):
            for ci, v in enumerate(vs):
                if v.status != INVALID:
                    crops.append(warp_crop(capture.read_image(ci, fi), crop_affine(v.box, 256, v.flipped), 256))
        crops = np.stack(crops)
        print(f"{len(crops)} crops of 256x256", flush=True)

        t0 = time.perf_counter()
        mp_labeler = MediaPipeLabeler()
        mp_labeler.label(crops)
        mp_s = time.perf_counter() - t0
        mp_labeler.close()
        print(f"mediapipe labeler: {len(crops) / mp_s:.1f} crops/s", flush=True)

        weights = args.weights
        if weights is None:
            torch.manual_seed(0)
            weights = tmp / "hand_pose_model.pth"
            torch.save(OpenPoseHandNet().state_dict(), weights)
        labeler = OpenPoseLabeler(weights_path=weights, progress=False)
        sample = crops[: args.crops]
        t0 = time.perf_counter()
        plain = [label_crop_plain(labeler.net, c) for c in sample]
        plain_s = time.perf_counter() - t0
        print(f"openpose plain: {len(sample)} crops in {plain_s:.1f} s ({plain_s / len(sample):.2f} s/crop)",
              flush=True)
        t0 = time.perf_counter()
        kp, conf = labeler.label(sample, batch_size=len(sample))
        batched_s = time.perf_counter() - t0
        print(f"openpose batched: {len(sample)} crops in {batched_s:.1f} s ({batched_s / len(sample):.2f} s/crop)",
              flush=True)
        same = all(np.array_equal(kp[i], p[0]) and np.allclose(conf[i], p[1], atol=1e-6)
                   for i, p in enumerate(plain))

        from shards import measure_shard_io

        io = measure_shard_io(tmp / "shards", compressions=("none",), png=False, progress=print)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "benchmark": "labels",
        "detection_views_per_s": round(views / det_s, 1),
        "openpose_crops_per_s": round(len(sample) / batched_s, 3),
        "openpose_plain_crops_per_s": round(len(sample) / plain_s, 3),
        "openpose_ratio": round(plain_s / batched_s, 3),
        "openpose_same_peaks": bool(same),
        "openpose_weights": "given" if args.weights else "random init, published layout",
        "mediapipe_crops_per_s": round(len(crops) / mp_s, 1),
        "shards": {"compression": io["compression"],
                   **{k: round(io[k], 1) for k in ("write_MBps", "read_MBps", "samples_per_s", "view_crops_per_s")}},
        "goals": {"openpose_ratio": 1.0, "view_crops_per_s": 1000},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
