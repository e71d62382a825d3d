"""Does a larger validation set tell rung-2 runs apart where the 12-frame validation capture cannot?

A post hoc check for issue 20's selection rule (it chooses nothing itself). Rung 2 judges a change by
one seed's last validation pass on capture ring-550: 12 frames, about one key-pose interval, 12 view
groups. Runs whose test-capture errors differ by 1-2 mm (ah and ak) got validation figures within
0.1 px and 0.1 mm of each other there, ground truth included, so the small capture may be what cannot
see the difference, not the label-only signal.

This script scores the final checkpoints of given training runs, each with the very validation pass
the trainer runs (``pipeline.evaluate.validation_pass``, the run's precision), on:

* ``val-ring-550``: the capture the rule reads (its first 16 groups, as in training: the figures must
  equal the run's last line of validation.jsonl, a check that this is the same pass);
* two candidate validation captures fixed here, before any run was scored on them, built like the
  "-wide" test captures but from seeds nothing else uses: ``val-ring-560-wide`` (ring) and
  ``val-dome-570-wide-occluders`` (dome, two occluders), 96 frames each, a key pose every 3 frames from
  the wide prior: every view group of both (192).

Per run and capture: ``label_2d_px/single`` (the signal the rule reads) and the ground truth
(``pa_mpjpe_mm/single`` and ``/fusion``). Per run beside the first one given (the reference): the
paired difference of each signal on the candidate captures, over the same batches of 4 view groups,
with a 95% bootstrap interval over those batches. That interval covers which frames were drawn, not
which training seed: the seed's share needs several seeds of one recipe.

With ``--reference NAME,NAME,...`` (several seeds of one recipe among the runs) it also applies
selection rule 2 (README, fixed 2026-12-06 15:34 before the runs it judges): S = the mean over the two
candidate captures of the single-view ground-truth PA-MPJPE, F the same for fusion; every other run is
kept when its S is below the reference seeds' mean S minus their spread (largest minus smallest) and
its F is not above the largest reference F. With ``--borrowed REF:CAND,...`` it also judges the
candidates against REF, a recipe with a single seed, borrowing the spread of the ``--reference`` seeds
(:func:`rule2_borrowed`). With ``--recorded NAME=JSON`` a run whose directory is gone (a replaced
machine) takes part in the rules with the figures an earlier call wrote to JSON (its ``runs`` entry NAME);
it has no batches, so no paired interval, and the rules being per CPU model, a recorded run measured on
another CPU is named in the output (``recorded``, ``cpu_mismatch``).

Usage (captures and labels are made once and cached under --out, about 2 minutes on 2 cores):
  python bench/validation_check.py --run ah=learnability_output/runs/train-resnet18-5428d1818b \\
      --run ak=learnability_output/runs/train-resnet18-ba787b9b7d [--json results/validation_check.json] \\
      [--reference ah,ah-s1,ah-s2] [--borrowed ap:as]
Prints a table, then one JSON object on the last line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learnability as L  # noqa: E402  (Ladder, DEFAULT, PERFECT, VAL_SEED, scored_capture, hardware)

CANDIDATES = {"val-ring-560-wide": dict(seed=560, rig="ring", occluders=0, keyframe_every=3, pose_prior="wide",
                                        frames_times=4),
              "val-dome-570-wide-occluders": dict(seed=570, rig="dome", occluders=2, keyframe_every=3,
                                                  pose_prior="wide", frames_times=4)}
OLD = f"val-ring-{L.VAL_SEED}"
SIGNALS = ("label_2d_px/single", "pa_mpjpe_mm/single", "pa_mpjpe_mm/fusion")


def paired_interval(diff: np.ndarray, resamples: int = 10_000, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of the mean of ``diff`` (one value per batch)."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(1)
    return [round(float(np.percentile(means, 2.5)), 3), round(float(np.percentile(means, 97.5)), 3)]


def rule2_values(row: dict) -> dict[str, float]:
    """A run's S and F: the mean over the candidate captures of its single-view and fusion PA-MPJPE."""
    return {"S": float(np.mean([row[k]["pa_mpjpe_mm/single"] for k in CANDIDATES])),
            "F": float(np.mean([row[k]["pa_mpjpe_mm/fusion"] for k in CANDIDATES]))}


def check_reference(reference: list[str], runs) -> None:
    """Refuse a ``--reference`` of fewer than two runs or naming runs not given with ``--run``."""
    if len(reference) < 2:
        raise SystemExit(f"validation_check: --reference needs at least two seeds of one recipe, got {reference}")
    unknown = [r for r in reference if r not in runs]
    if unknown:
        raise SystemExit(f"validation_check: --reference names runs not given with --run: {', '.join(unknown)}")


