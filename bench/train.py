"""Benchmark: HaMuCo training step time and peak memory on this machine's CPU.

Configurations (each in its own process, so peak RSS is its own):
  resnet50, 1 group × 8 views, 256²   and   resnet18, 4 groups × 8 views, 256²
Variants: fp32; fp32 + channels_last; bf16 autocast (+ channels_last). A variant is kept as
"fastest" only if its first-step loss matches fp32 within 2%.
Prints progress lines, then one JSON object on the last line (s/step = median of the timed
steps after warm-up; peak_rss_gb = the process's maximum resident set).
Usage: python bench/train.py [--steps 5] [--warmup 2] [--only resnet50]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"resnet50": (1, 8), "resnet18": (4, 8)}
VARIANTS = ("fp32", "channels_last", "bf16")


def worker(backbone: str, groups: int, views: int, variant: str, steps: int, warmup: int) -> dict:
    import resource
    import time

    import torch

    sys.path.insert(0, str(REPO))
    from model.hamuco import HaMuCo
    from model.objective import HaMuCoObjective

    torch.manual_seed(0)
    model = HaMuCo(backbone, "none", image_size=256)
    params = sum(p.numel() for p in model.parameters())
    if variant in ("channels_last", "bf16"):
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    objective = HaMuCoObjective()
    g = torch.Generator().manual_seed(1)
    batch = {
        "images": torch.randn(groups, views, 3, 256, 256, generator=g),
        "keypoints": torch.rand(groups, views, 21, 2, generator=g) * 255,
        "confidence": torch.rand(groups, views, 21, generator=g),
        "view_mask": torch.ones(groups, views, dtype=torch.bool),
        "extrinsics": torch.zeros(groups, views, 3, 4),
        "extrinsics_known": torch.zeros(groups, views, dtype=torch.bool),
    }
    times, first_loss = [], None
    model.train()
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bf16"):
            losses = objective(model, batch, step)
        opt.zero_grad(set_to_none=True)
        losses["total"].float().backward()
        opt.step()
        dt = time.perf_counter() - t0
        if first_loss is None:
            first_loss = float(losses["total"])
        if step >= warmup:
            times.append(dt)
    times.sort()
    return {"backbone": backbone, "groups": groups, "views": views, "variant": variant,
            "s_per_step": round(times[len(times) // 2], 3), "first_loss": round(first_loss, 5),
            "params_M": round(params / 1e6, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", choices=sorted(CONFIGS), default=None)
    ap.add_argument("--worker", nargs=4, metavar=("BACKBONE", "GROUPS", "VIEWS", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        b, gr, v, var = args.worker
        print(json.dumps(worker(b, int(gr), int(v), var, args.steps, args.warmup)))
        return
    results = []
    for backbone, (groups, views) in CONFIGS.items():
        if args.only and backbone != args.only:
            continue
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--warmup", str(args.warmup),
                                  "--worker", backbone, str(groups), str(views), variant],
                                 capture_output=True, text=True, cwd=REPO, env={**os.environ})
            if out.returncode != 0:
                print(f"{backbone} {variant}: failed\n{out.stderr[-2000:]}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{backbone} {groups}x{views} {variant:<13} {r['s_per_step']:.3f} s/step, peak RSS "
                  f"{r['peak_rss_gb']:.2f} GB, first loss {r['first_loss']}, {r['params_M']} M params", flush=True)
    summary = {}
    for backbone in CONFIGS:
        rs = {r["variant"]: r for r in results if r["backbone"] == backbone}
        if "fp32" not in rs:
            continue
        ref = rs["fp32"]
        ok = {k: r for k, r in rs.items() if abs(r["first_loss"] - ref["first_loss"]) <= 0.02 * abs(ref["first_loss"])}
        best = min(ok.values(), key=lambda r: r["s_per_step"])
        summary[backbone] = {"groups_x_views": f"{ref['groups']}x{ref['views']}", "params_M": ref["params_M"],
                             "fp32_s_per_step": ref["s_per_step"], "fp32_peak_rss_gb": ref["peak_rss_gb"],
                             "fastest_variant": best["variant"], "fastest_s_per_step": best["s_per_step"],
                             "fastest_peak_rss_gb": best["peak_rss_gb"],
                             "speedup_vs_fp32": round(ref["s_per_step"] / best["s_per_step"], 2),
                             "variants": {k: {"s_per_step": r["s_per_step"], "peak_rss_gb": r["peak_rss_gb"],
                                              "loss_matches_fp32": k in ok} for k, r in rs.items()}}
    r50 = summary.get("resnet50", {})
    print(json.dumps({"benchmark": "train", "results": summary,
                      "goal": {"resnet50_1x8_s_per_step": 1.25, "official_s_per_step": 2.5, "official_rss_gb": 4.1},
                      "resnet50_ratio_to_official": round(2.5 / r50["fastest_s_per_step"], 2) if r50 else None}))


if __name__ == "__main__":
    main()
