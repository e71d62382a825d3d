"""The science benchmark's smoke version (``bench/science.py --quick``), as Luigi tasks shared by two
processes through one luigid: each task runs once, both processes end with the same report, a
rerun finds everything complete, and the report can be rewritten from the per-frame tables alone.
The figures of a quick run are not results; what is tested is the instrument."""
import json
import os
import subprocess
import sys

import numpy as np

from tests.helpers import REPO, clean_env, temporaries

SCIENCE = [sys.executable, str(REPO / "bench" / "science.py"), "--quick"]


def _start(out, results, md, extra=(), threads=None):
    # two processes at once on this 2-core machine: one thread each (two spinning OpenMP pools slow each
    # other far more than twice)
    env = clean_env(**({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}))
    return subprocess.Popen([*SCIENCE, "--out", str(out), "--results", str(results), "--results-md", str(md),
                             *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _finish(proc, timeout=900):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]
    return out, err


def test_quick_science_run_shared_by_two_workers_through_luigid(tmp_path, luigid):
    out = tmp_path / "science"
    a = _start(out, tmp_path / "res-a", tmp_path / "A.md", luigid.options, threads=1)
    b = _start(out, tmp_path / "res-b", tmp_path / "B.md", luigid.options, threads=1)
    _finish(a)
    _finish(b)
    sa = json.loads((tmp_path / "res-a" / "science.json").read_text())
    sb = json.loads((tmp_path / "res-b" / "science.json").read_text())
    for s in (sa, sb):
        s.pop("seconds"), s.pop("command")
    assert sa == sb  # one set of tables, whichever process wrote the report

    # every training ran once, to its last step (two workers never trained the same run)
    runs = sorted((out / "training").iterdir())
    # 6 rows x 2 seeds, 2 noise levels, the shape-prior weight not chosen, the 2x run (the chosen weight's
    # validation run is the scheme-2 seed-0 run itself); the generalisation stage: the curve's 2 points
    # (its last point is also the "many short captures" step) and the recipe's 2 seeds
    assert len(runs) == 2 * 6 + 2 + 1 + 1 + 2 + 2
    for run in runs:
        steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps)), run

    s = sa
    assert s["config"]["quick"] is True and s["config"]["seeds"] == [0, 1]
    held = s["rows"]["scheme2"]["held_out"]
    for mode in ("single", "interaction", "fusion", "fusion_reference"):
        for w in ("per_frame", "per_view", "all_views_valid"):
            iv = held[mode][w]["pa_mpjpe"]
            assert iv["frames"] > 0 and iv["ci95"][0] <= iv["mean"] <= iv["ci95"][1], (mode, w, iv)
    assert held["fusion"]["per_frame"]["pa_mpjpe"]["seed_std"] is not None
    assert set(s["rows"]) == {"scheme1", "scheme2", "scheme2_refined", "no_consistency", "no_distillation",
                              "single_view_only"}
    assert set(s["rows"]["single_view_only"]["held_out"]) == {"single"}
    assert "within" in s["rows"]["scheme2"] and "within" not in s["rows"]["no_distillation"]
    for b in ("mediapipe", "mediapipe_fused", "dlt", "ransac", "constant"):
        assert s["baselines"]["held_out"][b]["per_frame"]["pa_mpjpe"]["frames"] > 0, b
    assert s["frames"]["held_out"] == sum(s["frames"][n] for n in ("ring-200", "ring-201", "dome-300-occluders"))
    assert s["shape_prior"]["chosen"] in (1.0, 100.0) and set(s["shape_prior"]["fusion_pa_mpjpe_mm"]) == {"1", "100"}
    assert len(s["noise_curve"]) == 2 and s["convergence"]["longer_steps"] == 2 * s["convergence"]["steps"]
    assert s["comparisons"]["best_untrained_baseline"] in ("mediapipe_fused", "ransac")
    md = (tmp_path / "A.md").read_text()
    assert (REPO / "bench" / "PROTOCOL.md").read_text().splitlines()[0] in md
    assert "`--quick` smoke run: not a result" in md
    assert (tmp_path / "res-a" / "science_heldout.png").stat().st_size > 0

    g = s["generalisation"]
    assert [p["captures"] for p in g["curve"]] == [1, 2] and [p["frames"] for p in g["curve"]] == [3, 6]
    assert set(g["steps"]) == {"many_short", "recipe"} and g["steps"]["recipe"]["seeds"] == ["0", "1"]
    # the many-short step is the curve's last point: the same run, the same figures
    assert g["steps"]["many_short"]["modes"]["fusion"]["pa_mpjpe"] == g["curve"][-1]["modes"]["fusion"]["pa_mpjpe"]
    for d in g["steps"]["recipe"]["minus_scheme2"].values():
        assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    assert {"recipe_fusion_25pct_below_best_baseline_cis_disjoint", "recipe_single_below_mediapipe_per_view_ci_excludes_0",
            "recipe_paper_order_fusion_lt_interaction_lt_single"} <= set(s["checks"])
    assert "## Generalisation to unseen captures" in md and "**after the work**" in md
    assert (tmp_path / "res-a" / "science_curve.png").stat().st_size > 0

    # every row was scored on the same frames as the baselines
    frames = out / "frames"
    tables = {p.name: np.load(p) for p in frames.glob("*.npz")}
    by_keys = {}
    for name, t in tables.items():
        assert len(set(t["keys"])) == len(t["keys"]), name  # a frame is one frame, whatever capture it is in
        by_keys.setdefault(tuple(t["keys"]), []).append(name)
    assert len(by_keys) == 5  # 3 held-out captures, the within-capture split, the validation capture
    assert len({k.split("/")[0] for keys in by_keys for k in keys}) == 3 + 4 + 1

    # a rerun (local scheduler) finds every task complete and trains nothing
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint-final.pt")}
    _finish(_start(out, tmp_path / "res-c", tmp_path / "C.md"))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint-final.pt")} == mtimes
    sc = json.loads((tmp_path / "res-c" / "science.json").read_text())
    sc.pop("seconds"), sc.pop("command")
    assert sc == sa

    # the report alone, from the tables
    r = subprocess.run([*SCIENCE, "--out", str(out), "--results", str(tmp_path / "res-d"), "--results-md",
                        str(tmp_path / "D.md"), "--report-only"], cwd=REPO, env=clean_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    sd = json.loads((tmp_path / "res-d" / "science.json").read_text())
    sd.pop("seconds"), sd.pop("command")
    assert sd == sa
    assert not temporaries(out) and os.path.isdir(out / "captures")
