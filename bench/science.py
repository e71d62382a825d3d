"""The science benchmark under the protocol fixed in bench/PROTOCOL.md (printed at the top of RESULTS.md).

    python bench/science.py [--out science_output] [--results results] [--quick]
                            [--workers N] [--scheduler-host 127.0.0.1 --scheduler-port 8082]

Everything runs as Luigi tasks (synthetic captures, preparation per capture, one training per
row and seed, one evaluation per network and test set, the baselines per test set), so an
interrupted run started again resumes where it stopped, and with ``--scheduler-host`` the tasks
spread over every worker (on any machine) connected to that ``luigid``. Stages:

1. captures: training (ring, seeds 100–103), validation (ring, 150), held-out test (ring 200, 201;
   dome with occluders 300);
2. preparation with MediaPipe pseudo labels (and the ``noisy-gt`` labeler for the noise curve);
3. the shape-prior weight chosen on the validation capture (official 1 against the seed's 100);
4. every row × seed trained and evaluated on the held-out captures (and the within-capture test
   frames), the baselines, the ablations, the noise curve and one run twice as long;
5. ``results/science.json``, ``RESULTS.md`` and plots, from the per-frame tables alone
   (``--report-only`` rewrites them without running anything).

``--quick`` is a smoke version of the same graph (small captures, few steps, 2 seeds).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from model.statistics import paired_difference, seed_frame_interval  # noqa: E402
from pipeline.science import load_frames, per_frame, pooled  # noqa: E402
from tasks.prepare import PrepareDataset, SyntheticCapture  # noqa: E402
from tasks.science import BaselineFrameErrors, NetworkFrameErrors  # noqa: E402
from tasks.train import TrainModel  # noqa: E402

PROTOCOL = REPO / "bench" / "PROTOCOL.md"
TRAIN_SEEDS = (100, 101, 102, 103)
SHORT_SEED0 = 1000  # short training captures of the generalisation stage: ring seeds 1000, 1001, ...
VAL_SEED = 150
TEST = (("ring-200", dict(seed=200, rig="ring", occluders=0)), ("ring-201", dict(seed=201, rig="ring", occluders=0)),
        ("dome-300-occluders", dict(seed=300, rig="dome", occluders=2)))


@dataclass
class Config:
    train_frames: int = 40
    test_frames: int = 24
    cameras: int = 8
    image_size: int = 256
    crop_size: int = 64
    frames_per_shard: int = 8
    backbone: str = "resnet18"
    steps: int = 400
    batch_size: int = 4
    lr: float = 1e-3
    seeds: tuple = (0, 1, 2)
    noise_levels: tuple = (0.0, 4.0, 8.0, 16.0)
    gammas: tuple = (1.0, 100.0)
    longer_factor: int = 2
    resamples: int = 10_000
    short_frames: int = 8  # generalisation stage: many short training captures of this many frames
    curve_captures: tuple = (1, 4, 16, 32)  # numbers of short captures on the held-out curve
    recipe_factor: int = 3  # the final configuration trains this many times cfg.steps
    recipe_options: tuple = ()  # (TrainModel option, value) pairs of the final configuration
    quick: bool = False


QUICK = dict(train_frames=6, test_frames=4, cameras=4, crop_size=64, frames_per_shard=2, steps=8, batch_size=2,
             seeds=(0, 1), noise_levels=(0.0, 8.0), resamples=500, short_frames=3, curve_captures=(1, 2), recipe_factor=2, quick=True)

# Rows: name → (TrainModel options, what it is)
ROWS = {
    "scheme1": (dict(use_extrinsics=False, confidence="raw"), "scheme 1: no calibration in training, raw confidence"),
    "scheme2": (dict(use_extrinsics=True, confidence="raw"), "scheme 2: extrinsics in the consistency loss, raw "
                "confidence"),
    "scheme2_refined": (dict(use_extrinsics=True, confidence="refined"), "scheme 2 + this pipeline's refined "
                        "confidence (pipeline extension, not the paper)"),
    "no_consistency": (dict(use_extrinsics=True, confidence="raw", consistency_weight=0.0),
                       "ablation: scheme 2 without the consistency loss"),
    "no_distillation": (dict(use_extrinsics=True, confidence="raw", distillation_weight=0.0),
                        "ablation: scheme 2 without distillation"),
    "single_view_only": (dict(use_extrinsics=True, confidence="raw", branches="single"),
                         "ablation: single-view training only (no cross-view branch in the loss)"),
}
MAIN_ROWS = ("scheme1", "scheme2", "scheme2_refined")
MODES = ("single", "interaction", "fusion", "fusion_reference")
MODE_LABEL = {"single": "single view", "interaction": "interaction", "fusion": "fusion (extrinsics)",
              "fusion_reference": "fusion (no extrinsics)"}
BASELINES = ("mediapipe", "mediapipe_fused", "dlt", "ransac", "constant")
BASELINE_LABEL = {"mediapipe": "MediaPipe 3D world landmarks, per view",
                  "mediapipe_fused": "MediaPipe 3D world landmarks, fused (Procrustes-aligned average)",
                  "dlt": "confidence-weighted DLT of the pseudo labels (calibrated)",
                  "ransac": "pipeline RANSAC triangulation of the pseudo labels (calibrated)",
                  "constant": "constant mean pose (training captures' Procrustes mean)"}


# Generalisation stage (issue 12; bench/PROTOCOL-generalisation.md): each step is scheme 2 with one
# change, trained on a dataset of the plan, compared on the held-out captures with scheme 2's runs
# of the same seeds (4 captures of 40 frames, cfg.steps steps). name → (dataset, TrainModel
# options, steps factor, seeds (indices into cfg.seeds), what it is)
AUGMENT = dict(aug_rotation_deg=30.0, aug_colour=0.3, aug_blur_prob=0.2, aug_occlusion_prob=0.3)
GEN_STEPS = {
    "augmentation": ("train", AUGMENT, 1, (0, 1), "augmentation: in-plane rotation ±30° (camera turned about its "
                     "axis), colour 0.3, blur 0.2, occluder 0.3"),
    "pose_prior_0.1": ("train", dict(alpha=0.1), 1, (0,), "pose prior weight α 0.1 (official 0.01)"),
    "pose_prior_1": ("train", dict(alpha=1.0), 1, (0,), "pose prior weight α 1 (official 0.01)"),
    "many_short": ("captures-16", {}, 1, (0,), "many short captures"),  # described in gen_steps
}
RECIPE = "recipe"  # the step whose 3 seeds are the headline "after the work" row (defined in recipe_step)


def recipe_step(cfg: "Config") -> tuple:
    """The configuration the generalisation work ends with, chosen on the validation capture
    (bench/PROTOCOL-generalisation.md): many short captures, trained cfg.recipe_factor× longer."""
    k = max(cfg.curve_captures)
    return (f"captures-{k}", dict(cfg.recipe_options), cfg.recipe_factor, tuple(range(len(cfg.seeds))),
            f"{k} short captures of {cfg.short_frames} frames, {cfg.recipe_factor}× steps"
            + "".join(f", {k2} {v}" for k2, v in cfg.recipe_options))


def gen_steps(cfg: "Config") -> dict:
    steps = dict(GEN_STEPS) if not cfg.quick else {"many_short": GEN_STEPS["many_short"]}
    k = 16 if not cfg.quick else max(cfg.curve_captures)
    long_frames = len(TRAIN_SEEDS) * int(cfg.train_frames * 0.8)
    steps["many_short"] = (f"captures-{k}", {}, 1, (0,), f"{k} short captures of {cfg.short_frames} frames "
                           f"({k * cfg.short_frames} training frames; the protocol's: {len(TRAIN_SEEDS)} captures, "
                           f"{long_frames} frames)")
    steps[RECIPE] = recipe_step(cfg)
    return steps


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Runner:
    def __init__(self, args):
        self.workers = args.workers
        self.host, self.port = args.scheduler_host, args.scheduler_port

    def build(self, tasks: list, what: str) -> None:
        """Run ``tasks`` (the local scheduler, or the luigid all workers share); a failure ends the run."""
        from tasks.runner import run_tasks

        log(f"{what}: {len(tasks)} task(s)")
        res = run_tasks(tasks, workers=self.workers, scheduler_host=self.host, scheduler_port=self.port,
                        prefix="science")
        if not res.ok:
            raise SystemExit(f"science: {what} failed: " + "; ".join(res.failures))


@dataclass
class Plan:
    cfg: Config
    out: Path
    captures: dict = field(default_factory=dict)  # name → SyntheticCapture
    datasets: dict = field(default_factory=dict)  # name → PrepareDataset

    def __post_init__(self):
        c, out = self.cfg, self.out
        caps = {f"train-{s}": dict(seed=s, rig="ring", occluders=0, frames=c.train_frames) for s in TRAIN_SEEDS}
        caps[f"val-{VAL_SEED}"] = dict(seed=VAL_SEED, rig="ring", occluders=0, frames=c.test_frames)
        for name, kw in TEST:
            caps[f"test-{name}"] = dict(kw, frames=c.test_frames)
        for i in range(max(c.curve_captures)):
            caps[f"short-{SHORT_SEED0 + i}"] = dict(seed=SHORT_SEED0 + i, rig="ring", occluders=0, frames=c.short_frames)
        for name, kw in caps.items():
            self.captures[name] = SyntheticCapture(dest=str(out / "captures" / name), cameras=c.cameras,
                                                   image_size=c.image_size, **kw)
        common = dict(out=str(out / "prepared"), crop_size=c.crop_size, frames_per_shard=c.frames_per_shard)
        train_caps = [self.captures[f"train-{s}"].dest for s in TRAIN_SEEDS]
        # training captures: the first 80% of each capture's frames train, the last 20% are the within-capture row
        self.datasets["train"] = PrepareDataset(captures=train_caps, split_by="frame", val_fraction=0.0,
                                                test_fraction=0.2, **common)
        for sigma in c.noise_levels:
            self.datasets[f"noise-{sigma:g}"] = PrepareDataset(captures=train_caps, split_by="frame",
                                                               val_fraction=0.0, test_fraction=0.2,
                                                               labeler="noisy-gt", noise_sigma_px=sigma, **common)
        # held-out and validation captures: every frame in the index's "train" list, never trained on
        self.datasets["val"] = PrepareDataset(captures=[self.captures[f"val-{VAL_SEED}"].dest], val_fraction=0.0,
                                              test_fraction=0.0, **common)
        # generalisation stage: the first k short captures, every frame trained on
        for k in c.curve_captures:
            short = [self.captures[f"short-{SHORT_SEED0 + i}"].dest for i in range(k)]
            self.datasets[f"captures-{k}"] = PrepareDataset(captures=short, val_fraction=0.0, test_fraction=0.0,
                                                            **common)
        for name, _ in TEST:
            self.datasets[f"test-{name}"] = PrepareDataset(captures=[self.captures[f"test-{name}"].dest],
                                                           val_fraction=0.0, test_fraction=0.0, **common)

    def path(self, dataset: str) -> str:
        return self.datasets[dataset].output().path

    def train_params(self, row: str, seed: int, gamma: float, dataset: str = "train", steps_factor: int = 1,
                     **overrides) -> dict:
        c = self.cfg
        opts = dict(ROWS[row][0], **overrides)
        return dict(dataset=self.path(dataset), out=str(self.out / "training"), backbone=c.backbone,
                    steps=c.steps * steps_factor, batch_size=c.batch_size, lr=c.lr, seed=seed, gamma=gamma,
                    checkpoint_every=max(50, c.steps // 4), num_workers=0, **opts)

    def net(self, train: dict | None, dataset: str, split: str) -> NetworkFrameErrors:
        return NetworkFrameErrors(train=train or {}, dataset=self.path(dataset), split=split,
                                  out=str(self.out / "frames"), backbone=self.cfg.backbone, init_seed=0)

    def baselines(self, dataset: str, split: str) -> BaselineFrameErrors:
        return BaselineFrameErrors(dataset=self.path(dataset), split=split, mean_pose_dataset=self.path("train"),
                                   out=str(self.out / "frames"))

    # evaluation sets: name → (dataset, split)
    def eval_sets(self) -> dict:
        sets = {name: (f"test-{name}", "train") for name, _ in TEST}
        sets["within"] = ("train", "test")
        return sets


def stage_tasks(plan: Plan, gamma: float):
    """Every training/evaluation task of stage 4 and where its table goes: ``(tasks, layout)``."""
    cfg = plan.cfg
    held_out = [n for n, _ in TEST]
    sets = plan.eval_sets()
    layout: dict = {"rows": {}, "untrained": {}, "baselines": {}, "noise": {}, "longer": {}}
    tasks = []

    def add(t):
        tasks.append(t)
        return t.output().path

    for row in ROWS:
        layout["rows"][row] = {}
        targets = list(sets) if row in MAIN_ROWS else held_out
        for seed in cfg.seeds:
            tp = plan.train_params(row, seed, gamma)
            layout["rows"][row][str(seed)] = {"run": tp, "sets": {s: add(plan.net(tp, *sets[s])) for s in targets}}
    layout["untrained"] = {s: add(plan.net(None, *sets[s])) for s in sets}
    layout["baselines"] = {s: add(plan.baselines(*sets[s])) for s in sets}
    for sigma in cfg.noise_levels:
        tp = plan.train_params("scheme2", cfg.seeds[0], gamma, dataset=f"noise-{sigma:g}")
        layout["noise"][f"{sigma:g}"] = {"run": tp, "sets": {s: add(plan.net(tp, *sets[s])) for s in held_out}}
    tp = plan.train_params("scheme2", cfg.seeds[0], gamma, steps_factor=cfg.longer_factor)
    layout["longer"] = {"run": tp, "sets": {s: add(plan.net(tp, *sets[s])) for s in held_out}}
    # generalisation stage: the curve against the number of short training captures, and each step
    gen: dict = {"curve": {}, "steps": {}}
    for k in cfg.curve_captures:
        tp = plan.train_params("scheme2", cfg.seeds[0], gamma, dataset=f"captures-{k}")
        gen["curve"][str(k)] = {"run": tp, "sets": {s: add(plan.net(tp, *sets[s])) for s in held_out}}
    for name, (dataset, opts, factor, seed_idx, what) in gen_steps(cfg).items():
        runs = {}
        for i in seed_idx:
            tp = plan.train_params("scheme2", cfg.seeds[i], gamma, dataset=dataset, steps_factor=factor, **opts)
            runs[str(cfg.seeds[i])] = {"run": tp, "sets": {s: add(plan.net(tp, *sets[s])) for s in held_out}}
        gen["steps"][name] = {"what": what, "runs": runs}
    layout["generalisation"] = gen
    return tasks, layout


def choose_gamma(plan: Plan, runner: Runner) -> dict:
    tasks, runs = [], {}
    for g in plan.cfg.gammas:
        tp = plan.train_params("scheme2", plan.cfg.seeds[0], g)
        t = plan.net(tp, "val", "train")
        tasks.append(t)
        runs[g] = (tp, t.output().path)
    runner.build(tasks, "shape-prior weight on the validation capture")
    scores = {}
    for g, (tp, path) in runs.items():
        f = load_frames(path)
        scores[g] = float(np.nanmean(f["fusion/pa_mpjpe"]))
    best = min(scores, key=scores.get)
    return {"chosen": best, "fusion_pa_mpjpe_mm": {f"{g:g}": round(v, 2) for g, v in scores.items()},
            "validation_capture": f"ring seed {VAL_SEED}", "frames": int(len(load_frames(runs[best][1])["keys"]))}


def run_dir(tp: dict) -> Path:
    return TrainModel(**tp).run_dir


def loss_change(tp: dict) -> dict:
    """Convergence: mean total loss over the last 10% of steps against the 10% before, relative."""
    path = run_dir(tp) / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    if len(rows) < 20:
        return {"steps": len(rows), "relative_change_last_10pct": None}
    y = np.array([r["total"] for r in rows], np.float64)
    k = max(1, len(y) // 10)
    last, before = y[-k:].mean(), y[-2 * k:-k].mean()
    return {"steps": len(rows), "loss_last_10pct": round(float(last), 5), "loss_previous_10pct": round(float(before), 5),
            "relative_change_last_10pct": round(float((before - last) / abs(before)), 4)}


# ----------------------------------------------------------------------------- aggregation


def _check_keys(tables: list[dict], what: str) -> None:
    keys = [t["keys"] for t in tables]
    for k in keys[1:]:
        if len(k) != len(keys[0]) or not np.array_equal(k, keys[0]):
            raise SystemExit(f"science: {what}: rows hold different frames; they cannot be compared")


def frame_values(table: dict, key: str, weighting: str) -> np.ndarray:
    """One row's errors under a weighting: per_frame (N,), per_view (N·V,) or all_views_valid (N,)."""
    if key not in table:
        return np.full(len(table["keys"]), np.nan)
    e = np.asarray(table[key], np.float64)
    vm = table["view_mask"]  # the pipeline's valid views (every table has them)
    # MediaPipe's own 3D counts in every view where MediaPipe found the hand (NaN elsewhere)
    own = None if key.startswith("mediapipe/") else vm
    if weighting == "per_frame":
        return per_frame(e, own)
    if weighting == "per_view":
        if e.ndim == 1:
            return e
        return (np.where(own, e, np.nan) if own is not None else e).reshape(-1)
    if weighting == "all_views_valid":
        return np.where(vm.all(axis=1), per_frame(e, own), np.nan)
    raise ValueError(weighting)