def rule2_verdicts(values: dict[str, dict[str, float]], reference: list[str]) -> dict:
    """Selection rule 2: ``values`` maps run names to their S and F (:func:`rule2_values`); the
    ``reference`` runs (seeds of one recipe, at least two) set the threshold; every other run gets a verdict."""
    check_reference(reference, values)
    s_ref = [values[r]["S"] for r in reference]
    mean, spread = float(np.mean(s_ref)), float(max(s_ref) - min(s_ref))
    f_max = max(values[r]["F"] for r in reference)
    out = {"reference": list(reference), "reference_S": [round(v, 4) for v in s_ref], "reference_S_mean": round(mean, 4),
           "reference_S_spread": round(spread, 4), "threshold_S": round(mean - spread, 4),
           "reference_F_max": round(f_max, 4), "verdicts": {}}
    for name, v in values.items():
        if name in reference:
            continue
        out["verdicts"][name] = {"S": round(v["S"], 4), "F": round(v["F"], 4),
                                 "kept": bool(v["S"] < mean - spread and v["F"] <= f_max)}
    return out


def parse_borrowed(spec: str, runs, reference: list[str] | None) -> tuple[str, list[str]]:
    """``REF:CAND[,CAND...]`` → (REF, [CAND, ...]); refused (before any work) without ``--reference``, or
    naming runs not given with ``--run``, or a candidate that is a reference seed."""
    ref, sep, cands = spec.partition(":")
    candidates = [c.strip() for c in cands.split(",") if c.strip()]
    if not sep or not ref.strip() or not candidates:
        raise SystemExit(f"validation_check: --borrowed takes REF:CAND[,CAND...], got {spec!r}")
    if not reference:
        raise SystemExit("validation_check: --borrowed needs --reference (the seeds whose spread it borrows)")
    ref = ref.strip()
    unknown = [r for r in [ref] + candidates if r not in runs]
    if unknown:
        raise SystemExit(f"validation_check: --borrowed names runs not given with --run: {', '.join(unknown)}")
    clash = [c for c in candidates if c == ref or c in reference]
    if clash:
        raise SystemExit(f"validation_check: --borrowed candidates must not be references: {', '.join(clash)}")
    return ref, candidates


def rule2_borrowed(values: dict[str, dict[str, float]], seeds: list[str], ref: str, candidates: list[str]) -> dict:
    """Rule 2 against a recipe with one seed (README, 'ar and what follows it', fixed 2026-12-06 17:44):
    ``ref`` has a single seed, so the seed spread is borrowed from ``seeds`` (several seeds of another
    recipe): a candidate is kept when S < S_ref − (max − min of the seeds' S) and F ≤ F_ref + (max − mean
    of the seeds' F)."""
    check_reference(seeds, values)
    s_seeds = [values[r]["S"] for r in seeds]
    f_seeds = [values[r]["F"] for r in seeds]
    s_spread = float(max(s_seeds) - min(s_seeds))
    f_margin = float(max(f_seeds) - np.mean(f_seeds))
    s_ref, f_ref = values[ref]["S"], values[ref]["F"]
    out = {"reference": ref, "spread_from": list(seeds), "reference_S": round(s_ref, 4), "reference_F": round(f_ref, 4),
           "S_spread": round(s_spread, 4), "F_margin": round(f_margin, 4), "threshold_S": round(s_ref - s_spread, 4),
           "threshold_F": round(f_ref + f_margin, 4), "verdicts": {}}
    for name in candidates:
        v = values[name]
        out["verdicts"][name] = {"S": round(v["S"], 4), "F": round(v["F"], 4),
                                 "kept": bool(v["S"] < s_ref - s_spread and v["F"] <= f_ref + f_margin)}
    return out


def parse_runs(items: list[str]) -> dict[str, Path]:
    runs = {}
    for item in items:
        name, sep, path = item.partition("=")
        ckpt = Path(path) / "checkpoint-last.pt"
        if not sep or not name:
            raise SystemExit(f"validation_check: --run takes NAME=RUN_DIR, got {item!r}")
        if not ckpt.is_file():
            raise SystemExit(f"validation_check: run {name!r}: no {ckpt}")
        runs[name] = ckpt
    return runs


