"""Benchmark: HDF5 shard write/read speed and crop compression options (none, lzf, gzip-1, PNG).

Writes a shard of natural-looking crops (smoothed multi-scale noise, a skin-coloured hand-like blob,
mild Gaussian sensor noise) with each compression option, then reads every sample back in random
order in this one process. The page cache is NOT dropped (the shard was just written, so reads come
from memory): the figures are the per-process decode/copy cost a DataLoader worker pays, not disk speed.

Prints progress lines, then one JSON object on the last line:
  write_MBps, read_MBps (raw crop bytes per second), samples_per_s (full 8-view samples with all labels),
  view_crops_per_s (``read_crops``), file_MB for the default compression (``pipeline.shards``), and
  ``options``: the same figures plus the compression ratio for every option; goals.
``measure_shard_io(tmpdir, ...)`` does the measuring and returns that dict (importable by other benchmarks).
Usage: python bench/shards.py [--samples 64] [--views 8] [--size 256] [--noise 2.0] [--seed 0] [--images DIR]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.shards import (COMPRESSIONS, DEFAULT_COMPRESSION, NUM_JOINTS, ShardReader,  # noqa: E402
                             ShardSample, ShardWriter)

GOAL_VIEW_CROPS_PER_S = 1000
MB = 1e6


def natural_crop(rng: np.random.Generator, size: int, noise_sigma: float) -> np.ndarray:
    """An RGB uint8 crop that compresses like a photo: smooth background, texture, a hand-like blob, noise."""
    def field(cells: int, amplitude: float) -> np.ndarray:
        grid = rng.normal(0.0, amplitude, (cells, cells, 3)).astype(np.float32)
        return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)

    img = rng.uniform(40, 200, 3).astype(np.float32) + field(4, 30) + field(16, 12) + field(64, 5)
    # hand-like blob: palm ellipse and five finger strokes, skin tone with shading
    mask = np.zeros((size, size), np.uint8)
    jitter = size // 10
    c = (size // 2 + int(rng.integers(-jitter, jitter + 1)), size // 2 + int(rng.integers(-jitter, jitter + 1)))
    cv2.ellipse(mask, c, (size // 6, size // 5), float(rng.uniform(0, 180)), 0, 360, 255, -1)
    for k in range(5):
        angle = rng.uniform(-1.2, 1.2) - np.pi / 2 + (k - 2) * 0.35
        length = size * rng.uniform(0.2, 0.35)
        tip = (int(c[0] + np.cos(angle) * length), int(c[1] + np.sin(angle) * length))
        cv2.line(mask, c, tip, 255, max(2, size // 18))
    mask = cv2.GaussianBlur(mask, (0, 0), 2.0).astype(np.float32)[..., None] / 255.0
    skin = np.array(rng.uniform([150, 100, 80], [235, 180, 150]), np.float32)
    shading = field(3, 25) + field(24, 6)
    img = img * (1 - mask) + (skin + shading) * mask
    if noise_sigma > 0:
        img += rng.normal(0.0, noise_sigma, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def image_crop(rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
    """A random square window of an RGB image (side 40-100 % of its shorter side), resized like a crop."""
    h, w = image.shape[:2]
    side = max(8, int(min(h, w) * rng.uniform(0.4, 1.0)))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return np.ascontiguousarray(cv2.resize(image[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_LINEAR))


def load_images(directory, limit: int = 200) -> list[np.ndarray]:
    """Up to ``limit`` RGB images (png/jpg) found under ``directory``."""
    paths = sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:limit]
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
    images = [cv2.cvtColor(im, cv2.COLOR_BGR2RGB) for im in images if im is not None]
    if not images:
        raise SystemExit(f"{directory}: no readable .png/.jpg images")
    return images


def make_samples(num_samples: int, num_views: int, size: int, noise_sigma: float, seed: int,
                 images: Optional[list[np.ndarray]] = None) -> list[ShardSample]:
    """Random labels; crops from ``images`` (random windows) when given, else :func:`natural_crop`."""
    rng = np.random.default_rng(seed)
    V, J = num_views, NUM_JOINTS
    samples = []
    for n in range(num_samples):
        if images:
            crops = np.stack([image_crop(rng, images[int(rng.integers(len(images)))], size) for _ in range(V)])
        else:
            crops = np.stack([natural_crop(rng, size, noise_sigma) for _ in range(V)])
        samples.append(ShardSample(
            frame_id=f"{n:06d}", crops=crops,
            keypoints=rng.uniform(0, size, (V, J, 2)).astype(np.float32),
            confidence=rng.uniform(0, 1, (V, J)).astype(np.float32),
            refined_confidence=rng.uniform(0, 1, (V, J)).astype(np.float32),
            view_valid=rng.random(V) > 0.1, recovered=rng.random(V) > 0.9, flipped=np.zeros(V, bool),
            crop_affine=rng.normal(size=(V, 2, 3)), crop_K=rng.normal(size=(V, 3, 3)),
            extrinsics=rng.normal(size=(V, 3, 4)), extrinsics_known=np.ones(V, bool),
            triangulated=rng.normal(size=(J, 3)).astype(np.float32),
            reprojection_error=rng.uniform(0, 5, (V, J)).astype(np.float32)))
    return samples


ATTRS = {"labeler": "bench", "source_capture": "/bench/capture", "capture_hash": "0" * 64, "handedness": "right",
         "code_version": "bench", "labeler_params": {}, "provenance": {"bench": "bench/shards.py"}}


def _measure_hdf5(path: Path, samples: list[ShardSample], compression: str, order: list[int], repeats: int) -> dict:
    V = samples[0].crops.shape[0]
    S = samples[0].crops.shape[1]
    raw = len(samples) * V * S * S * 3
    t0 = time.perf_counter()
    with ShardWriter(path, [f"cam{v:02d}" for v in range(V)], S, ATTRS, compression=compression) as w:
        for s in samples:
            w.add(s)
    write_s = time.perf_counter() - t0
    size = path.stat().st_size
    crops_s = samples_s = float("inf")
    with ShardReader(path) as r:
        out = np.empty((V, S, S, 3), np.uint8)
        for _ in range(repeats):  # best of `repeats` passes, each in random order
            t0 = time.perf_counter()
            for i in order:
                r.read_crops(i, out=out)
            crops_s = min(crops_s, time.perf_counter() - t0)
            t0 = time.perf_counter()
            for i in order:
                r[i]
            samples_s = min(samples_s, time.perf_counter() - t0)
        assert np.array_equal(r.read_crops(order[0]), samples[order[0]].crops)  # lossless
    n = len(samples)
    return {"file_MB": size / MB, "ratio": raw / size, "write_MBps": raw / MB / write_s,
            "read_MBps": raw / MB / crops_s, "view_crops_per_s": n * V / crops_s,
            "samples_per_s": n / samples_s, "samples_with_labels_MBps": raw / MB / samples_s}


def _measure_png(path: Path, samples: list[ShardSample], order: list[int], repeats: int) -> dict:
    """Encoded alternative: one lossless PNG (cv2, level 1) per view crop in a vlen uint8 dataset."""
    V, S = samples[0].crops.shape[:2]
    raw = len(samples) * V * S * S * 3
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("crops_png", shape=(len(samples) * V,), dtype=h5py.vlen_dtype(np.uint8))
        for n, s in enumerate(samples):
            for v in range(V):
                ok, buf = cv2.imencode(".png", cv2.cvtColor(s.crops[v], cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_PNG_COMPRESSION, 1])
                ds[n * V + v] = buf.ravel()
    write_s = time.perf_counter() - t0
    size = path.stat().st_size
    best = float("inf")
    with h5py.File(path, "r") as f:
        ds = f["crops_png"]
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in order:
                for v in range(V):
                    cv2.cvtColor(cv2.imdecode(ds[i * V + v], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            best = min(best, time.perf_counter() - t0)
        i = order[0]
        back = cv2.cvtColor(cv2.imdecode(ds[i * V], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.array_equal(back, samples[i].crops[0])
    n = len(samples)
    return {"file_MB": size / MB, "ratio": raw / size, "write_MBps": raw / MB / write_s,
            "read_MBps": raw / MB / best, "view_crops_per_s": n * V / best}


def measure_shard_io(tmpdir, num_samples: int = 64, num_views: int = 8, crop_size: int = 256,
                     compressions: Sequence[str] = ("none", "lzf", "gzip1"), png: bool = True,
                     noise_sigma: float = 2.0, seed: int = 0, repeats: int = 2,
                     images: Optional[list[np.ndarray]] = None,
                     progress: Optional[Callable[[str], None]] = print) -> dict:
    """Write and read shards in ``tmpdir`` with each compression option; figures for each and the default.

    Crops are synthetic (:func:`natural_crop`, sensor noise ``noise_sigma``) or, with ``images`` (RGB
    arrays), random windows of those images. Reads are in random sample order from the page cache
    (nothing dropped), best of ``repeats`` passes.
    """
    say = progress or (lambda _msg: None)
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    samples = make_samples(num_samples, num_views, crop_size, noise_sigma, seed, images)
    source = f"windows of {len(images)} images" if images else f"synthetic, noise sigma {noise_sigma}"
    say(f"generated {num_samples} samples x {num_views} views x {crop_size}^2 crops "
        f"({time.perf_counter() - t0:.1f} s, {source})")
    order = list(range(num_samples))
    random.Random(seed).shuffle(order)
    options = {}
    names = list(dict.fromkeys([DEFAULT_COMPRESSION, *compressions]))
    for name in names:
        if name not in COMPRESSIONS:
            raise ValueError(f"unknown compression {name!r}")
        res = _measure_hdf5(tmpdir / f"shard-{name}.h5", samples, name, order, repeats)
        options[name] = res
        say(f"{name:>6}: ratio {res['ratio']:.2f}, write {res['write_MBps']:.0f} MB/s, read {res['read_MBps']:.0f} MB/s"
            f" = {res['view_crops_per_s']:.0f} view-crops/s, {res['samples_per_s']:.0f} samples/s with labels, "
            f"{res['file_MB']:.1f} MB")
    if png:
        res = _measure_png(tmpdir / "shard-png.h5", samples, order, repeats)
        options["png"] = res
        say(f"   png: ratio {res['ratio']:.2f}, write {res['write_MBps']:.0f} MB/s, read {res['read_MBps']:.0f} MB/s"
            f" = {res['view_crops_per_s']:.0f} view-crops/s, {res['file_MB']:.1f} MB")
    chosen = options[DEFAULT_COMPRESSION]
    return {
        "compression": DEFAULT_COMPRESSION,
        "write_MBps": chosen["write_MBps"], "read_MBps": chosen["read_MBps"],
        "samples_per_s": chosen["samples_per_s"], "view_crops_per_s": chosen["view_crops_per_s"],
        "file_MB": chosen["file_MB"],
        "options": options,
        "config": {"samples": num_samples, "views": num_views, "crop_size": crop_size, "noise_sigma": noise_sigma,
                   "crops": source, "seed": seed, "repeats": repeats,
                   "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
                   "read": "random order, one process, page cache warm (not dropped), best of repeats; "
                           "write includes close + fsync + rename"},
        "goals": {"view_crops_per_s": GOAL_VIEW_CROPS_PER_S,
                  "met": chosen["view_crops_per_s"] >= GOAL_VIEW_CROPS_PER_S},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--noise", type=float, default=2.0, help="Gaussian sensor noise sigma, grey levels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-png", action="store_true")
    p.add_argument("--images", help="take crops from the .png/.jpg images under this directory (e.g. a capture)")
    p.add_argument("--dir", help="directory for the shards (default: a temporary one, removed)")
    args = p.parse_args(argv)
    kw = dict(num_samples=args.samples, num_views=args.views, crop_size=args.size, noise_sigma=args.noise,
              seed=args.seed, repeats=args.repeats, png=not args.no_png,
              images=load_images(args.images) if args.images else None)
    if args.dir:
        result = measure_shard_io(args.dir, **kw)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-shards-") as d:
            result = measure_shard_io(d, **kw)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