class Aggregate:
    def __init__(self, layout: dict, resamples: int):
        self.layout, self.resamples = layout, resamples
        self.cache: dict = {}

    def table(self, path: str) -> dict:
        if path not in self.cache:
            self.cache[path] = load_frames(path)
        return self.cache[path]

    def _sets(self, which: str) -> list[str]:
        return [n for n, _ in TEST] if which == "held_out" else [which]

    def network(self, row: str, eval_set: str, seeds=None) -> list[dict]:
        """Per-seed tables of a row on an evaluation set ('held_out' pools the held-out captures)."""
        runs = self.layout["rows"][row]
        seeds = list(runs) if seeds is None else seeds
        out = []
        for s in seeds:
            parts = [self.table(runs[s]["sets"][n]) for n in self._sets(eval_set)]
            out.append(pooled(parts) if len(parts) > 1 else parts[0])
        _check_keys(out, f"{row} on {eval_set}")
        return out

    def single(self, paths: dict, eval_set: str) -> dict:
        parts = [self.table(paths[n]) for n in self._sets(eval_set)]
        return pooled(parts) if len(parts) > 1 else parts[0]

    def matrix(self, tables: list[dict], mode: str, metric: str, weighting: str) -> np.ndarray:
        return np.stack([frame_values(t, f"{mode}/{metric}", weighting) for t in tables])

    def interval(self, tables: list[dict], mode: str, metric: str = "pa_mpjpe", weighting: str = "per_frame"):
        return seed_frame_interval(self.matrix(tables, mode, metric, weighting), resamples=self.resamples)