def parse_recorded(items: list[str], runs) -> dict[str, dict]:
    """``NAME=JSON`` → NAME's row of the ``runs`` of a JSON an earlier call wrote (``--json``), with where it
    came from: the file, its date and CPU. Refused before any work: a name also given with ``--run``, a
    missing or unreadable file, a file without that run or without its figures on the candidate captures."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"validation_check: --recorded takes NAME=JSON, got {item!r}")
        if name in runs or name in out:
            raise SystemExit(f"validation_check: run {name!r} is given twice (--run or --recorded)")
        try:
            earlier = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"validation_check: --recorded {name}: cannot read {path}: {exc}")
        row = earlier.get("runs", {}).get(name)
        if row is None:
            raise SystemExit(f"validation_check: --recorded {name}: {path} has no run {name!r} "
                             f"(it has {', '.join(earlier.get('runs', {})) or 'none'})")
        missing = [k for k in CANDIDATES if not isinstance(row.get(k), dict)
                   or not all(s in row[k] for s in ("pa_mpjpe_mm/single", "pa_mpjpe_mm/fusion"))]
        if missing:
            raise SystemExit(f"validation_check: --recorded {name}: {path} lacks its figures on {', '.join(missing)}")
        out[name] = {"row": row, "from": str(path), "date": earlier.get("date"),
                     "cpu": (earlier.get("hardware") or {}).get("cpu")}
    return out


def cpu_mismatch(names, recorded: dict[str, dict], cpu: str | None) -> list[str]:
    """The recorded runs among ``names`` that were measured on another CPU model than this call's."""
    return [n for n in names if n in recorded and recorded[n]["cpu"] != cpu]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="learnability_output", help="the ladder's output root (captures are cached there)")
    ap.add_argument("--run", action="append", required=True, metavar="NAME=RUN_DIR",
                    help="a training run directory (its checkpoint-last.pt); the first is the reference")
    ap.add_argument("--json", default=None, help="also write the JSON object to this file")
    ap.add_argument("--reference", default=None, metavar="NAME,NAME,...",
                    help="seeds of one recipe among the runs: apply selection rule 2 to every other run")
    ap.add_argument("--borrowed", default=None, metavar="REF:CAND[,CAND...]",
                    help="also judge CAND against REF, a recipe with one seed, with the spread of --reference's seeds")
    ap.add_argument("--recorded", action="append", default=[], metavar="NAME=JSON",
                    help="a run whose directory is gone: its figures from the runs entry NAME of a JSON an earlier "
                         "call wrote (--json); it takes part in --reference and --borrowed, not in paired intervals")
    args = ap.parse_args()
    runs = parse_runs(args.run)
    recorded = parse_recorded(args.recorded, runs)
    runs_and_recorded = {**runs, **recorded}
    reference = [r.strip() for r in args.reference.split(",") if r.strip()] if args.reference else None
    if reference:  # refused before any work
        check_reference(reference, runs_and_recorded)
    borrowed = parse_borrowed(args.borrowed, runs_and_recorded, reference) if args.borrowed else None

    from model.inference import load_model
    from model.precision import resolve_precision
    from model.validation import validation_signals
    from pipeline.evaluate import validation_pass

    cfg = dict(L.DEFAULT)
    ladder = L.Ladder(cfg, Path(args.out), {})
    caps = {k: ladder.capture(k, **L.scored_capture(kw, cfg["frames"])) for k, kw in CANDIDATES.items()}
    caps[OLD] = ladder.capture(OLD, seed=L.VAL_SEED, rig="ring", occluders=0, frames=max(3, cfg["frames"] // 2))
    ladder.build(list(caps.values()), "validation check: captures")
    sets = {k: ladder.dataset([c], L.PERFECT) for k, c in caps.items()}
    ladder.build(list(sets.values()), "validation check: labels")

    # each capture's pass read once (its shards decoded once), then scored for every run
    passes = {k: validation_pass(ds.output().path, "train", 16 if k == OLD else 10**6, confidence="raw")
              for k, ds in sets.items()}
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "hardware": L.hardware(), "runs": {},
                    "captures": {k: vp.samples for k, vp in passes.items()}}
    per_batch: dict[str, dict[str, np.ndarray]] = {}
    for name, ckpt in runs.items():
        model, info = load_model(ckpt)
        trained = info.get("precision") if isinstance(info.get("precision"), dict) else {}
        precision = resolve_precision(trained.get("precision", "fp32"), "cpu", warn=False)  # as the run trained
        row: dict = {"checkpoint": str(ckpt), "step": info["step"], "precision": precision.precision}
        batches_rows: dict[str, list] = {s: [] for s in SIGNALS}
        for k, vp in passes.items():
            whole = validation_signals(model, vp.batches, vp.crop_size, precision)  # what vp(model) computes
            row[k] = {s: round(float(v), 4) for s, v in whole.items() if s in SIGNALS + ("label_signal",)}
            row[k]["groups"] = vp.samples
            if k == OLD:
                val_log = ckpt.parent / "validation.jsonl"
                if val_log.is_file():  # the same pass as training's last one?
                    last = json.loads(val_log.read_text().splitlines()[-1])
                    row[k]["training_last_pass"] = {s: round(last[s], 4) for s in SIGNALS}
                continue
            for batch in vp.batches:  # the same pass batch by batch, for paired intervals between runs
                sig = validation_signals(model, [batch], vp.crop_size, precision)
                for s in SIGNALS:
                    batches_rows[s].append(float(sig[s]))
        per_batch[name] = {s: np.asarray(v) for s, v in batches_rows.items()}
        result["runs"][name] = row
        L.log(f"{name}: " + "  ".join(f"{k} {row[k]['label_2d_px/single']:.3f} px / {row[k]['pa_mpjpe_mm/single']:.2f} mm"
                                      for k in sets))
    ref = next(iter(runs))
    result["reference"] = ref
    result["paired_vs_reference"] = {}
    for name in runs:
        if name == ref:
            continue
        result["paired_vs_reference"][name] = {
            s: {"mean": round(float((per_batch[name][s] - per_batch[ref][s]).mean()), 3),
                "ci95": paired_interval(per_batch[name][s] - per_batch[ref][s])} for s in SIGNALS}
    print(f"{'run':6s} " + " | ".join(f"{k} px / single mm / fusion mm" for k in passes))
    for name, row in result["runs"].items():
        print(f"{name:6s} " + " | ".join(f"{row[k]['label_2d_px/single']:.3f} / {row[k]['pa_mpjpe_mm/single']:.2f} / "
                                         f"{row[k]['pa_mpjpe_mm/fusion']:.2f}" for k in passes))
    for name, d in result["paired_vs_reference"].items():
        print(f"{name} − {ref} (candidate captures, paired over batches): "
              + "; ".join(f"{s} {v['mean']:+.3f} {v['ci95']}" for s, v in d.items()))
    values = {n: rule2_values(r) for n, r in result["runs"].items()}
    cpu = result["hardware"].get("cpu")
    if recorded:
        result["recorded"] = {n: {k: v for k, v in r.items() if k != "row"} | {"same_cpu": r["cpu"] == cpu}
                              for n, r in recorded.items()}
        result["recorded_runs"] = {n: r["row"] for n, r in recorded.items()}
        values.update({n: rule2_values(r["row"]) for n, r in recorded.items()})
        for n, r in recorded.items():
            print(f"recorded {n} (from {r['from']}, {r['date']}, {r['cpu']}): S {values[n]['S']:.3f} F {values[n]['F']:.3f}"
                  + ("" if r["cpu"] == cpu else f"  (another CPU model than this call's {cpu}: the rules are per CPU)"))
    if reference:
        result["rule2"] = rule2_verdicts(values, reference)
        result["rule2"]["cpu_mismatch"] = cpu_mismatch(reference, recorded, cpu)
        r2 = result["rule2"]
        print(f"rule 2: reference {', '.join(reference)} S {r2['reference_S']} mean {r2['reference_S_mean']:.3f} "
              f"spread {r2['reference_S_spread']:.3f}: threshold S < {r2['threshold_S']:.3f}, F <= "
              f"{r2['reference_F_max']:.3f}")
        for name, v in r2["verdicts"].items():
            print(f"rule 2: {name} S {v['S']:.3f} F {v['F']:.3f}: {'kept' if v['kept'] else 'not kept'}")
    if borrowed:
        result["rule2_borrowed"] = b = rule2_borrowed(values, reference, *borrowed)
        b["cpu_mismatch"] = cpu_mismatch([borrowed[0], *reference], recorded, cpu)
        print(f"rule 2 against {b['reference']} (one seed; spread of {', '.join(reference)}): threshold S < "
              f"{b['threshold_S']:.3f}, F <= {b['threshold_F']:.3f}")
        for name, v in b["verdicts"].items():
            print(f"rule 2 against {b['reference']}: {name} S {v['S']:.3f} F {v['F']:.3f}: "
                  f"{'kept' if v['kept'] else 'not kept'}")
    text = json.dumps(result)
    if args.json:
        from model.atomic import atomic_write_text
        atomic_write_text(Path(args.json), json.dumps(result, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
