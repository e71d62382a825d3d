"""The learnability ladder's script (bench/learnability.py) on its smoke configuration."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import learnability  # noqa: E402


def test_quick_rung1_runs_the_chosen_recipe_by_default_and_reports_every_figure(tmp_path, capsys):
    # the default recipe, with one of its options overridden from the command line
    assert learnability.main(["--quick", "--rungs", "1", "--out", str(tmp_path / "out"),
                              "--train", "cross_view_warmup=2"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    r1 = line["rung1"]
    for key in ("single", "interaction", "fusion", "untrained_single", "constant", "nmpjpe_fusion",
                "orientation_deg_median_single"):
        assert isinstance(r1[key], float) and r1[key] >= 0, key
    chosen = learnability.RECIPES["chosen"][1]
    assert r1["options"] == dict(chosen["train"], cross_view_warmup=2) and r1["pass"] in (True, False)
    assert r1["options"]["distillation_weight"] == 10 and r1["options"]["initial_orientation"] == "upright"
    # the recipe's 2D pretraining ran (shortened for the smoke run) and training started from it
    assert r1["pretrain_steps"] == learnability.QUICK_PRETRAIN_STEPS
    assert len(list((tmp_path / "out" / "pretrain").glob("pretrain-*/backbone.pt"))) == 1
    assert r1["cpu_kind"]
    # the untrained reference starts from the same initial orientation as the trained run
    tables = list((tmp_path / "out" / "tables").glob("network-train-*.npz"))
    assert len(tables) == 2


def test_each_rung_takes_its_recipe_then_the_smoke_sizes_then_the_command_line():
    none = dict.fromkeys(learnability.CONFIG_FLAGS)
    cfg, options = learnability.rung_recipe(2, "chosen", none, {})
    chosen = learnability.RECIPES["chosen"][2]
    assert options == chosen["train"] and options is not chosen["train"]
    assert (cfg["captures"], cfg["pretrain_steps"], cfg["steps"], cfg["pose_prior"]) == (128, 18000, 6000, "wide")
    assert cfg["seeds"] == learnability.DEFAULT["seeds"] and cfg["frames"] == learnability.DEFAULT["frames"]
    # the official recipe: the defaults and no training options
    assert learnability.rung_recipe(2, "official", none, {}) == (learnability.DEFAULT, {})
    # flags and --train options override the recipe one by one; the rest of the recipe stays
    cfg, options = learnability.rung_recipe(2, "chosen", dict(none, steps=750), {"lr": 2e-3, "batch_size": 4})
    assert cfg["steps"] == 750 and cfg["pretrain_steps"] == 18000
    assert options == dict(chosen["train"], lr=2e-3, batch_size=4)
    # a smoke run keeps every stage of the recipe at the smoke sizes
    cfg, options = learnability.rung_recipe(2, "chosen", none, {}, quick=True)
    assert cfg["pretrain_steps"] == learnability.QUICK_PRETRAIN_STEPS and cfg["steps"] == learnability.QUICK["steps"]
    assert cfg["pose_prior"] == "wide" and "batch_size" not in options
    assert options["single_view_input"] == "joint_features"
    assert learnability.rung_recipe(1, "official", none, {}, quick=True)[0]["pretrain_steps"] == 0
    with pytest.raises(SystemExit, match="rungs are 1, 2, 3"):
        learnability.main(["--quick", "--rungs", "", "--out", "never"])


def test_a_history_entry_keeps_each_rungs_own_recipe_when_several_ran():
    none = dict.fromkeys(learnability.CONFIG_FLAGS)
    plans = {r: learnability.rung_recipe(r, "chosen", none, {}) for r in (1, 2)}
    heads = {"rung1": {"pass": True}, "rung2": {"pass": False}}
    entry = learnability.history_entry("d", "chosen", plans, [1, 2], heads)
    assert entry["options"] == plans[1][1] and entry["config"] == plans[1][0] and entry["recipe"] == "chosen"
    assert entry["per_rung"]["rung2"]["options"]["batch_size"] == 8 and entry["rung2"] == {"pass": False}
    one = learnability.history_entry("d", "chosen", {2: plans[2]}, [2], {"rung2": {}})
    assert "per_rung" not in one and one["options"] == plans[2][1]
    assert learnability.history_entry("d", "chosen", {2: plans[2]}, [], {})["config"]["captures"] == 128


def test_the_chosen_recipes_are_those_of_the_runs_the_committed_results_hold():
    """`make learnability` reproduces the ladder: each rung's default recipe is what its results key was
    measured with (a change to a rung's chosen run changes RECIPES with it)."""
    data = json.loads((Path(__file__).resolve().parent.parent / "results" / "learnability.json").read_text())
    none = dict.fromkeys(learnability.CONFIG_FLAGS)
    for rung in (1, 2, 3):
        held = data[f"rung{rung}"]
        cfg, options = learnability.rung_recipe(rung, "chosen", none, {})
        assert options == held["options"], rung
        assert cfg["pretrain_steps"] == held["pretrain_steps"] and cfg["steps"] == held["steps"], rung
        assert {k: cfg[k] for k in held["data"]} == held["data"], rung
        aug = held.get("pretrain_aug", {"rotation_deg": 0.0, "colour": 0.0})  # keys from before the option have none
        assert (cfg["pretrain_aug_rotation_deg"], cfg["pretrain_aug_colour"]) == (aug["rotation_deg"], aug["colour"])


def test_results_merge_keeps_other_rungs_and_the_history(tmp_path):
    path = tmp_path / "learnability.json"
    learnability.merge_results(path, {"rung1": {"single": 1.0}}, {"date": "a", "rung1": {"single": 1.0}})
    learnability.merge_results(path, {"rung2": {"single": 2.0}}, {"date": "b", "rung2": {"single": 2.0}})
    data = json.loads(path.read_text())
    assert data["rung1"] == {"single": 1.0} and data["rung2"] == {"single": 2.0}
    assert [h["date"] for h in data["history"]] == ["a", "b"]


def test_bad_train_option_is_refused(capsys):
    with pytest.raises(SystemExit, match="OPTION=VALUE"):
        learnability.main(["--quick", "--rungs", "1", "--train", "upright"])


def test_training_seeds_default_and_more_captures_never_touch_validation_or_test_seeds():
    assert learnability.training_seeds(8) == ([510, 511, 512, 513, 514, 515], [520, 521])
    held_out = {learnability.VAL_SEED} | {kw["seed"] for kw in learnability.TESTS.values()}
    for n in (2, 8, 16, 36, 37, 128, 256):
        ring, dome = learnability.training_seeds(n)
        seeds = ring + dome
        assert len(seeds) == len(set(seeds)) == n and not set(seeds) & held_out
        assert len(dome) == max(1, round(n / 4))
    # more captures add captures: the first 36 are the same seeds, so their captures and labels are reused
    ring36, dome36 = learnability.training_seeds(36)
    ring, dome = learnability.training_seeds(128)
    assert ring[:len(ring36)] == ring36 and dome[:len(dome36)] == dome36
    with pytest.raises(SystemExit, match="2 to 256"):
        learnability.training_seeds(257)


def test_pca_floor_falls_with_components_and_vanishes_at_the_generators_dimension(capsys):
    import pca_floor

    assert pca_floor.main(["--poses", "40", "--components", "0,6,12,20,30"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pa_mpjpe_mm"]
    for prior in ("default", "wide"):
        floor = [res[prior][k] for k in ("0", "6", "12", "20", "30")]
        assert all(a > b for a, b in zip(floor[:4], floor[1:4])), floor  # every component added helps
        assert floor[0] > 5.0  # the mean pose is far from the drawn poses
        assert floor[-1] < 0.05  # the generator's 20 angles span <= 30 linear components (axis-angle ~ linear)


def test_demo_takes_training_options_but_refuses_unknown_ones_or_those_it_sets_itself():
    from model.errors import HamucoError
    from tasks.prepare import Demo

    assert dict(Demo(out="unused", train_options={"articulation": "pca", "pca_components": 20}).train_options) == {
        "articulation": "pca", "pca_components": 20}
    for bad in ({"steps": 5}, {"no_such_option": 1}):
        with pytest.raises(HamucoError, match="train_options .* must be TrainModel options other than dataset"):
            Demo(out="unused", train_options=bad)


def test_demo_with_pretrain_steps_trains_from_its_own_2d_pretraining(tiny_dataset, tmp_path):
    import luigi

    from model.errors import HamucoError
    from tasks.prepare import Demo, PrepareDataset
    from tasks.train import PretrainBackbone, TrainModel

    with pytest.raises(HamucoError, match="--pretrain-steps sets the backbone"):
        Demo(out=str(tmp_path), pretrain_steps=2, train_options={"backbone_weights": "x.pt"})
    demo = Demo(out=str(tmp_path), pretrain_steps=2, train_steps=3, batch_size=1, precision="fp32",
                train_options={"single_view_input": "keypoints", "confidence": "raw"})
    steps = demo.run()  # the task's own dynamic dependencies, in order
    assert isinstance(first := next(steps), PrepareDataset)
    pre = steps.send(luigi.LocalTarget(str(tiny_dataset)))  # the dataset, as if PrepareDataset had made it
    assert isinstance(pre, PretrainBackbone)
    assert (pre.dataset, pre.steps, pre.batch_size, pre.confidence, pre.precision) == (
        str(tiny_dataset), 2, 2, "raw", "fp32")
    assert first.out == str(tmp_path / "prepared") and pre.out == str(tmp_path / "pretrain")
    assert luigi.build([pre], local_scheduler=True, log_level="WARNING")
    train = steps.send(pre.output())
    assert isinstance(train, TrainModel)
    assert train.backbone_weights == pre.output().path
    assert train.keypoint_head_weights == str(tmp_path / "pretrain" / pre.run_dir.name / "checkpoint-final.pt")
    assert train.steps == 3 and train.single_view_input == "keypoints"
    # without the keypoint input only the backbone is handed on
    plain = Demo(out=str(tmp_path), pretrain_steps=2, train_steps=3, batch_size=1, precision="fp32",
                 train_options={"confidence": "raw"}).run()
    next(plain)
    plain.send(luigi.LocalTarget(str(tiny_dataset)))
    t = plain.send(pre.output())
    assert t.backbone_weights == pre.output().path and t.keypoint_head_weights == "none"


def test_hamuco_demo_passes_train_options_and_refuses_bad_ones_before_any_work(tmp_path, capsys):
    from tasks.base import option_values
    from tasks.cli import EXIT_USAGE, main

    assert option_values(["articulation=pca", "pca-components=20", "cross_view_warmup=60"]) == {
        "articulation": "pca", "pca_components": 20, "cross_view_warmup": 60}
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--train-option", "steps=5"]) == EXIT_USAGE
    assert "train_options" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--train-option", "articulation"]) == EXIT_USAGE
    assert "OPTION=VALUE, got 'articulation'" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written


def test_quick_diversity_curve_counts_what_each_point_trained_on_and_draws_it(tmp_path):
    cfg = dict(learnability.DEFAULT, **learnability.QUICK)
    res = learnability.diversity(cfg, tmp_path / "out", {}, [2, 3], 1, tmp_path / "diversity.png")
    rows = res["rows"]
    assert [r["captures"] for r in rows] == [2, 3]
    # 3 frames, a key pose every 15: 3 key poses per capture; three ring captures to one dome
    assert [r["key_poses"] for r in rows] == [6, 9] and rows[1]["rigs"] == {"ring": 2, "dome_occluders": 1}
    for r in rows:
        for test in learnability.TESTS:
            assert all(r[test][m] >= 0 for m in ("single", "fusion", "untrained_single", "constant"))
    # each count its own training run; the test captures are the same frames for both
    assert len(list((tmp_path / "out" / "runs").glob("train-*"))) == 2
    assert rows[0]["ring-600"]["constant"] != rows[1]["ring-600"]["constant"]  # the mean of other training data
    assert (tmp_path / "diversity.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="2 to 256"):
        learnability.main(["--quick", "--diversity", "1,4", "--out", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()


def test_quick_rung2_with_two_seeds_reports_their_spread(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--rung2-seeds takes 1 to 2"):  # the smoke configuration has 2 seeds
        learnability.main(["--quick", "--rungs", "2", "--rung2-seeds", "3", "--out", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()
    cfg = dict(learnability.DEFAULT, **learnability.QUICK, rung2_seeds=2, pretrain_steps=2)
    res = learnability.rung2(learnability.Ladder(cfg, tmp_path / "out", {}))
    assert res["seeds"] == [0, 1]
    assert set(res["scored_data"]) == {*learnability.TESTS, "validation"}
    assert res["scored_data"]["ring-600"] == {"frames": cfg["frames"], "keyframe_every": 15, "pose_prior": "default",
                                              "key_pose_intervals": round((cfg["frames"] - 1) / 15, 2)}
    # the many-poses captures: four times the frames, a key pose every 3 from the wide prior, scored like the others
    assert res["scored_data"]["ring-700-wide"] == {"frames": 4 * cfg["frames"], "keyframe_every": 3,
                                                   "pose_prior": "wide",
                                                   "key_pose_intervals": round((4 * cfg["frames"] - 1) / 3, 2)}
    wide = res["per_capture"]["dome-710-wide-occluders"]
    assert wide["single"]["mean"] > 0 and wide["constant"]["mean"] > 0 and wide["untrained_single"]["mean"] > 0
    # the 2D stage's own generalisation: its keypoint network on the training and on the unseen crops, every
    # labelled joint of every valid view counted
    from pipeline.dataset import ShardDataset

    px = res["pretrain_2d_px"]
    assert set(px) == {"own_frames", *learnability.TESTS}
    for name, figures in px.items():
        assert figures["mean_px"] > 0 and figures["median_px"] > 0
    test_index = next((tmp_path / "out" / "prepared").glob("test-ring-600-*/labels-*")).parent
    data = [ShardDataset(p, split="train", confidence="raw") for p in (tmp_path / "out" / "prepared").glob("*.json")
            if "test-ring-600" in p.read_text()]
    assert len(data) == 1 and test_index.exists()
    labelled = sum(int((data[0][i]["confidence"][data[0][i]["view_mask"].bool()] > 0).sum()) for i in range(len(data[0])))
    assert px["ring-600"]["joints"] == labelled
    assert len(list((tmp_path / "out" / "runs").glob("train-*"))) == 2  # one training run per seed
    ring = res["per_capture"]["ring-600"]["single"]
    # two seeds: a spread between them and an interval around their mean
    assert ring["seed_std"] is not None and ring["seed_std"] >= 0
    assert ring["ci95"][0] <= ring["mean"] <= ring["ci95"][1]
    # every validation pass of each seed, with the label-only parts of the selection signal beside their sum
    assert len(res["validation_curve"]) == 2
    for curve in res["validation_curve"]:
        assert [p["step"] for p in curve] == list(range(cfg["validate_every"], cfg["steps"] + 1, cfg["validate_every"]))
        for p in curve:
            assert {"label_2d_px/single", "label_2d_px/interaction", "cross_view_mm", "pa_mpjpe_mm/single"} <= set(p)
            assert p["label_signal"] == pytest.approx(p["label_2d_px/interaction"] + p["cross_view_mm"], abs=0.02)

    # the same run through the command line (every stage cached) is judged by the selection rule it finds
    results = tmp_path / "results"
    results.mkdir()
    first = res["validation_curve"][0][-1]["label_2d_px/single"]
    rule = {"signal": "label_2d_px/single", "chosen": "some run", "chosen_value": first + 1.0, "margin": 0.5}
    (results / "learnability.json").write_text(json.dumps({"selection_rule": rule}))
    assert learnability.main(["--quick", "--rungs", "2", "--rung2-seeds", "2", "--pretrain-steps", "2",
                              "--recipe", "official", "--out", str(tmp_path / "out"), "--results", str(results)]) == 0
    head = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rung2"]
    assert head["verdict"]["kept"] is True and head["verdict"]["value"] == pytest.approx(first)
    assert head["verdict"]["threshold"] == pytest.approx(first + 0.5)
    last = [c[-1]["label_2d_px/single"] for c in res["validation_curve"]]
    assert head["validation_spread"]["per_seed"] == pytest.approx(last)
    assert head["validation_spread"]["spread"] == pytest.approx(max(last) - min(last))
    assert len(list((tmp_path / "out" / "runs").glob("train-*"))) == 2  # nothing trained again


def test_selection_verdict_keeps_a_change_only_below_the_chosen_run_by_more_than_the_margin():
    rule = {"signal": "label_2d_px/single", "chosen": "ah", "chosen_value": 3.04, "margin": 0.21, "fixed": "x"}
    head = {"validation_last": {"step": 3000, "label_2d_px/single": 2.80, "label_signal": 30.0}}
    v = learnability.selection_verdict(rule, head)
    assert v["kept"] is True and v["threshold"] == pytest.approx(2.83) and v["against"] == "ah"
    head["validation_last"]["label_2d_px/single"] = 2.83  # level with the threshold is not below it
    assert learnability.selection_verdict(rule, head)["kept"] is False
    head["validation_last"]["label_2d_px/single"] = 2.95  # better than the chosen run, but inside the noise
    assert learnability.selection_verdict(rule, head)["kept"] is False
    # the ground truth never decides: a run whose 3D error is far better is judged on the label-only signal alone
    head["validation_last"]["pa_mpjpe_mm/single"] = 0.1
    assert learnability.selection_verdict(rule, head)["kept"] is False
    assert learnability.selection_verdict(None, head) is None
    assert learnability.selection_verdict(rule, {"validation_last": None}) is None
    with pytest.raises(SystemExit, match="'no_such' is not in the validation pass"):
        learnability.selection_verdict(dict(rule, signal="no_such"), head)


def test_selection_verdict_compares_with_the_chosen_run_on_the_same_cpu_model_or_gives_none():
    rule = {"signal": "label_2d_px/single", "chosen": "ah", "chosen_value": 3.04, "margin": 0.13, "fixed": "x",
            "chosen_value_by_cpu": {"AMD EPYC": 3.04, "Intel(R) Xeon(R) Processor": 2.93}}
    head = {"validation_last": {"step": 3000, "label_2d_px/single": 2.85}}
    # below the AMD reference by more than the margin, but not below the Intel one: the run's own CPU decides
    amd = learnability.selection_verdict(rule, head, "AMD EPYC")
    assert amd["kept"] is True and amd["reference"] == 3.04 and amd["threshold"] == pytest.approx(2.91)
    intel = learnability.selection_verdict(rule, head, "Intel(R) Xeon(R) Processor")
    assert intel["kept"] is False and intel["threshold"] == pytest.approx(2.80) and intel["cpu"].startswith("Intel")
    # a CPU model the chosen run never ran on: no verdict, and what to run instead
    other = learnability.selection_verdict(rule, head, "Some Other CPU")
    assert other["kept"] is None and other["threshold"] is None
    assert "'Some Other CPU'" in other["reason"] and "run ah's own command on this CPU model" in other["reason"]
    # without the per-CPU values the single value holds on every CPU (the rule as it was before)
    plain = {k: v for k, v in rule.items() if k != "chosen_value_by_cpu"}
    assert learnability.selection_verdict(plain, head, "Some Other CPU")["threshold"] == pytest.approx(2.91)


def test_seed_spread_is_largest_minus_smallest_of_each_seeds_last_pass():
    curves = [[{"label_2d_px/single": 9.0}, {"label_2d_px/single": 3.59}],
              [{"label_2d_px/single": 3.51}], [{"label_2d_px/single": 8.0}, {"label_2d_px/single": 3.72}]]
    spread = learnability.seed_spread(curves, "label_2d_px/single")
    assert spread["per_seed"] == [3.59, 3.51, 3.72] and spread["spread"] == pytest.approx(0.21)
    assert learnability.seed_spread(curves[:1], "label_2d_px/single") is None


def test_the_committed_selection_rule_names_a_run_in_the_history_with_that_value():
    data = json.loads((Path(__file__).resolve().parent.parent / "results" / "learnability.json").read_text())
    rule = data["selection_rule"]
    assert {"signal", "chosen", "chosen_date", "chosen_value", "margin", "fixed"} <= set(rule)
    chosen = [h for h in data["history"] if h["date"] == rule["chosen_date"]]
    assert len(chosen) == 1
    assert chosen[0]["rung2"]["validation_last"][rule["signal"]] == pytest.approx(rule["chosen_value"], abs=0.005)
    # each per-CPU reference is a run of the chosen run's own options (its command again on that CPU)
    for cpu, value in rule.get("chosen_value_by_cpu", {}).items():
        same = [h for h in data["history"] if "rung2" in h and h["options"] == chosen[0]["options"]
                and h["config"].get("pretrain_steps") == chosen[0]["config"].get("pretrain_steps")
                and h["config"].get("steps") == chosen[0]["config"].get("steps")
                and h["rung2"]["validation_last"][rule["signal"]] == pytest.approx(value, abs=0.005)]
        assert same, (cpu, value)


def test_a_malformed_selection_rule_is_refused_before_any_work_naming_the_file(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "learnability.json").write_text(json.dumps({"selection_rule": {"signal": "label_2d_px/single",
                                                                             "chosen": "ah", "margin": "0.05",
                                                                             "chosen_value_by_cpu": {"x": "3"}}}))
    with pytest.raises(SystemExit, match=r"learnability.json: selection_rule needs .*missing: \['chosen_value'\]; "
                                         r"not a number: \['margin', 'chosen_value_by_cpu'\]"):
        learnability.main(["--quick", "--rungs", "2", "--out", str(tmp_path / "never"), "--results", str(results)])
    assert not (tmp_path / "never").exists()


def test_validation_check_pairs_runs_over_batches_and_names_a_missing_checkpoint(tmp_path):
    import numpy as np
    import validation_check as vc

    rng = np.random.default_rng(1)
    shifted = 0.5 + 0.1 * rng.standard_normal(48)  # a run worse by 0.5 on every batch, with noise
    lo, hi = vc.paired_interval(shifted)
    assert 0 < lo < shifted.mean() < hi
    lo, hi = vc.paired_interval(0.1 * rng.standard_normal(48))  # no difference: the interval holds 0
    assert lo < 0 < hi
    with pytest.raises(SystemExit, match="NAME=RUN_DIR"):
        vc.parse_runs([str(tmp_path)])
    with pytest.raises(SystemExit, match="run 'ah': no .*checkpoint-last.pt"):
        vc.parse_runs([f"ah={tmp_path}"])
    (tmp_path / "checkpoint-last.pt").write_bytes(b"")
    assert vc.parse_runs([f"ah={tmp_path}"]) == {"ah": tmp_path / "checkpoint-last.pt"}
    # the candidate validation captures' seeds are no training, validation or test seed of the ladder
    seeds = {kw["seed"] for kw in vc.CANDIDATES.values()}
    for n in (2, 36, learnability.MAX_CAPTURES):
        ring, dome = learnability.training_seeds(n)
        assert not seeds & (set(ring) | set(dome))
    assert not seeds & ({learnability.VAL_SEED, learnability.FIT_SEED} | {t["seed"] for t in learnability.TESTS.values()})


def test_validation_check_rule2_keeps_a_run_below_the_reference_seeds_by_more_than_their_spread():
    import validation_check as vc

    def row(single, fusion):
        return {k: {"pa_mpjpe_mm/single": single + d, "pa_mpjpe_mm/fusion": fusion + d}
                for k, d in zip(vc.CANDIDATES, (-1.0, 1.0))}  # the two captures differ; S and F are their means

    assert vc.rule2_values(row(9.0, 7.0)) == {"S": 9.0, "F": 7.0}
    values = {"ah": {"S": 9.0, "F": 7.0}, "ah-s1": {"S": 9.5, "F": 7.4}, "ah-s2": {"S": 10.0, "F": 7.2},
              "better": {"S": 8.4, "F": 7.3}, "within": {"S": 8.6, "F": 6.0}, "worse-fusion": {"S": 8.0, "F": 7.5}}
    r = vc.rule2_verdicts(values, ["ah", "ah-s1", "ah-s2"])
    assert r["reference_S_mean"] == 9.5 and r["reference_S_spread"] == 1.0 and r["threshold_S"] == 8.5
    assert {n: v["kept"] for n, v in r["verdicts"].items()} == {"better": True, "within": False,
                                                                 "worse-fusion": False}
    with pytest.raises(SystemExit, match="at least two seeds"):
        vc.rule2_verdicts(values, ["ah"])
    with pytest.raises(SystemExit, match="not given with --run: ah-s9"):
        vc.rule2_verdicts(values, ["ah", "ah-s9"])


def test_validation_check_borrowed_rule_judges_against_a_one_seed_recipe_with_the_seeds_spread():
    import validation_check as vc

    values = {"ah": {"S": 9.0, "F": 7.0}, "ah-s1": {"S": 9.5, "F": 7.6}, "ah-s2": {"S": 10.0, "F": 7.3},
              "ap": {"S": 11.0, "F": 6.0},
              "better": {"S": 9.9, "F": 6.2}, "same": {"S": 10.2, "F": 5.0}, "worse-fusion": {"S": 9.0, "F": 6.5}}
    # S spread 1.0 (10.0 - 9.0); F margin 7.6 - mean(7.0, 7.6, 7.3) = 0.3: S < 10.0 and F <= 6.3
    b = vc.rule2_borrowed(values, ["ah", "ah-s1", "ah-s2"], "ap", ["better", "same", "worse-fusion"])
    assert b["threshold_S"] == 10.0 and b["threshold_F"] == 6.3
    assert {n: v["kept"] for n, v in b["verdicts"].items()} == {"better": True, "same": False, "worse-fusion": False}
    runs = dict.fromkeys(values)
    seeds = ["ah", "ah-s1", "ah-s2"]
    assert vc.parse_borrowed("ap:better, same", runs, seeds) == ("ap", ["better", "same"])
    with pytest.raises(SystemExit, match="needs --reference"):
        vc.parse_borrowed("ap:better", runs, None)
    with pytest.raises(SystemExit, match="not given with --run: as"):
        vc.parse_borrowed("ap:as", runs, seeds)
    with pytest.raises(SystemExit, match="must not be references: ah"):
        vc.parse_borrowed("ap:ah", runs, seeds)
    with pytest.raises(SystemExit, match="REF:CAND"):
        vc.parse_borrowed("ap", runs, seeds)


def test_validation_check_takes_a_gone_runs_recorded_figures_and_names_another_cpu(tmp_path):
    import validation_check as vc

    def row(single, fusion):
        return {k: {"pa_mpjpe_mm/single": single + d, "pa_mpjpe_mm/fusion": fusion + d}
                for k, d in zip(vc.CANDIDATES, (-1.0, 1.0))}

    earlier = {"date": "2026-12-07 01:18", "hardware": {"cpu": "Intel(R) Xeon(R) Processor"},
               "runs": {"ah": row(9.0, 7.0), "ah-s1": row(9.5, 7.6), "ah-s2": row(10.0, 7.3), "au": row(11.0, 6.0),
                        "broken": {next(iter(vc.CANDIDATES)): {"pa_mpjpe_mm/single": 1.0}}}}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))
    runs = {"av": tmp_path / "checkpoint-last.pt"}  # the candidate, scored in this call
    rec = vc.parse_recorded([f"{n}={path}" for n in ("ah", "ah-s1", "ah-s2", "au")], runs)
    assert list(rec) == ["ah", "ah-s1", "ah-s2", "au"] and rec["au"]["cpu"] == "Intel(R) Xeon(R) Processor"
    assert rec["au"]["date"] == "2026-12-07 01:18" and rec["au"]["from"] == str(path)
    values = {n: vc.rule2_values(r["row"]) for n, r in rec.items()} | {"av": {"S": 9.9, "F": 6.2}}
    # the recorded figures give the same verdict as the run directories would: S < 11.0 - 1.0, F <= 6.0 + 0.3
    b = vc.rule2_borrowed(values, ["ah", "ah-s1", "ah-s2"], "au", ["av"])
    assert b["threshold_S"] == 10.0 and b["threshold_F"] == 6.3 and b["verdicts"]["av"]["kept"]
    assert vc.parse_borrowed("au:av", {**runs, **rec}, ["ah", "ah-s1", "ah-s2"]) == ("au", ["av"])
    # the rules are per CPU model: recorded runs from another CPU are named, the same CPU's are not
    assert vc.cpu_mismatch(["au", "ah"], rec, "AMD EPYC") == ["au", "ah"]
    assert vc.cpu_mismatch(["au", "ah"], rec, "Intel(R) Xeon(R) Processor") == []
    assert vc.cpu_mismatch(["av"], rec, "AMD EPYC") == []  # scored here, not recorded
    with pytest.raises(SystemExit, match="has no run 'aw'.*ah, ah-s1"):
        vc.parse_recorded([f"aw={path}"], runs)
    with pytest.raises(SystemExit, match="broken: .* lacks its figures on"):
        vc.parse_recorded([f"broken={path}"], runs)
    with pytest.raises(SystemExit, match="'av' is given twice"):
        vc.parse_recorded([f"av={path}"], runs)
    with pytest.raises(SystemExit, match="'ah' is given twice"):
        vc.parse_recorded([f"ah={path}", f"ah={path}"], runs)
    with pytest.raises(SystemExit, match="cannot read .*missing.json"):
        vc.parse_recorded([f"ah={tmp_path / 'missing.json'}"], runs)
    with pytest.raises(SystemExit, match="NAME=JSON"):
        vc.parse_recorded([str(path)], runs)


def test_pretrain_check_parses_variants_and_names_a_bad_one():
    import pretrain_check as pc

    assert pc.parse_variant("aug=seed=0,aug_rotation_deg=30,aug_colour=0.2") == (
        "aug", {"seed": 0, "aug_rotation_deg": 30.0, "aug_colour": 0.2})
    assert pc.parse_variant("p0=") == ("p0", {})
    with pytest.raises(SystemExit, match="'crop_size=128' is not KEY=VALUE"):
        pc.parse_variant("big=crop_size=128")
    with pytest.raises(SystemExit, match="seed='x' is not a number"):
        pc.parse_variant("p=seed=x")
    with pytest.raises(SystemExit, match="NAME=KEY=VALUE"):
        pc.parse_variant("=seed=1")


def test_pretrain_check_keeps_a_variant_below_the_reference_seeds_by_more_than_their_spread():
    import pretrain_check as pc

    row = lambda a, b: {k: {"mean_px": v} for k, v in zip(pc.CANDIDATES, (a, b))}  # noqa: E731
    values = {"p0": pc.signal(row(3.0, 4.0)), "p0-s1": pc.signal(row(3.2, 4.0)),  # P 3.5 and 3.6
              "better": pc.signal(row(3.0, 3.7)), "level": pc.signal(row(3.1, 3.85))}  # 3.35, 3.475
    out = pc.verdicts(values, ["p0", "p0-s1"])
    assert out["reference_P_mean"] == 3.55 and out["reference_P_spread"] == 0.1 and out["threshold_P"] == 3.45
    assert out["verdicts"]["better"] == {"P": 3.35, "kept": True}
    assert out["verdicts"]["level"]["kept"] is False  # below the mean, but within the seeds' spread
    assert set(out["verdicts"]) == {"better", "level"}
    with pytest.raises(SystemExit, match="at least two"):
        pc.verdicts(values, ["p0"])


def test_pretraining_augmentation_reaches_the_pretraining_task_and_leaves_unaugmented_names_alone(tmp_path):
    """--pretrain-aug-* set PretrainBackbone's augmentation; at 0 the task is the one made before the options
    existed (same run directory), so a cached pretraining is found again."""
    from tasks.train import PretrainBackbone

    class Dataset:  # the one method Ladder.pretrain reads
        def output(self):
            return type("T", (), {"path": str(tmp_path / "index.json")})()

    built = []
    none = dict.fromkeys(learnability.CONFIG_FLAGS)
    flags = dict(none, pretrain_aug_rotation_deg=30.0, pretrain_aug_colour=0.2)
    for f in (none, flags):
        cfg, options = learnability.rung_recipe(2, "chosen", f, {})
        ladder = learnability.Ladder(cfg, tmp_path, options)
        ladder.build = lambda tasks, what: built.extend(tasks)  # noqa: E731  (build nothing: only the task's parameters)
        ladder.pretrain(Dataset(), 0)
    plain, augmented = built
    assert (plain.aug_rotation_deg, plain.aug_colour) == (0.0, 0.0)
    assert (augmented.aug_rotation_deg, augmented.aug_colour) == (30.0, 0.2)
    before = PretrainBackbone(dataset=plain.dataset, out=plain.out, backbone=plain.backbone, steps=plain.steps,
                              batch_size=plain.batch_size, lr=plain.lr, seed=plain.seed, confidence=plain.confidence,
                              checkpoint_every=plain.checkpoint_every, labels=plain.labels, precision=plain.precision)
    assert plain.run_dir == before.run_dir and augmented.run_dir != plain.run_dir