def _baseline_tables(agg: Aggregate, eval_set: str) -> dict:
    b = agg.single(agg.layout["baselines"], eval_set)
    u = agg.single(agg.layout["untrained"], eval_set)
    _check_keys([b, u], f"baselines on {eval_set}")
    # the DLT of the pseudo labels is computed beside every network (same frames, same labels): seed 0's
    d = agg.network("scheme2", eval_set, seeds=[next(iter(agg.layout["rows"]["scheme2"]))])[0]
    _check_keys([b, d], f"DLT on {eval_set}")
    return {"baselines": b, "untrained": u, "dlt": d}


def summarize(layout: dict, cfg: Config, gamma_choice: dict, seconds: float, command: str) -> dict:
    agg = Aggregate(layout, cfg.resamples)
    eval_sets = ["held_out"] + [n for n, _ in TEST] + ["within"]
    weightings = ("per_frame", "per_view", "all_views_valid")
    metrics = ("pa_mpjpe", "nmpjpe", "auc")
    res: dict = {"protocol": "bench/PROTOCOL.md", "command": command, "seconds": round(seconds, 1),
                 "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
                 "shape_prior": gamma_choice, "rows": {}, "baselines": {}, "untrained": {}, "comparisons": {},
                 "frames": {}}
    for es in eval_sets:
        bt = _baseline_tables(agg, es)
        res["frames"][es] = int(len(bt["baselines"]["keys"]))
        for row in ROWS:
            if es == "within" and row not in MAIN_ROWS:
                continue
            tabs = agg.network(row, es)
            _check_keys([tabs[0], bt["baselines"]], f"{row} against the baselines on {es}")
            modes = ("single",) if row == "single_view_only" else MODES
            for mode in modes:
                for w in weightings:
                    for m in metrics:
                        iv = agg.interval(tabs, mode, m, w)
                        res["rows"].setdefault(row, {}).setdefault(es, {}).setdefault(mode, {}).setdefault(w, {})[m] = \
                            iv.to_json(3 if m == "auc" else 2)
        for mode in MODES:
            for w in weightings:
                for m in metrics:
                    res["untrained"].setdefault(es, {}).setdefault(mode, {}).setdefault(w, {})[m] = \
                        agg.interval([bt["untrained"]], mode, m, w).to_json(3 if m == "auc" else 2)
        for b in BASELINES:
            src = bt["dlt"] if b == "dlt" else bt["baselines"]
            for w in weightings:
                for m in metrics:
                    if b == "constant" and m == "nmpjpe":
                        continue
                    res["baselines"].setdefault(es, {}).setdefault(b, {}).setdefault(w, {})[m] = \
                        agg.interval([src], b, m, w).to_json(3 if m == "auc" else 2)
        if es == "held_out":
            mp_found = bt["baselines"]["mediapipe_found"]
            res["mediapipe_coverage"] = {"views_with_3d": round(float(mp_found.mean()), 3),
                                         "frames_with_3d": round(float(mp_found.any(axis=1).mean()), 3)}
    res["comparisons"] = comparisons(agg, _baseline_tables(agg, "held_out"), res)
    res["orientation"] = orientation(agg)
    res["noise_curve"] = noise_curve(agg, layout)
    res["convergence"] = convergence(agg, layout, cfg)
    res["generalisation"] = generalisation(agg, layout, cfg)
    res["checks"] = checks(res)
    return res


