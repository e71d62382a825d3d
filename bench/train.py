"""Benchmark: HaMuCo training step time and peak memory on this machine's CPU.

Configurations (each in its own process, so peak RSS is its own):
  resnet50, 1 group × 8 views, 256²   and   resnet18, 4 groups × 8 views, 256²
Variants, each against fp32 measured in the same run: fp32 (plain, NCHW); fp32 + channels_last;
bf16 autocast (+ channels_last); compile (fp32, the backbone through torch.compile's inductor
CPU backend; its compilation, the first step, is reported apart). A variant whose first timed
step (compile: the first after compilation) takes over 3x the fp32 one is stopped there and
reported as such (bf16 on a CPU without native bf16 costs a minute a step), so the benchmark ends
in minutes on either kind of CPU. A variant is kept as "fastest" only if its first-step loss
matches fp32 within 2%. "auto" names the variant `hamuco train --precision auto` runs here.
Prints progress lines, then one JSON object on the last line (s/step = median of the timed
steps after warm-up; peak_rss_gb = the process's maximum resident set; hardware = CPU model,
capability, native-bf16 flags, threads, GPU).
Usage: python bench/train.py [--steps 5] [--warmup 2] [--only resnet50] [--variants fp32,channels_last,bf16,compile]
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
VARIANTS = ("fp32", "channels_last", "bf16", "compile")


def worker(backbone: str, groups: int, views: int, variant: str, steps: int, warmup: int,
           device: str = "cpu", limit_s: float = 0.0) -> dict:
    import resource
    import threading
    import time

    import torch

    sys.path.insert(0, str(REPO))
    from model.hamuco import HaMuCo
    from model.objective import HaMuCoObjective
    from model.trainer import keep_freed_memory_in_process, make_optimizer

    malloc_tuned = keep_freed_memory_in_process()  # as TrainModel does
    torch.manual_seed(0)
    model = HaMuCo(backbone, "none", image_size=256)
    params = sum(p.numel() for p in model.parameters())
    if variant in ("channels_last", "bf16"):
        model = model.to(memory_format=torch.channels_last)
    model = model.to(device)
    opt = make_optimizer(model, lr=3e-4)  # the trainer's optimizer (fused AdamW)
    if variant == "compile":
        model.single_view.backbone = torch.compile(model.single_view.backbone)
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
    batch = {k: v.to(device) for k, v in batch.items()}
    cuda = device.startswith("cuda")
    util = GpuUtilisation() if cuda else None
    times, first_loss, compile_s = [], None, None
    model.train()
    limited_step = 1 if variant == "compile" else 0  # the first step of the variant's steady state

    def stop() -> None:  # over the limit: report what is known and end the process here
        print(json.dumps({"backbone": backbone, "groups": groups, "views": views, "variant": variant,
                          "stopped": f"first step over {limit_s:.1f} s (3x fp32's)", "s_per_step": None,
                          "compile_s": compile_s, "first_loss": None, "device": device, "gpu": None,
                          "breakdown": None}), flush=True)
        os._exit(0)
    for step in range(warmup + steps):
        if step == warmup and util:
            util.start()
        watchdog = threading.Timer(limit_s, stop) if limit_s > 0 and step == limited_step else None
        if watchdog:
            watchdog.start()
        t0 = time.perf_counter()
        with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=variant == "bf16"):
            losses = objective(model, batch, step)
        opt.zero_grad(set_to_none=True)
        losses["total"].float().backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if watchdog:
            watchdog.cancel()
        if variant == "compile" and step == 0:
            compile_s = round(dt, 1)
        if first_loss is None:
            first_loss = float(losses["total"])
        if step == limited_step:
            first_step = dt
        if step >= warmup:
            times.append(dt)
    times.sort()
    gpu = util.stop() if util else None
    breakdown = stage_breakdown(model, objective, opt, batch, variant) \
        if variant == auto_variant() and not cuda else None
    return {"backbone": backbone, "groups": groups, "views": views, "variant": variant, "breakdown": breakdown,
            "device": device, "gpu": gpu, "stopped": None, "compile_s": compile_s,
            "first_step_s": round(first_step, 3),
            "s_per_step": round(times[len(times) // 2], 3), "first_loss": round(first_loss, 5),
            "params_M": round(params / 1e6, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
            "threads": torch.get_num_threads(), "keep_freed_memory": malloc_tuned}


def auto_variant() -> str:
    """The variant TrainModel runs with ``--precision auto`` on this machine."""
    from model.precision import resolve_precision

    return "bf16" if resolve_precision("auto", "cpu", warn=False).bf16 else "fp32"


class GpuUtilisation:
    """Samples the GPU's utilisation (NVML, every 0.1 s) from a thread between start() and stop()."""

    def __init__(self) -> None:
        import threading

        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import torch

        while not self._stop.wait(0.1):
            try:
                self.samples.append(int(torch.cuda.utilization()))
            except Exception:  # no NVML: nothing to sample
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict:
        import torch

        self._stop.set()
        self._thread.join()
        s = self.samples
        return {"name": torch.cuda.get_device_name(), "utilisation_mean_pct": round(sum(s) / len(s), 1) if s else None,
                "samples": len(s), "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)}


def stage_breakdown(model, objective, opt, batch, variant: str, steps: int = 2) -> dict:
    """Seconds per stage of one training step (median of ``steps``): the forward stages timed by module
    hooks (backbone, hand-model decoding, graph features, cross-view interaction), the loss terms
    (Procrustes alignment and losses: the objective's time outside the network), the backbone's
    backward (a separate backward through the backbone alone on the same input), the whole backward,
    and the optimizer; plus the step's FLOPs and its ratio to the compute bound (FLOPs at this
    machine's measured convolution rate)."""
    import statistics
    import time

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    stamps: dict[str, float] = {}
    acc: dict[str, list] = {}

    def hooks(name, module):
        def pre(*_):
            stamps[name] = time.perf_counter()

        def post(*_):
            acc.setdefault(name, [0.0])[-1] += time.perf_counter() - stamps[name]
        return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    stages = {"backbone_forward": model.single_view.backbone, "graph_features": model.graph_features,
              "cross_view_interaction": model.cross_view, "network_forward": model}
    handles = [h for name, m in stages.items() for h in hooks(name, m)]
    hand_model = model.hand_model  # decoding goes through forward_rotmat (single view and interaction)
    plain_decode = hand_model.forward_rotmat

    def timed_decode(*a, **k):
        t = time.perf_counter()
        out = plain_decode(*a, **k)
        acc["hand_model_decoding"][-1] += time.perf_counter() - t
        return out
    hand_model.forward_rotmat = timed_decode
    rows = []
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bf16")
    try:
        for _ in range(steps):
            for v in acc.values():
                v.append(0.0)
            for name in (*stages, "hand_model_decoding"):
                acc.setdefault(name, [0.0])
            t0 = time.perf_counter()
            with autocast:
                losses = objective(model, batch, 0)
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            losses["total"].float().backward()
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
            row = {k: v[-1] for k, v in acc.items()}
            row["losses_and_procrustes"] = (t1 - t0) - row["network_forward"]
            row["backward_total"] = t2 - t1
            row["optimizer"] = t3 - t2
            row["step"] = t3 - t0
            rows.append(row)
    finally:
        for h in handles:
            h.remove()
        del hand_model.forward_rotmat
    # the backbone's own backward on the same input
    images = batch["images"].flatten(0, 1)
    if variant in ("channels_last", "bf16"):
        images = images.contiguous(memory_format=torch.channels_last)
    bb = []
    for _ in range(steps):
        with autocast:
            feats = model.single_view.backbone(images)
        loss = sum(f.float().mean() for f in feats)
        t0 = time.perf_counter()
        loss.backward()
        bb.append(time.perf_counter() - t0)
        opt.zero_grad(set_to_none=True)
    out = {k: round(statistics.median(r[k] for r in rows), 4) for k in rows[0]}
    out["backbone_backward"] = round(statistics.median(bb), 4)
    out["rest_of_backward"] = round(out["backward_total"] - out["backbone_backward"], 4)
    out["hand_model_decoding_note"] = "forward only, single view and interaction together"
    with FlopCounterMode(display=False) as fc:
        with autocast:
            losses = objective(model, batch, 0)
        losses["total"].float().backward()
    opt.zero_grad(set_to_none=True)
    flops = fc.get_total_flops()
    rate = conv_rate(variant)
    out["step_gflop"] = round(flops / 1e9, 1)
    out["conv_gflops_per_s"] = round(rate / 1e9, 1)
    out["compute_bound_s"] = round(flops / rate, 3)
    out["ratio_to_compute_bound"] = round(out["step"] / (flops / rate), 2)
    return out


def conv_rate(variant: str) -> float:
    """FLOP/s of a large 3×3 convolution (forward) on this CPU in the variant's precision."""
    import time

    import torch

    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False)
    x = torch.randn(8, 256, 32, 32)
    if variant in ("channels_last", "bf16"):
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    flops = 2 * 8 * 256 * 256 * 9 * 32 * 32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bf16"):
        conv(x)
        t0 = time.perf_counter()
        for _ in range(5):
            conv(x)
        dt = (time.perf_counter() - t0) / 5
    return flops / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", choices=sorted(CONFIGS), default=None)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--variants", default="fp32,channels_last,bf16", help="comma-separated subset of "
                    + ", ".join(VARIANTS) + " (default: all but compile, whose compilation alone takes 1-1.5 minutes "
                    "per configuration here and which was 0.84-1.07x fp32 on an AVX2 CPU; fp32 always runs: every "
                    "variant is compared with it)")
    ap.add_argument("--limit", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--worker", nargs=4, metavar=("BACKBONE", "GROUPS", "VIEWS", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        b, gr, v, var = args.worker
        print(json.dumps(worker(b, int(gr), int(v), var, args.steps, args.warmup, args.device, args.limit)))
        return
    from model.precision import hardware

    hw = hardware(args.device)
    print(f"hardware: {hw['cpu_model']}, {hw['cpu_capability']}, native bf16: {hw['cpu_native_bf16']}, "
          f"{hw['torch_threads']} threads" + (f", GPU {hw['gpu']}" if hw["gpu"] else ""), flush=True)
    chosen = [v for v in VARIANTS if v == "fp32" or v in args.variants.split(",")]
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device here: the GPU benchmark runs where one is (python bench/train.py --device cuda)")
            print(json.dumps({"benchmark": "train", "device": args.device, "available": False}))
            return
    results = []
    for backbone, (groups, views) in CONFIGS.items():
        if args.only and backbone != args.only:
            continue
        limit = 0.0
        for variant in chosen:
            if args.device != "cpu" and variant in ("channels_last", "compile"):
                continue
            out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--warmup", str(args.warmup),
                                  "--device", args.device, "--limit", str(limit),
                                  "--worker", backbone, str(groups), str(views), variant],
                                 capture_output=True, text=True, cwd=REPO, env={**os.environ})
            if out.returncode != 0:
                print(f"{backbone} {variant}: failed\n{out.stderr[-2000:]}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            if r["stopped"]:
                print(f"{backbone} {groups}x{views} {variant:<13} stopped: {r['stopped']}", flush=True)
                continue
            if variant == "fp32":
                limit = 3 * r["first_step_s"]
            print(f"{backbone} {groups}x{views} {variant:<13} {r['s_per_step']:.3f} s/step, peak RSS "
                  f"{r['peak_rss_gb']:.2f} GB, first loss {r['first_loss']}, {r['params_M']} M params"
                  + (f", compilation {r['compile_s']} s" if r["compile_s"] else ""), flush=True)
    summary = {}
    for backbone in CONFIGS:
        rs = {r["variant"]: r for r in results if r["backbone"] == backbone}
        if "fp32" not in rs:
            continue
        ref = rs["fp32"]
        ok = {k: r for k, r in rs.items() if not r["stopped"]
              and abs(r["first_loss"] - ref["first_loss"]) <= 0.02 * abs(ref["first_loss"])}
        best = min(ok.values(), key=lambda r: r["s_per_step"])
        auto = rs.get(auto_variant())
        summary[backbone] = {"groups_x_views": f"{ref['groups']}x{ref['views']}", "params_M": ref["params_M"],
                             "fp32_s_per_step": ref["s_per_step"], "fp32_peak_rss_gb": ref["peak_rss_gb"],
                             "fastest_variant": best["variant"], "fastest_s_per_step": best["s_per_step"],
                             "fastest_peak_rss_gb": best["peak_rss_gb"],
                             "speedup_vs_fp32": round(ref["s_per_step"] / best["s_per_step"], 2),
                             "auto_variant": auto_variant(),
                             "auto_speedup_vs_fp32": round(ref["s_per_step"] / auto["s_per_step"], 2)
                             if auto and not auto["stopped"] else None,
                             "variants": {k: {"s_per_step": r["s_per_step"], "peak_rss_gb": r.get("peak_rss_gb"),
                                              "speedup_vs_fp32": round(ref["s_per_step"] / r["s_per_step"], 2)
                                              if r["s_per_step"] else None,
                                              "compile_s": r.get("compile_s"), "stopped": r["stopped"],
                                              "loss_matches_fp32": k in ok} for k, r in rs.items()},
                             "auto_stage_breakdown_s": auto.get("breakdown") if auto else None,
                             "gpu": best.get("gpu")}
    r50 = summary.get("resnet50", {})
    print(json.dumps({"benchmark": "train", "device": args.device, "hardware": hw, "results": summary,
                      "goal": {"resnet50_1x8_s_per_step": 1.25, "speedup_vs_fp32_without_native_bf16": 1.25, "official_s_per_step": 2.5, "official_rss_gb": 4.1,
                               "official_source": "the official HaMuCo code measured on this machine "
                                                  "(../shared/REFERENCE.md); it is not part of this repository"},
                      "resnet50_ratio_to_official": round(2.5 / r50["fastest_s_per_step"], 2) if r50 else None}))


if __name__ == "__main__":
    main()
