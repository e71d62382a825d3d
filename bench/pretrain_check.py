"""Does a change to the 2D pretraining make its keypoint network generalise better? (issue 20)

A screen for the first stage of rung 2's recipe, cheaper than a whole rung-2 run (it trains nothing in
3D). The 2D pretraining (``PretrainBackbone``, the ladder's parameters) fits rung 2's training
captures far better than it reads unseen ones: run ax's keypoint network is at 1.77 px on its own
frames against 2.93-4.34 px on the four test captures. This script pretrains named variants on rung
2's training captures (the chosen recipe's: 128 wide-prior captures, cached under ``--out``) and
scores each one's keypoint network (``learnability.keypoint_errors``) on its own frames and on the two
validation captures of selection rule 2 (``val-ring-560-wide``, ``val-dome-570-wide-occluders``,
every view group). The test captures are never read here.

Signal P: the mean over the two validation captures of the mean 2D error (crop pixels, perfect labels).
With ``--reference A,B,...`` (seeds of one variant) every other variant gets a verdict: kept when its
P is below the reference seeds' mean P minus their spread (largest minus smallest), the form of
selection rule 2. Verdicts are per CPU model (pretraining reproduces on one CPU model only).

Usage (each variant is its own Luigi task and run directory, resumed from its last checkpoint):
  python bench/pretrain_check.py --steps 6000 --variant p0=seed=0 --variant p0-s1=seed=1 \\
      --variant aug=seed=0,aug_rotation_deg=30,aug_colour=0.2 --reference p0,p0-s1 \\
      [--json results/pretrain_check.json]
Prints one line per variant, then one JSON object on the last line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learnability as L  # noqa: E402
from validation_check import CANDIDATES  # noqa: E402

# the PretrainBackbone parameters a variant may set (everything else is the ladder's)
VARIANT_KEYS = {"seed": int, "aug_rotation_deg": float, "aug_colour": float, "lr": float, "weight_decay": float}


def parse_variant(spec: str) -> tuple[str, dict]:
    """``NAME=key=value,key=value`` → (NAME, {key: value}); refused with a message naming the bad part."""
    name, sep, rest = spec.partition("=")
    if not sep or not name.strip():
        raise SystemExit(f"pretrain_check: --variant takes NAME=KEY=VALUE[,KEY=VALUE...], got {spec!r}")
    opts: dict = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in VARIANT_KEYS:
            raise SystemExit(f"pretrain_check: variant {name!r}: {item!r} is not KEY=VALUE with KEY one of "
                             f"{', '.join(VARIANT_KEYS)}")
        try:
            opts[key] = VARIANT_KEYS[key](value)
        except ValueError:
            raise SystemExit(f"pretrain_check: variant {name!r}: {key}={value!r} is not a number") from None
    return name.strip(), opts


def signal(row: dict) -> float:
    """P: the mean over the validation captures of the mean 2D error."""
    return float(np.mean([row[k]["mean_px"] for k in CANDIDATES]))


def verdicts(values: dict[str, float], reference: list[str]) -> dict:
    """Kept when P < mean(P of the reference seeds) − (largest − smallest of them)."""
    if len(reference) < 2 or any(r not in values for r in reference):
        raise SystemExit(f"pretrain_check: --reference needs at least two of the variants, got {reference}")
    ref = [values[r] for r in reference]
    mean, spread = float(np.mean(ref)), float(max(ref) - min(ref))
    return {"reference": reference, "reference_P": [round(v, 4) for v in ref], "reference_P_mean": round(mean, 4),
            "reference_P_spread": round(spread, 4), "threshold_P": round(mean - spread, 4),
            "verdicts": {n: {"P": round(v, 4), "kept": bool(v < mean - spread)}
                         for n, v in values.items() if n not in reference}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="learnability_output", help="the ladder's output root (captures are cached there)")
    ap.add_argument("--steps", type=int, default=6000, help="pretraining steps of every variant")
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=KEY=VALUE,...",
                    help=f"a pretraining variant; keys: {', '.join(VARIANT_KEYS)}")
    ap.add_argument("--reference", default=None, metavar="NAME,NAME,...", help="seeds of one variant: judge the others")
    ap.add_argument("--json", default=None, help="also write the JSON object to this file")
    args = ap.parse_args()
    variants = dict(parse_variant(v) for v in args.variant)
    if len(variants) != len(args.variant):
        raise SystemExit("pretrain_check: two variants share a name")
    reference = [r.strip() for r in args.reference.split(",") if r.strip()] if args.reference else None
    if reference and (len(reference) < 2 or any(r not in variants for r in reference)):
        raise SystemExit(f"pretrain_check: --reference needs at least two of the variants, got {reference}")

    cfg, options = L.rung_recipe(2, "chosen", {"pretrain_steps": args.steps}, {})
    ladder = L.Ladder(cfg, Path(args.out), options)
    caps = L.training_captures(ladder)
    val = {k: ladder.capture(k, **L.scored_capture(kw, L.DEFAULT["frames"])) for k, kw in CANDIDATES.items()}
    ladder.build(caps + list(val.values()), "pretrain check: captures")
    train_ds = ladder.dataset(caps, L.PERFECT)
    val_ds = {k: ladder.dataset([c], L.PERFECT) for k, c in val.items()}
    ladder.build([train_ds, *val_ds.values()], "pretrain check: labels")

    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "hardware": L.hardware(), "steps": args.steps,
                    "training_captures": len(caps), "variants": {}}
    values = {}
    for name, opts in variants.items():
        task = ladder.pretrain_task(train_ds, **dict({"seed": 0}, **opts))
        t0 = time.time()
        ladder.build([task], f"pretrain check: {name}")
        row = L.keypoint_errors(task.output().path, {"own_frames": train_ds.output().path}, cfg["backbone"])
        row.update(L.keypoint_errors(task.output().path, {k: ds.output().path for k, ds in val_ds.items()},
                                     cfg["backbone"], max_groups=10**6))  # every view group of the validation captures
        row.update(options=opts, run_dir=str(task.run_dir), minutes=round((time.time() - t0) / 60, 1))
        values[name] = signal(row)
        row["P"] = round(values[name], 4)
        result["variants"][name] = row
        L.log(f"{name}: own {row['own_frames']['mean_px']} px, "
              + ", ".join(f"{k} {row[k]['mean_px']} px" for k in CANDIDATES) + f"; P {row['P']}")
    if reference:
        result["rule"] = verdicts(values, reference)
        for n, v in result["rule"]["verdicts"].items():
            L.log(f"{n}: P {v['P']} against < {result['rule']['threshold_P']}: {'kept' if v['kept'] else 'not kept'}")
    text = json.dumps(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