def orientation(agg: Aggregate) -> dict:
    """Diagnostic (added after the protocol, not a comparison of it): the global-orientation error in
    degrees, per view in its camera frame (single, interaction) and of the world-frame fusion; the
    median over the views (frames for fusion) of every seed pooled, and each seed's median. PA-MPJPE
    removes this rotation; fusion with extrinsics averages the views in the orientations they give."""
    out: dict = {}
    for es in ("held_out", "within"):
        for row in MAIN_ROWS:
            tabs = agg.network(row, es)
            for mode in MODES:
                key = f"{mode}/orientation_deg"
                per_seed = [t[key][np.isfinite(t[key])] for t in tabs]
                out.setdefault(es, {}).setdefault(row, {})[mode] = {
                    "median_deg": round(float(np.median(np.concatenate(per_seed))), 1),
                    "seed_medians_deg": [round(float(np.median(v)), 1) for v in per_seed]}
        u = agg.single(agg.layout["untrained"], es)
        out[es]["untrained"] = {m: {"median_deg": round(float(np.nanmedian(u[f"{m}/orientation_deg"])), 1)}
                                for m in MODES}
    return out


def _pf(tables: list[dict], key: str) -> np.ndarray:
    return np.stack([frame_values(t, key, "per_frame") for t in tables])


def _paired_against(agg: Aggregate, tabs: list[dict], bt: dict, fusion_baselines: tuple) -> dict:
    """A trained row's paired differences (held-out frames): fusion against each named baseline,
    the per-view and fused MediaPipe comparisons, the paper's order, and the untrained network."""
    def diff(a, b):
        return paired_difference(a, b, agg.resamples).to_json()

    pf = {m: _pf(tabs, f"{m}/pa_mpjpe") for m in MODES}
    base = {k: _pf([bt["baselines"]], f"{k}/pa_mpjpe") for k in BASELINES if k != "dlt"}
    untrained = {m: _pf([bt["untrained"]], f"{m}/pa_mpjpe") for m in ("single", "fusion")}
    out = {f"fusion_minus_{b}": diff(pf["fusion"], base[b]) for b in fusion_baselines}
    out.update({
        "fusion_no_extrinsics_minus_mediapipe_fused": diff(pf["fusion_reference"], base["mediapipe_fused"]),
        "single_minus_mediapipe_per_view": diff(pf["single"], base["mediapipe"]),
        "fusion_minus_interaction": diff(pf["fusion"], pf["interaction"]),
        "interaction_minus_single": diff(pf["interaction"], pf["single"]),
        "single_minus_untrained_single": diff(pf["single"], untrained["single"]),
        "fusion_minus_untrained_fusion": diff(pf["fusion"], untrained["fusion"]),
    })
    return out


def comparisons(agg: Aggregate, bt: dict, res: dict) -> dict:
    """The protocol's primary comparisons on the pooled held-out captures (paired over frames)."""
    base = res["baselines"]["held_out"]
    cands = {b: base[b]["per_frame"]["pa_mpjpe"]["mean"] for b in ("mediapipe_fused", "ransac")}
    best = min(cands, key=lambda b: np.inf if cands[b] is None else cands[b])
    out = {"best_untrained_baseline": best}
    for row in MAIN_ROWS:
        out[row] = _paired_against(agg, agg.network(row, "held_out"), bt, (best,))
        within = res["rows"][row]["within"]
        held = res["rows"][row]["held_out"]
        out[row]["gap_held_out_minus_within_mm"] = {
            m: round(held[m]["per_frame"]["pa_mpjpe"]["mean"] - within[m]["per_frame"]["pa_mpjpe"]["mean"], 2)
            for m in ("single", "interaction", "fusion")}
    s2 = agg.network("scheme2", "held_out")
    for row in ("no_consistency", "no_distillation", "single_view_only"):
        tabs = agg.network(row, "held_out")
        mode = "single" if row == "single_view_only" else "fusion"
        out[f"{row}_minus_scheme2_{mode}"] = paired_difference(_pf(tabs, f"{mode}/pa_mpjpe"),
                                                              _pf(s2, f"{mode}/pa_mpjpe"), agg.resamples).to_json()
    return out


def _modes_summary(agg: Aggregate, tabs: list[dict]) -> dict:
    out = {}
    for mode in MODES:
        key = f"{mode}/orientation_deg"
        orient = np.concatenate([t[key][np.isfinite(t[key])] for t in tabs]) if key in tabs[0] else np.array([])
        out[mode] = {"pa_mpjpe": agg.interval(tabs, mode).to_json(), "nmpjpe": agg.interval(tabs, mode, "nmpjpe").to_json(),
                     "auc": agg.interval(tabs, mode, "auc").to_json(3),
                     "orientation_median_deg": round(float(np.median(orient)), 1) if orient.size else None}
    return out


