"""Benchmark: detection, labelers and shard I/O of the data-preparation pipeline.

Prints progress lines, then one JSON object on the last line:
  detection_views_per_s      MediaPipe detection + cross-view selection on the embedded capture
  openpose_crops_per_s       batched OpenPose labeler, published settings (4 scales, box 368), 256² crops
  openpose_plain_crops_per_s the plain one-crop-at-a-time implementation, same run, same crops
  openpose_ratio             batched / plain (goal ≥ 1.0 on CPU)
  openpose_same_peaks        whether both give the same peaks on these crops
  openpose_fast_*            the fast path this machine picks (bf16 with native bf16, NNPACK fp32 on other
                             CPUs, fp16 on a GPU) against the plain fp32, and its agreement with fp32
  openpose_variants          every fast path measured here (one over 3x the plain fp32 stops after a crop)
  hardware                   CPU model, capability (AVX2, AVX512), native-bf16 flags, threads, GPU
  mediapipe_crops_per_s      the MediaPipe labeler
  shards                     write/read MB/s, 8-view samples/s and view-crops/s per process
The OpenPose weights cannot be downloaded here; a randomly initialised network in the published
layout (``random_hand_net``: He-initialised and calibrated so its maps depend on the image and pass
the peak threshold) has the same cost; give the published file with --weights for real labels. Usage: python bench/labels.py [--crops N] [--weights hand_pose_model.pth] [--device cuda]
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
from pipeline.labelers.openpose import OpenPoseLabeler, label_crop_plain, random_hand_net  # noqa: E402
from pipeline.prepare import DetectorParams, detect_frames  # noqa: E402
from pipeline.synthetic import DEMO_CONFIG, generate_capture  # noqa: E402
from train import GpuUtilisation  # noqa: E402


def realistic_crops(tmp: Path, demo_crops: np.ndarray, n: int) -> np.ndarray:
    """``n`` 256² crops of rendered hands: the demo capture's, then a dome capture's with occluders."""
    from pipeline.synthetic import SynthConfig

    crops = list(demo_crops[:n])
    seed = 5
    while len(crops) < n:
        cap = generate_capture(tmp / f"occluded-{seed}", SynthConfig(cameras=8, frames=4, seed=seed, rig="dome",
                                                                     occluders=2), workers=2, progress=False)
        dets = detect_frames(cap, range(cap.num_frames), DetectorParams(), progress=False)
        for fi, vs in enumerate(dets):
            for ci, v in enumerate(vs):
                if v.status != INVALID and len(crops) < n:
                    crops.append(warp_crop(cap.read_image(ci, fi), crop_affine(v.box, 256, v.flipped), 256))
        seed += 1
    return np.stack(crops)


def fast_agreement(exact, fast, crops: np.ndarray) -> dict:
    """The fast path against fp32 on the same crops: found/not-found agreement per joint, the
    keypoint difference (pixels) over the joints both found, the largest confidence difference."""
    kp0, c0 = exact.label(crops, batch_size=4, progress=False)
    kp1, c1 = fast.label(crops, batch_size=4, progress=False)
    f0, f1 = c0 > 0, c1 > 0
    both = f0 & f1
    d = np.linalg.norm(kp0 - kp1, axis=-1)[both]
    return {"crops": int(len(crops)), "joints_found_fp32": int(f0.sum()), "joints_found_fast": int(f1.sum()),
            "found_agreement": round(float((f0 == f1).mean()), 4),
            "keypoint_diff_p95_px": round(float(np.percentile(d, 95)), 3) if d.size else None,
            "share_within_1px": round(float((d <= 1.0).mean()), 4) if d.size else None,
            "max_confidence_diff": round(float(np.abs(c0 - c1).max()), 4)}


STOPPED = 3  # exit status of a probe stopped at its limit


def _probe(weights, impl: str, device: str, crops: np.ndarray, limit_s: float, queue) -> None:
    """In a child process: the seconds one call of the labeler path ``impl`` takes on ``crops``, or None as
    soon as it has taken ``limit_s`` (a watchdog ends the process there)."""
    import os
    import threading

    lab = OpenPoseLabeler(weights_path=weights, progress=False, device=device, implementation=impl)

    def stop() -> None:  # nothing is sent: the parent reads the exit status
        os._exit(STOPPED)
    watchdog = threading.Timer(limit_s, stop)
    t0 = time.perf_counter()
    watchdog.start()
    lab.label(crops)
    watchdog.cancel()
    queue.put(time.perf_counter() - t0)


def probe_first_crop(weights, impl: str, device: str, crops: np.ndarray, limit_s: float):
    """Seconds the path ``impl`` takes on its first crop, measured in a fresh process that is stopped at
    ``limit_s`` (None then): an emulated bf16 path on an AVX2 CPU costs minutes per crop."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_probe, args=(str(weights), impl, device, crops, limit_s, queue))
    proc.start()
    proc.join()
    if proc.exitcode == STOPPED:
        return None
    if proc.exitcode != 0:
        raise RuntimeError(f"the {impl} probe failed (exit status {proc.exitcode})")
    return queue.get(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crops", type=int, default=4, help="crops for the OpenPose comparison (default 4)")
    ap.add_argument("--weights", default=None, help="published hand_pose_model.pth (default: random init)")
    ap.add_argument("--agreement-crops", type=int, default=None, help="crops for the fast-path agreement (default: "
                    "as many as take about 4 minutes here, 8 to 64)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda: the OpenPose labelers run there "
                    "(fast path = fp16 autocast on a GPU, the crops of a batch in one call)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: the GPU benchmark runs where one is (python bench/labels.py --device cuda)")
        print(json.dumps({"benchmark": "labels", "device": args.device, "available": False}))
        return
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
        if weights is None:  # a random network whose maps respond to the image (agreement is not trivial)
            weights = tmp / "hand_pose_model.pth"
            torch.save(random_hand_net(0, crops[0]).state_dict(), weights)
        labeler = OpenPoseLabeler(weights_path=weights, progress=False, device=args.device, precision="fp32")
        sample = crops[: args.crops]
        t0 = time.perf_counter()
        plain = [label_crop_plain(labeler.net, c) for c in sample]
        plain_s = time.perf_counter() - t0
        plain_per_crop = plain_s / len(sample)
        print(f"openpose plain fp32 (published algorithm): {len(sample)} crops in {plain_s:.1f} s "
              f"({plain_per_crop:.2f} s/crop)", flush=True)
        t0 = time.perf_counter()
        kp, conf = labeler.label(sample, batch_size=len(sample))
        batched_s = time.perf_counter() - t0
        print(f"openpose batched fp32: {len(sample)} crops in {batched_s:.1f} s ({batched_s / len(sample):.2f} s/crop)",
              flush=True)
        same = all(np.array_equal(kp[i], p[0]) and np.allclose(conf[i], p[1], atol=1e-6)
                   for i, p in enumerate(plain))
        fast = OpenPoseLabeler(weights_path=weights, progress=False, precision="fast", device=args.device)
        print(f"fast path here: {fast.implementation} ({fast.implementation_reason})", flush=True)
        # every fast path this device can run, the chosen one first; one slower than 3x the plain fp32 on
        # its first crop is stopped there and reported as such
        candidates = [fast.implementation] + [i for i in (("bf16", "nnpack") if args.device == "cpu" else ())
                                              if i != fast.implementation]
        variants, gpu = {}, None
        for impl in candidates:
            lab = fast if impl == fast.implementation else OpenPoseLabeler(
                weights_path=weights, progress=False, device=args.device, implementation=impl)
            util = GpuUtilisation() if args.device.startswith("cuda") else None
            if util:
                lab.label(sample[:1])  # warm-up (kernels, autotuning)
                util.start()
            first = probe_first_crop(weights, impl, args.device, sample[:1], limit_s=3 * plain_per_crop)
            if first is None or first > 3 * plain_per_crop:
                took = f"{first:.1f} s" if first is not None else f"more than {3 * plain_per_crop:.1f} s (stopped there)"
                variants[impl] = {"s_per_crop": round(first, 3) if first is not None else None,
                                  "ratio_to_plain": round(plain_per_crop / first, 3) if first is not None else None,
                                  "stopped": f"first crop {took}: over 3x the plain fp32 ({plain_per_crop:.1f} s)"}
                print(f"openpose {impl}: first crop {took}, over 3x the plain fp32: not measured further", flush=True)
                continue
            lab.label(sample[:1])  # in this process too (first-call costs)
            t0 = time.perf_counter()
            lab.label(sample, batch_size=len(sample))
            impl_s = time.perf_counter() - t0
            if util:
                gpu = util.stop()
            variants[impl] = {"s_per_crop": round(impl_s / len(sample), 3),
                              "ratio_to_plain": round(plain_s / impl_s, 3), "stopped": None}
            print(f"openpose {impl}: {len(sample)} crops in {impl_s:.1f} s ({impl_s / len(sample):.2f} s/crop, "
                  f"{plain_s / impl_s:.2f}x the plain fp32)", flush=True)
        fast_s = variants[fast.implementation]["s_per_crop"] * len(sample)
        n_agree = args.agreement_crops
        if n_agree is None:  # as many as fit in about 4 minutes on this machine (fp32 and fast path), 8 to 64
            per_crop = batched_s / len(sample) + fast_s / len(sample)
            n_agree = int(min(64, max(8, 240 // max(per_crop, 1e-3))))
        agreement = fast_agreement(labeler, fast, realistic_crops(tmp, crops, n_agree))
        print(f"fast path ({fast.implementation}) against fp32 on {agreement['crops']} crops: {agreement}", flush=True)

        from shards import measure_shard_io

        io = measure_shard_io(tmp / "shards", compressions=("none",), png=False, progress=print)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from model.precision import hardware

    result = {
        "benchmark": "labels", "device": args.device, "gpu": gpu, "hardware": hardware(args.device),
        "detection_views_per_s": round(views / det_s, 1),
        "openpose_crops_per_s": round(len(sample) / batched_s, 3),
        "openpose_plain_crops_per_s": round(len(sample) / plain_s, 3),
        "openpose_ratio": round(plain_s / batched_s, 3),
        "openpose_same_peaks": bool(same),
        "openpose_fast_implementation": fast.implementation,
        "openpose_fast_crops_per_s": round(len(sample) / fast_s, 3),
        "openpose_fast_ratio_to_plain": round(plain_s / fast_s, 3),
        "openpose_variants": variants,
        "openpose_fast_agreement": agreement,
        "openpose_weights": "given" if args.weights else "random_hand_net (calibrated random init, published layout)",
        "mediapipe_crops_per_s": round(len(crops) / mp_s, 1),
        "shards": {"compression": io["compression"],
                   **{k: round(io[k], 1) for k in ("write_MBps", "read_MBps", "samples_per_s", "view_crops_per_s")}},
        "goals": {"openpose_ratio": 1.0, "view_crops_per_s": 1000,
                  "openpose_fast_ratio_to_plain": 1.8 if fast.implementation in ("bf16", "fp16") else 1.5,
                  "found_agreement": 0.99,
                  "share_within_1px": 0.95 if fast.implementation in ("bf16", "fp16") else 1.0},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