def generalisation(agg: Aggregate, layout: dict, cfg: Config) -> dict:
    """The generalisation stage on the pooled held-out captures: the curve against the number of
    short training captures (one seed), and every step against scheme 2's runs of the same seeds."""
    gen = layout.get("generalisation")
    if not gen:
        return {}
    held = [n for n, _ in TEST]

    def tables(runs: dict) -> list[dict]:
        return [pooled([agg.table(r["sets"][n]) for n in held]) for r in runs.values()]

    s2 = dict(zip(layout["rows"]["scheme2"], agg.network("scheme2", "held_out")))
    bt = _baseline_tables(agg, "held_out")
    out: dict = {"curve": [], "steps": {}, "short_frames": cfg.short_frames,
                 "reference_point": {"captures": len(TRAIN_SEEDS), "frames": len(TRAIN_SEEDS) * int(cfg.train_frames * 0.8),
                                     "modes": _modes_summary(agg, [s2[str(cfg.seeds[0])]])}}
    for k, run in gen["curve"].items():
        tabs = tables({"x": run})
        _check_keys([tabs[0], s2[str(cfg.seeds[0])]], f"curve point {k}")
        out["curve"].append({"captures": int(k), "frames": int(k) * cfg.short_frames, "modes": _modes_summary(agg, tabs),
                             "convergence": loss_change(run["run"])})
    for name, st in gen["steps"].items():
        tabs, seeds = tables(st["runs"]), list(st["runs"])
        ref = [s2[x] for x in seeds]
        _check_keys(tabs + ref, f"step {name}")
        e = {"what": st["what"], "seeds": seeds, "modes": _modes_summary(agg, tabs),
             "minus_scheme2": {m: paired_difference(_pf(tabs, f"{m}/pa_mpjpe"), _pf(ref, f"{m}/pa_mpjpe"),
                                                    agg.resamples).to_json() for m in MODES},
             "convergence": loss_change(next(iter(st["runs"].values()))["run"])}
        if name == RECIPE:
            e["comparisons"] = _paired_against(agg, tabs, bt, ("ransac", "mediapipe_fused", "constant"))
        out["steps"][name] = e
    return out


def noise_curve(agg: Aggregate, layout: dict) -> list:
    out = []
    for sigma, run in layout["noise"].items():
        tabs = [pooled([agg.table(run["sets"][n]) for n, _ in TEST])]
        out.append({"sigma_px": float(sigma),
                    **{f"{m}_pa_mpjpe": agg.interval(tabs, m).to_json() for m in ("single", "interaction", "fusion")},
                    "convergence": loss_change(run["run"])})
    return out


def convergence(agg: Aggregate, layout: dict, cfg: Config) -> dict:
    longer = layout["longer"]
    lt = [pooled([agg.table(longer["sets"][n]) for n, _ in TEST])]
    seed0 = agg.network("scheme2", "held_out", seeds=[str(cfg.seeds[0])])
    _check_keys([lt[0], seed0[0]], "the longer run")
    out = {"steps": cfg.steps, "longer_steps": cfg.steps * cfg.longer_factor,
           "loss": loss_change(layout["rows"]["scheme2"][str(cfg.seeds[0])]["run"]),
           "longer_loss": loss_change(longer["run"])}
    for m in ("single", "interaction", "fusion"):
        out[m] = {"steps_1x": agg.interval(seed0, m).to_json(), "steps_2x": agg.interval(lt, m).to_json(),
                  "2x_minus_1x": paired_difference(_pf(lt, f"{m}/pa_mpjpe"), _pf(seed0, f"{m}/pa_mpjpe"),
                                                   agg.resamples).to_json()}
    return out


def checks(res: dict) -> dict:
    c = res["comparisons"]["scheme2"]
    held = res["rows"]["scheme2"]["held_out"]
    pa = {m: held[m]["per_frame"]["pa_mpjpe"]["mean"] for m in ("single", "interaction", "fusion")}
    best = res["comparisons"]["best_untrained_baseline"]
    d = c[f"fusion_minus_{best}"]
    return {
        "fusion_below_best_untrained_baseline_ci_excludes_0": bool(d["ci95"][1] is not None and d["ci95"][1] < 0),
        "paper_order_fusion_lt_interaction_lt_single": bool(pa["fusion"] < pa["interaction"] < pa["single"]),
        "fusion_below_untrained_ci_excludes_0": bool(c["fusion_minus_untrained_fusion"]["ci95"][1] is not None
                                                     and c["fusion_minus_untrained_fusion"]["ci95"][1] < 0),
        **recipe_checks(res),
    }


def recipe_checks(res: dict) -> dict:
    """Issue 12's goal figures for the final configuration (the generalisation stage's recipe)."""
    st = (res.get("generalisation") or {}).get("steps", {}).get(RECIPE)
    if not st:
        return {}
    base = res["baselines"]["held_out"]
    best = min(("mediapipe_fused", "ransac"), key=lambda b: base[b]["per_frame"]["pa_mpjpe"]["mean"])
    b = base[best]["per_frame"]["pa_mpjpe"]
    f = st["modes"]["fusion"]["pa_mpjpe"]
    pa = {m: st["modes"][m]["pa_mpjpe"]["mean"] for m in ("single", "interaction", "fusion")}
    sm = st["comparisons"]["single_minus_mediapipe_per_view"]["ci95"]
    return {
        "recipe_fusion_25pct_below_best_baseline_cis_disjoint": bool(f["mean"] <= 0.75 * b["mean"]
                                                                      and f["ci95"][1] < b["ci95"][0]),
        "recipe_single_below_mediapipe_per_view_ci_excludes_0": bool(sm[1] is not None and sm[1] < 0),
        "recipe_paper_order_fusion_lt_interaction_lt_single": bool(pa["fusion"] < pa["interaction"] < pa["single"]),
    }


# ----------------------------------------------------------------------------- report


def fmt(iv: dict, unit: str = "") -> str:
    if iv is None or iv.get("mean") is None:
        return "–"
    sd = f" ± {iv['seed_std']}" if iv.get("seed_std") is not None else ""
    return f"{iv['mean']}{sd} [{iv['ci95'][0]}, {iv['ci95'][1]}]{unit}"


def fmt_diff(iv: dict) -> str:
    if iv.get("mean") is None:
        return "–"
    sign = "**excludes 0**" if (iv["ci95"][0] > 0 or iv["ci95"][1] < 0) else "includes 0"
    return f"{iv['mean']:+.2f} mm [{iv['ci95'][0]:+.2f}, {iv['ci95'][1]:+.2f}] ({sign})"


def headline_rows(s: dict, es: str, w: str = "per_frame") -> list[str]:
    lines = ["| method | mode | PA-MPJPE mm (mean ± seed std [95% CI]) | NMPJPE mm | AUC 0–50 mm |",
             "|---|---|---|---|---|"]
    for row, (_, label) in ROWS.items():
        if es not in s["rows"][row]:
            continue
        for mode, t in s["rows"][row][es].items():
            lines.append(f"| {label} | {MODE_LABEL[mode]} | {fmt(t[w]['pa_mpjpe'])} | {fmt(t[w]['nmpjpe'])} | "
                         f"{fmt(t[w]['auc'])} |")
    recipe = (s.get("generalisation") or {}).get("steps", {}).get(RECIPE)
    if recipe and es == "held_out" and w == "per_frame":
        for mode, t in recipe["modes"].items():
            lines.append(f"| **after the work** (generalisation stage): scheme 2, {recipe['what']} | {MODE_LABEL[mode]} | "
                         f"{fmt(t['pa_mpjpe'])} | {fmt(t['nmpjpe'])} | {fmt(t.get('auc'))} |")
    for mode, t in s["untrained"][es].items():
        lines.append(f"| untrained network (seed 0 initialisation) | {MODE_LABEL[mode]} | {fmt(t[w]['pa_mpjpe'])} | "
                     f"{fmt(t[w]['nmpjpe'])} | {fmt(t[w]['auc'])} |")
    for b, t in s["baselines"][es].items():
        lines.append(f"| baseline: {BASELINE_LABEL[b]} | – | {fmt(t[w]['pa_mpjpe'])} | "
                     f"{fmt(t[w].get('nmpjpe'))} | {fmt(t[w]['auc'])} |")
    return lines


def results_markdown(s: dict, results_dir: Path, md_path: Path) -> str:
    rel = os.path.relpath(results_dir, md_path.parent)
    c = s["config"]
    protocol = PROTOCOL.read_text()
    hours = s["seconds"] / 3600
    L = ["# Results: self-supervised HaMuCo on held-out captures", "",
         f"Made by `{s['command']}` in {s['seconds'] / 60:.0f} minutes ({hours:.2f} h) on this 2-core machine"
         + (" — **`--quick` smoke run: not a result**" if c["quick"] else "") + ". Every figure below and in "
         f"`{rel}/science.json` comes from that one run; nothing was edited by hand.", "",
         "## Protocol (fixed before the run)", "",
         "The protocol below is `bench/PROTOCOL.md` as committed before this benchmark was first run; it is "
         "printed here verbatim.", "",
         "<details open><summary>bench/PROTOCOL.md</summary>", "",
         *["> " + line if line else ">" for line in protocol.splitlines()], "", "</details>", "",
         "## Settings of this run", "",
         f"- captures: {len(TRAIN_SEEDS)} training ({c['train_frames']} frames each, the first 80% trained on), "
         f"1 validation and {len(TEST)} held-out test captures ({c['test_frames']} frames each), "
         f"{c['cameras']} cameras, {c['image_size']}² images; MediaPipe pseudo labels, {c['crop_size']}² crops;",
         f"- training: {c['backbone']}, {c['steps']} steps of {c['batch_size']} groups × {c['cameras']} views, "
         f"lr {c['lr']}, seeds {', '.join(map(str, c['seeds']))}; bootstrap {c['resamples']} resamples;",
         f"- shape-prior weight: **{s['shape_prior']['chosen']:g}** chosen on the validation capture "
         f"({s['shape_prior']['validation_capture']}, {s['shape_prior']['frames']} frames): fusion PA-MPJPE "
         + ", ".join(f"γ = {g}: {v} mm" for g, v in s["shape_prior"]["fusion_pa_mpjpe_mm"].items()) + ";",
         "- frames: " + ", ".join(f"{k} {v}" for k, v in s["frames"].items()) + "; MediaPipe gave 3D landmarks for "
         f"{s['mediapipe_coverage']['views_with_3d'] * 100:.0f}% of the held-out views "
         f"({s['mediapipe_coverage']['frames_with_3d'] * 100:.0f}% of frames have at least one).", "",
         "## Headline: held-out captures, pooled (per-frame weighting, the primary)", "",
         *headline_rows(s, "held_out"), "",
         "Mean ± standard deviation over the training seeds, then the 95% bootstrap interval over test frames "
         "(seeds' per-frame errors averaged first). Baselines and the untrained network have no seeds.", "",
         f"![held-out PA-MPJPE]({rel}/science_heldout.png)", "",
         "## Primary comparisons (paired bootstrap over the held-out frames)", ""]
    cmp_ = s["comparisons"]
    best = cmp_["best_untrained_baseline"]
    for row in MAIN_ROWS:
        r = cmp_[row]
        L += [f"**{ROWS[row][1]}**", "",
              f"- fusion − best baseline without training ({BASELINE_LABEL[best]}): {fmt_diff(r[f'fusion_minus_{best}'])}",
              f"- fusion without extrinsics − MediaPipe fused: {fmt_diff(r['fusion_no_extrinsics_minus_mediapipe_fused'])}",
              f"- single view − MediaPipe per view: {fmt_diff(r['single_minus_mediapipe_per_view'])}",
              f"- fusion − interaction: {fmt_diff(r['fusion_minus_interaction'])}; interaction − single: "
              f"{fmt_diff(r['interaction_minus_single'])}",
              f"- fusion − untrained fusion: {fmt_diff(r['fusion_minus_untrained_fusion'])}",
              "- generalisation gap (held-out − within-capture PA-MPJPE): " + ", ".join(
                  f"{m} {v:+.2f} mm" for m, v in r["gap_held_out_minus_within_mm"].items()), ""]
    L += ["Ablations against scheme 2 (held-out, paired): "
          + "; ".join(f"{k.replace('_minus_scheme2_', ' − scheme 2, ').replace('_', ' ')}: {fmt_diff(v)}"
                      for k, v in cmp_.items() if "_minus_scheme2_" in k), "",
          "Checks: " + "; ".join(f"{k.replace('_', ' ')}: **{'yes' if v else 'no'}**" for k, v in s["checks"].items()),
          "", "## Per held-out capture and the within-capture row (per-frame PA-MPJPE, mm)", "",
          "| method | mode | " + " | ".join(n for n, _ in TEST) + " | within-capture (secondary) |",
          "|---|---|" + "---|" * (len(TEST) + 1)]
    for row in MAIN_ROWS:
        for mode in MODES:
            cells = [fmt(s["rows"][row][n][mode]["per_frame"]["pa_mpjpe"]) for n, _ in TEST]
            cells.append(fmt(s["rows"][row]["within"][mode]["per_frame"]["pa_mpjpe"]))
            L.append(f"| {row} | {MODE_LABEL[mode]} | " + " | ".join(cells) + " |")
    for b in BASELINES:
        cells = [fmt(s["baselines"][n][b]["per_frame"]["pa_mpjpe"]) for n, _ in TEST]
        cells.append(fmt(s["baselines"]["within"][b]["per_frame"]["pa_mpjpe"]))
        L.append(f"| baseline | {BASELINE_LABEL[b]} | " + " | ".join(cells) + " |")
    L += ["", "## The other weightings (held-out pooled, PA-MPJPE mm; never the headline)", "",
          "| method | mode | per frame | per view (official code) | frames with all views valid |", "|---|---|---|---|---|"]
    for row in MAIN_ROWS:
        for mode in MODES:
            t = s["rows"][row]["held_out"][mode]
            L.append(f"| {row} | {MODE_LABEL[mode]} | " + " | ".join(fmt(t[w]["pa_mpjpe"]) for w in
                                                                      ("per_frame", "per_view", "all_views_valid")) + " |")
    for b, t in s["baselines"]["held_out"].items():
        L.append(f"| baseline | {BASELINE_LABEL[b]} | " + " | ".join(fmt(t[w]["pa_mpjpe"]) for w in
                                                                     ("per_frame", "per_view", "all_views_valid")) + " |")
    if "orientation" in s:
        o = s["orientation"]
        L += ["", "## Global orientation (diagnostic added after the protocol; median degrees)", "",
              "The rotation Procrustes alignment needs, per view in its camera frame (fusion: in the world frame). "
              "PA-MPJPE removes it; fusing the views with known extrinsics relies on it.", "",
              "| method | mode | held-out (seed medians) | within-capture (seed medians) |", "|---|---|---|---|"]
        for row in list(MAIN_ROWS) + ["untrained"]:
            for mode in MODES:
                cells = []
                for es in ("held_out", "within"):
                    v = o[es][row][mode]
                    seeds = f" ({', '.join(f'{x:.0f}' for x in v['seed_medians_deg'])})" if "seed_medians_deg" in v else ""
                    cells.append(f"{v['median_deg']:.0f}°{seeds}")
                L.append(f"| {row} | {MODE_LABEL[mode]} | " + " | ".join(cells) + " |")
    L += ["", "## Label noise (noisy-gt labeler, scheme 2, one seed; held-out pooled PA-MPJPE mm)", "",
          "| σ px | single | interaction | fusion | loss change over the last 10% of steps |", "|---|---|---|---|---|"]
    for n in s["noise_curve"]:
        ch = n["convergence"].get("relative_change_last_10pct")
        L.append(f"| {n['sigma_px']:g} | {fmt(n['single_pa_mpjpe'])} | {fmt(n['interaction_pa_mpjpe'])} | "
                 f"{fmt(n['fusion_pa_mpjpe'])} | {'–' if ch is None else f'{ch * 100:.1f}%'} |")
    cv = s["convergence"]
    L += ["", f"![noise curve]({rel}/science_noise.png)", "",
          "## Convergence", "",
          f"Scheme 2, seed {c['seeds'][0]}, trained {cv['steps']} and {cv['longer_steps']} steps (held-out pooled "
          "PA-MPJPE mm, paired difference):", ""]
    for m in ("single", "interaction", "fusion"):
        L.append(f"- {m}: {fmt(cv[m]['steps_1x'])} → {fmt(cv[m]['steps_2x'])}; 2× − 1×: {fmt_diff(cv[m]['2x_minus_1x'])}")
    for name, key in (("main run", "loss"), ("longer run", "longer_loss")):
        ch = cv[key].get("relative_change_last_10pct")
        L.append(f"- training loss of the {name}: {'–' if ch is None else f'{ch * 100:.1f}%'} lower over its last "
                 "10% of steps than over the 10% before (the protocol calls < 2% converged)")
    L += generalisation_markdown(s, rel)
    L += ["", "All figures, every weighting and metric: "
          f"`{rel}/science.json`; the per-frame tables under the output directory's `frames/`.", ""]
    return "\n".join(L)


def generalisation_markdown(s: dict, rel: str) -> list[str]:
    g = s.get("generalisation")
    if not g:
        return []
    gen_protocol = REPO / "bench" / "PROTOCOL-generalisation.md"
    base = s["baselines"]["held_out"]
    L = ["", "## Generalisation to unseen captures (issue 12; protocol addendum "
         f"`{os.path.relpath(gen_protocol, REPO)}`)", "",
         "Held-out captures pooled, per-frame PA-MPJPE mm (mean ± seed std [95% CI]); NMPJPE mm; each step's "
         "paired difference against scheme 2's runs of the same seeds (4 captures × 32 training frames, "
         f"{s['config']['steps']} steps); orientation: median global-orientation error of the interaction output. "
         "Training runs already complete when the command started (those of the validation pilots, same Luigi "
         "tasks and parameters) are reused, and their time is not in the run time above.", "",
         "| step | seeds | single | interaction | fusion (extrinsics) | fusion (no extrinsics) | NMPJPE fusion | "
         "orientation | Δ single | Δ interaction | Δ fusion |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, st in g["steps"].items():
        m = st["modes"]
        L.append(f"| {st['what']} | {', '.join(st['seeds'])} | {fmt(m['single']['pa_mpjpe'])} | "
                 f"{fmt(m['interaction']['pa_mpjpe'])} | {fmt(m['fusion']['pa_mpjpe'])} | "
                 f"{fmt(m['fusion_reference']['pa_mpjpe'])} | {fmt(m['fusion']['nmpjpe'])} | "
                 f"{m['interaction']['orientation_median_deg']}° | "
                 + " | ".join(fmt_diff(st["minus_scheme2"][k]) for k in ("single", "interaction", "fusion")) + " |")
    cv = s["convergence"]
    L.append(f"| scheme 2 trained {cv['longer_steps']} steps ({cv['longer_steps'] // cv['steps']}× steps) | "
             f"{s['config']['seeds'][0]} | {fmt(cv['single']['steps_2x'])} | {fmt(cv['interaction']['steps_2x'])} | "
             f"{fmt(cv['fusion']['steps_2x'])} | – | – | – | "
             + " | ".join(fmt_diff(cv[k]["2x_minus_1x"]) for k in ("single", "interaction", "fusion")) + " |")
    L += ["", f"**Held-out error against the number of training captures** (short ring captures of {g['short_frames']} "
          f"frames, every frame trained on; scheme 2, seed {s['config']['seeds'][0]}, {s['config']['steps']} steps; the "
          "last row is the protocol's 4 long captures for comparison):", "",
          "| training captures | frames | single | interaction | fusion (extrinsics) | fusion (no extrinsics) | "
          "orientation (interaction) | loss change, last 10% |", "|---|---|---|---|---|---|---|---|"]
    pts = list(g["curve"]) + [dict(g["reference_point"], convergence={})]
    for i, p in enumerate(pts):
        m = p["modes"]
        ch = p["convergence"].get("relative_change_last_10pct")
        label = f"{p['captures']}" + (" (protocol's long captures)" if i == len(pts) - 1 else "")
        L.append(f"| {label} | {p['frames']} | {fmt(m['single']['pa_mpjpe'])} | {fmt(m['interaction']['pa_mpjpe'])} | "
                 f"{fmt(m['fusion']['pa_mpjpe'])} | {fmt(m['fusion_reference']['pa_mpjpe'])} | "
                 f"{m['interaction']['orientation_median_deg']}° | {'–' if ch is None else f'{ch * 100:.1f}%'} |")
    L += ["", f"![held-out error against training captures]({rel}/science_curve.png)", ""]
    st = g["steps"].get(RECIPE)
    if st:
        c = st["comparisons"]
        L += [f"**After the work** ({st['what']}; seeds {', '.join(st['seeds'])}), against what a user has without "
              "training (paired over the held-out frames):", "",
              f"- fusion − RANSAC triangulation ({fmt(base['ransac']['per_frame']['pa_mpjpe'])}): "
              f"{fmt_diff(c['fusion_minus_ransac'])}",
              f"- fusion − MediaPipe fused ({fmt(base['mediapipe_fused']['per_frame']['pa_mpjpe'])}): "
              f"{fmt_diff(c['fusion_minus_mediapipe_fused'])}; fusion without extrinsics − MediaPipe fused: "
              f"{fmt_diff(c['fusion_no_extrinsics_minus_mediapipe_fused'])}",
              f"- single view − MediaPipe per view ({fmt(base['mediapipe']['per_frame']['pa_mpjpe'])}): "
              f"{fmt_diff(c['single_minus_mediapipe_per_view'])}",
              f"- single − untrained single: {fmt_diff(c['single_minus_untrained_single'])}; fusion − untrained fusion: "
              f"{fmt_diff(c['fusion_minus_untrained_fusion'])}; fusion − constant pose: "
              f"{fmt_diff(c['fusion_minus_constant'])}",
              f"- the paper's order: fusion − interaction {fmt_diff(c['fusion_minus_interaction'])}; interaction − "
              f"single {fmt_diff(c['interaction_minus_single'])}", ""]
    return L


def plots(s: dict, results_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = []
    for row in ROWS:
        for mode, t in s["rows"][row]["held_out"].items():
            items.append((f"{row} {mode}", t["per_frame"]["pa_mpjpe"], "C0" if row in MAIN_ROWS else "C2"))
    for mode, t in s["untrained"]["held_out"].items():
        items.append((f"untrained {mode}", t["per_frame"]["pa_mpjpe"], "C7"))
    for b, t in s["baselines"]["held_out"].items():
        items.append((f"baseline {b}", t["per_frame"]["pa_mpjpe"], "C3"))
    recipe = (s.get("generalisation") or {}).get("steps", {}).get(RECIPE)
    if recipe:
        for mode, t in recipe["modes"].items():
            items.append((f"after the work {mode}", t["pa_mpjpe"], "C1"))
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(items) + 1))
    y = np.arange(len(items))[::-1]
    means = np.array([it[1]["mean"] if it[1]["mean"] is not None else np.nan for it in items])
    lo = np.array([it[1]["ci95"][0] if it[1]["ci95"][0] is not None else np.nan for it in items])
    hi = np.array([it[1]["ci95"][1] if it[1]["ci95"][1] is not None else np.nan for it in items])
    ax.barh(y, means, color=[it[2] for it in items], alpha=0.7)
    ax.errorbar(means, y, xerr=[means - lo, hi - means], fmt="none", ecolor="k", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([it[0] for it in items], fontsize=7)
    ax.set_xlabel("PA-MPJPE (mm), held-out captures, per frame, 95% CI")
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(results_dir / "science_heldout.png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = [n["sigma_px"] for n in s["noise_curve"]]
    for m in ("single", "interaction", "fusion"):
        mean = [n[f"{m}_pa_mpjpe"]["mean"] for n in s["noise_curve"]]
        ax.plot(x, mean, "o-", label=m)
        ax.fill_between(x, [n[f"{m}_pa_mpjpe"]["ci95"][0] for n in s["noise_curve"]],
                        [n[f"{m}_pa_mpjpe"]["ci95"][1] for n in s["noise_curve"]], alpha=0.15)
    ax.set_xlabel("label noise σ (pixels in the crop)")
    ax.set_ylabel("PA-MPJPE (mm), held-out")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(results_dir / "science_noise.png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    g = s.get("generalisation")
    if g and g.get("curve"):
        fig, ax = plt.subplots(figsize=(6, 3.8))
        x = [p["captures"] for p in g["curve"]]
        for j, m in enumerate(("single", "interaction", "fusion", "fusion_reference")):
            iv = [p["modes"][m]["pa_mpjpe"] for p in g["curve"]]
            ax.plot(x, [v["mean"] for v in iv], "o-", color=f"C{j}", label=MODE_LABEL[m])
            ax.fill_between(x, [v["ci95"][0] for v in iv], [v["ci95"][1] for v in iv], color=f"C{j}", alpha=0.12)
            ref = g["reference_point"]["modes"][m]["pa_mpjpe"]["mean"]
            ax.plot([g["reference_point"]["captures"]], [ref], "s", color=f"C{j}", mfc="none")
        base = s["baselines"]["held_out"]
        for b, style in (("mediapipe_fused", ":"), ("ransac", "--"), ("constant", "-.")):
            ax.axhline(base[b]["per_frame"]["pa_mpjpe"]["mean"], color="k", ls=style, lw=0.8, label=b)
        ax.axhline(s["untrained"]["held_out"]["single"]["per_frame"]["pa_mpjpe"]["mean"], color="C7", lw=0.8,
                   label="untrained single")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"training captures ({g['short_frames']} frames each; squares: 4 long captures)")
        ax.set_ylabel("PA-MPJPE (mm), held-out, 95% CI")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        fig.savefig(results_dir / "science_curve.png", dpi=90, bbox_inches="tight")
        plt.close(fig)


def write_outputs(s: dict, results_dir: Path, md_path: Path) -> None:
    from model.atomic import atomic_write_text

    results_dir.mkdir(parents=True, exist_ok=True)
    plots(s, results_dir)
    atomic_write_text(results_dir / "science.json", json.dumps(s, indent=1) + "\n")
    atomic_write_text(md_path, results_markdown(s, results_dir, md_path))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="science_output")
    ap.add_argument("--results", default="results")
    ap.add_argument("--results-md", default="RESULTS.md")
    ap.add_argument("--quick", action="store_true", help="smoke version (minutes): not a result")
    ap.add_argument("--steps", type=int, help="training steps per run (default from the configuration)")
    ap.add_argument("--gamma", type=float, help="skip the validation choice and use this shape-prior weight")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--scheduler-host", default=None, help="luigid host (default: local scheduler)")
    ap.add_argument("--scheduler-port", type=int, default=8082)
    ap.add_argument("--report-only", action="store_true", help="rewrite the outputs from the finished tables")
    args = ap.parse_args(argv)
    cfg = Config(**QUICK) if args.quick else Config()
    if args.steps:
        cfg.steps = args.steps
    command = "python bench/science.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "science-state.json"
    t0 = time.time()
    runner = Runner(args)
    plan = Plan(cfg, out)
    if args.report_only:
        state = json.loads(state_path.read_text())
        s = summarize(state["layout"], cfg, state["shape_prior"], state["seconds"], state["command"])
        write_outputs(s, Path(args.results), Path(args.results_md))
        return 0
    previous = json.loads(state_path.read_text()).get("seconds", 0.0) if state_path.exists() else 0.0
    runner.build(list(plan.captures.values()), "synthetic captures")
    runner.build(list(plan.datasets.values()), "preparation (MediaPipe and noisy-gt labels)")
    if args.gamma is not None:
        gamma_choice = {"chosen": args.gamma, "fusion_pa_mpjpe_mm": {}, "validation_capture": "not used (--gamma)",
                        "frames": 0}
    else:
        gamma_choice = choose_gamma(plan, runner)
        log(f"shape-prior weight: {gamma_choice}")
    tasks, layout = stage_tasks(plan, gamma_choice["chosen"])
    runner.build(tasks, "training and evaluation")
    seconds = previous + time.time() - t0
    from model.atomic import atomic_write_text

    atomic_write_text(state_path, json.dumps({"layout": layout, "shape_prior": gamma_choice, "seconds": seconds,
                                              "command": command}, default=str))
    s = summarize(layout, cfg, gamma_choice, seconds, command)
    write_outputs(s, Path(args.results), Path(args.results_md))
    log(f"done in {seconds / 60:.1f} min: {args.results_md}, {Path(args.results) / 'science.json'}")
    print(json.dumps({"held_out_pa_mpjpe_mm": {m: s["rows"]["scheme2"]["held_out"][m]["per_frame"]["pa_mpjpe"]
                                               for m in MODES}, "checks": s["checks"], "seconds": round(seconds)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
