"""Multi-view bootstrapping and temporal smoothing of 2D labels (pipeline/bootstrap.py) on exact geometry:
a corrupted label is replaced, a missing view filled, good labels kept bit for bit; smoothing rejects a
spike, fills a short gap, leaves a long one, and does not lag through motion."""
import numpy as np
import pytest

from model.errors import HamucoError
from pipeline.bootstrap import (SOURCE_FILLED, SOURCE_KEPT, SOURCE_NONE, SOURCE_REPLACED, BootstrapParams,
                                bootstrap_capture, smooth_joints, support_confidence)
from pipeline.crop import apply_affine, crop_affine, square_box
from pipeline.triangulate import projection_matrices

from .test_triangulate import J, make_points, make_rig, project_all

CROP = 64


def capture_frames(seed=0, frames=12, views=8, noise_px=0.3):
    """A rig, a hand-sized point set moving smoothly, and per frame the labels of every view in crop
    pixels (ground truth + small noise), crops cut around the projected points."""
    rng = np.random.default_rng(seed)
    K, R, t = make_rig(rng, views)
    P = projection_matrices(K, R, t)
    base = make_points(rng, radius=0.06)
    out, truth = [], []
    for f in range(frames):
        X = base + np.array([0.002 * f, -0.001 * f, 0.0005 * f * f / 4])
        uv = project_all(K, R, t, X)
        affines = np.stack([crop_affine(square_box(uv[v]), CROP) for v in range(views)])
        gt_crop = np.stack([apply_affine(uv[v], affines[v]) for v in range(views)])
        kp = (gt_crop + rng.normal(0, noise_px, gt_crop.shape)).astype(np.float32)
        out.append(dict(keypoints=kp, confidence=np.full((views, J), 0.9, np.float32),
                        view_valid=np.ones(views, bool), crop_affine=affines))
        truth.append((X, gt_crop))
    return P, out, truth


def test_support_confidence_grows_with_inliers_and_falls_with_spread():
    c = support_confidence(np.array([1, 2, 3, 4, 8, 3]), np.array([0, 0, 0, 0, 0, 15.0]), 15.0)
    assert c[0] == 0.0 and c[1:5] == pytest.approx([0.5, 0.75, 0.875, 1 - 2 ** -7])
    assert c[5] == pytest.approx(0.75 * np.exp(-0.5))


def test_a_corrupted_label_is_replaced_a_missing_view_filled_and_good_labels_kept():
    P, frames, truth = capture_frames()
    raw = [{k: v.copy() for k, v in fr.items()} for fr in frames]
    f = 5
    frames[f]["keypoints"][2, 7] += np.array([25.0, -18.0], np.float32)  # a gross error in one view
    frames[f]["view_valid"][4] = False  # the labeler found nothing in view 4 (its crop exists)
    frames[f]["keypoints"][4] = 0.0
    frames[f]["confidence"][4] = 0.0
    frames[f]["confidence"][6, 3] = 0.01  # a joint the labeler was not sure of: counts as missing
    res = bootstrap_capture(P, frames, CROP, BootstrapParams(disagree_px=4.0)).frames[f]
    gt_crop = truth[f][1]
    # the corrupted label, back where the other views put it (crop pixels; crops ~1 px per image px here)
    assert res.source[2, 7] == SOURCE_REPLACED
    assert np.linalg.norm(res.keypoints[2, 7] - gt_crop[2, 7]) < 1.5
    assert 0.5 < res.confidence[2, 7] <= 1.0
    # the missing view: valid again, every joint filled within 1.5 px of the truth
    assert res.view_valid[4] and np.all(res.source[4] == SOURCE_FILLED)
    assert np.max(np.linalg.norm(res.keypoints[4] - gt_crop[4], axis=-1)) < 1.5
    assert res.source[6, 3] == SOURCE_FILLED
    # everything else is the labeler's own label, bit for bit, with its confidence
    keep = res.source == SOURCE_KEPT
    assert keep.sum() == 8 * J - 1 - J - 1
    assert np.array_equal(res.keypoints[keep], frames[f]["keypoints"][keep])
    assert np.array_equal(res.confidence[keep], frames[f]["confidence"][keep])
    # the input is not modified, and the world joints are the truth within 2 mm (0.3 px label noise)
    assert np.array_equal(frames[0]["keypoints"], raw[0]["keypoints"])
    assert np.nanmax(np.linalg.norm(res.joints - truth[f][0], axis=-1)) < 2e-3


def test_without_enough_agreeing_views_nothing_is_invented():
    P, frames, _ = capture_frames(views=3, frames=2)
    frames[0]["view_valid"][2] = False
    frames[0]["confidence"][2] = 0.0
    res = bootstrap_capture(P, frames, CROP, BootstrapParams(min_inliers=3)).frames[0]
    # two views cannot reach min_inliers 3: the missing view stays missing, the others are kept
    assert not res.view_valid[2] and np.all(res.source[2] == SOURCE_NONE) and np.all(res.confidence[2] == 0)
    assert np.all(res.source[:2] == SOURCE_KEPT) and np.all(np.isnan(res.joints))


def test_a_view_without_a_crop_is_never_filled():
    P, frames, _ = capture_frames(frames=1)
    frames[0]["view_valid"][1] = False
    frames[0]["crop_affine"][1] = np.nan  # the detector gave no box: nothing to put labels on
    res = bootstrap_capture(P, frames, CROP, BootstrapParams()).frames[0]
    assert not res.view_valid[1] and np.all(res.source[1] == SOURCE_NONE)


def test_smoothing_rejects_a_spike_fills_a_short_gap_keeps_a_long_one_and_does_not_lag():
    F = 30
    t = np.arange(F, dtype=float)
    # a quadratic trajectory (accelerating ~1 m/s over the clip): a centred degree-2 fit reproduces it exactly
    truth = np.zeros((F, 2, 3))
    truth[:, 0] = np.stack([0.01 * t + 0.0004 * t ** 2, -0.02 * t, 0.3 + 0 * t], axis=1)
    truth[:, 1] = truth[:, 0] + 0.05
    X = truth.copy()
    present = np.ones((F, 2), bool)
    X[10, 0] += np.array([0.05, 0.0, 0.0])  # a 5 cm spike (a triangulation outlier)
    present[15:17, 0] = False  # a 2-frame gap: filled
    present[20:26, 1] = False  # a 6-frame gap: too long, left empty
    X[~present] = np.nan
    out, rejected, filled = smooth_joints(X, present, window=7, order=2, outlier_m=0.02, max_gap=3)
    assert rejected[10, 0] and rejected.sum() == 1
    assert filled[15, 0] and filled[16, 0] and filled[10, 0] and not filled[:, 1].any()
    assert np.all(np.isnan(out[20:26, 1])) and np.all(np.isfinite(out[:, 0]))
    ok = np.isfinite(out).all(-1)
    assert np.max(np.linalg.norm(out[ok] - truth[ok], axis=-1)) < 1e-9  # no lag, the spike gone


def test_smoothing_reduces_noise_on_real_motion_and_bootstrap_uses_it():
    rng = np.random.default_rng(3)
    F = 40
    t = np.arange(F)
    truth = np.stack([0.05 * np.sin(t / 6.0), 0.03 * np.cos(t / 5.0), 0.01 * t / F], axis=1)[:, None]
    noisy = truth + rng.normal(0, 0.003, truth.shape)
    out, _, _ = smooth_joints(noisy, np.ones((F, 1), bool), window=7, order=2)
    err_raw = np.linalg.norm(noisy - truth, axis=-1).mean()
    err_smooth = np.linalg.norm(out - truth, axis=-1).mean()
    assert err_smooth < 0.75 * err_raw
    # through bootstrap_capture: with smoothing the reprojected joints are the smoothed triangulations
    from pipeline.bootstrap import triangulate_frame

    P, frames, _ = capture_frames(frames=9)
    params = BootstrapParams(smooth=True)
    res = bootstrap_capture(P, frames, CROP, params)
    assert len(res.frames) == 9 and not res.rejected.any()
    tri = np.stack([triangulate_frame(P, f["keypoints"], f["confidence"], f["crop_affine"], f["view_valid"],
                                      params).joints for f in frames])
    smoothed, _, _ = smooth_joints(tri, np.isfinite(tri).all(-1), params.smooth_window, params.smooth_order,
                                   params.outlier_mm / 1000, params.max_gap)
    assert np.allclose(np.stack([fr.joints for fr in res.frames]), smoothed, atol=1e-6)
    assert not np.allclose(smoothed, tri)  # (the smoothing did something)


def test_bad_parameters_are_refused_with_their_names():
    with pytest.raises(HamucoError, match="smooth_window must be an odd"):
        BootstrapParams(smooth_window=4)
    with pytest.raises(HamucoError, match="min_inliers must be at least 2"):
        BootstrapParams(min_inliers=1)


# ----------------------------------------------------------------------------- through the pipeline

import hashlib  # noqa: E402
import json  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

from tasks.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A synthetic capture whose labels carry deliberate gross errors with high confidence (noisy-gt, 15%
    outliers, confidence uninformative), prepared raw, then with --bootstrap (and the raw shards' digests
    between the two)."""
    from pipeline.synthetic import DEMO_CONFIG, generate_capture

    root = tmp_path_factory.mktemp("bootstrap")
    cap = generate_capture(root / "cap", replace(DEMO_CONFIG, cameras=6, frames=4, seed=5, image_size=128),
                           progress=False)
    args = ["prepare", str(cap.root), "--out", str(root / "out"), "--labeler", "noisy-gt", "--frames-per-shard",
            "2", "--crop-size", "64", "--noise-sigma-px", "0.5", "--noise-outlier-rate", "0.15", "--noise-confidence",
            "uninformative", "--refine-threshold-px", "4"]  # labels good to 0.5 px: a tight threshold
    assert main(args) == 0
    raw = next((root / "out").glob("dataset-*.json"))
    raw_shards = [s["path"] for s in json.loads(raw.read_text())["shards"]]
    digest = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in raw_shards}
    assert main(args + ["--bootstrap", "--bootstrap-disagree-px", "4"]) == 0
    boot = next(p for p in (root / "out").glob("dataset-*.json") if p != raw)
    return {"root": root, "capture": cap.root, "raw": raw, "boot": boot, "digest": digest}


def test_prepare_bootstrap_writes_its_own_label_version_and_training_chooses(prepared, capsys):
    """The raw shards stay as they were, a new label version holds both, corrupted labels seen by enough
    views are put back within 2 px, and the dataset index lets training choose."""
    from pipeline.dataset import ShardDataset
    from pipeline.shards import ShardReader

    root = prepared["root"]
    assert main(["prepare", "--smooth", str(prepared["capture"]), "--out", str(root / "out2"), "--labeler",
                 "noisy-gt"]) == 2
    assert "needs --bootstrap" in capsys.readouterr().err
    boot = json.loads(prepared["boot"].read_text())
    assert boot["label_versions"] == ["raw", "bootstrapped"]
    digest = prepared["digest"]
    assert {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in digest} == digest  # untouched
    assert not set(s["path"] for s in boot["shards"]) & set(digest)
    stats = json.loads(Path(boot["bootstrap"]["reports"][0]).read_text())
    assert stats["calibrated"] and stats["all"]["replaced"] > 0
    assert stats["all"]["bootstrapped_median_px"] < stats["all"]["raw_median_px"]
    corrupted = recovered = 0
    for path in (s["path"] for s in boot["shards"]):
        with ShardReader(path) as r:
            assert r.has_bootstrapped_labels and r.attrs["provenance"]["bootstrap"]["params"]["disagree_px"] == 4.0
            for s in r:
                v = s.view_valid
                err_raw = np.linalg.norm(s.keypoints - s.gt_joints_2d, axis=-1)
                err_boot = np.linalg.norm(s.bootstrapped_keypoints - s.gt_joints_2d, axis=-1)
                bad = v[:, None] & (err_raw > 10) & np.isfinite(s.bootstrap_joints).all(-1)[None]
                corrupted += int(bad.sum())
                recovered += int((bad & (err_boot < 2.0)).sum())
                kept = s.bootstrap_source == SOURCE_KEPT
                assert np.array_equal(s.bootstrapped_keypoints[kept], s.keypoints[kept])
    assert corrupted > 10 and recovered == corrupted, (recovered, corrupted)
    # training chooses the label version; the raw dataset has no bootstrapped one, and says so
    data = ShardDataset(prepared["boot"], split="train", labels="bootstrapped")
    item = data[0]
    r, i = data.readers[data.items[0][0]], data.items[0][1]
    assert np.allclose(item["keypoints"].numpy(), r[i].bootstrapped_keypoints)
    with pytest.raises(HamucoError, match="no bootstrapped labels .* prepare the dataset with --bootstrap"):
        ShardDataset(prepared["raw"], split="train", labels="bootstrapped")


def test_labels_report_compares_versions_and_opens_in_a_browser(prepared, tmp_path, capsys):
    from .helpers import render_in_chromium

    out = tmp_path / "report"
    assert main(["labels", "report", str(prepared["boot"]), "--out", str(out), "--against", str(prepared["raw"]),
                 "--threshold-px", "4"]) == 0
    assert "noisy-gt:bootstrapped: median 2D error" in capsys.readouterr().out
    res = json.loads((out / "labels_report.json").read_text())
    raw, boot = res["versions"]["noisy-gt:raw"], res["versions"]["noisy-gt:bootstrapped"]
    # the --against index's raw labels are the same labels as ours: shown once, and said so
    assert res["ground_truth"] and res["frames"] == 4 and set(res["versions"]) == {"noisy-gt:raw",
                                                                                  "noisy-gt:bootstrapped"}
    assert res["identical_versions_left_out"] == [{"against": "noisy-gt:raw", "same_as": "noisy-gt:raw"}]
    # the outliers the raw labels carry: fewer within 5 px, more outlier views, than the bootstrapped ones
    assert raw["all"]["pck_5px"] < 0.9 < boot["all"]["pck_5px"]
    assert boot["all"]["outlier_share"] < raw["all"]["outlier_share"]
    assert set(raw["per_camera"]) == {f"cam{i:02d}" for i in range(6)} and len(raw["per_joint"]) == 21
    assert sum(b["count"] for b in raw["reliability"]) == raw["all"]["labelled_joints"]
    assert raw["triangulation"]["all"]["pa_mpjpe_mm"] < 5.0  # RANSAC sees through the outliers either way
    pair = next(a for a in res["agreement"] if a["b"] == "noisy-gt:bootstrapped")
    assert pair["b_closer_share"] > 0.1 and pair["a_closer_share"] < 0.01
    seen = render_in_chromium(out / "labels_report.html", tmp_path / "profile")
    assert all(ok and w > 0 and h > 0 for _, ok, w, h in seen["images"]), seen["images"]
    assert {a for a, *_ in seen["images"]} == {"per camera", "per joint", "reliability"}
    assert all(n > 0 for n in seen["tables"]) and len(seen["tables"]) >= 8
    assert {"Versions", "Per camera", "Per joint", "Reliability", "Triangulation", "Agreement"} <= set(seen["headings"])
    assert seen["errors"] == []
    # bad input: a file that is not a dataset index
    (tmp_path / "bad.json").write_text("{}")
    assert main(["labels", "report", str(tmp_path / "bad.json"), "--out", str(tmp_path / "r2")]) == 2
    assert "not a dataset index" in capsys.readouterr().err


def test_label_quality_bench_quick_compares_the_three_versions_per_rig(tmp_path, capsys):
    """bench/label_quality.py on its smoke configuration: MediaPipe labels of both rigs, raw, bootstrapped
    and bootstrapped + smoothed, scored against the ground truth with the constant pose beside them."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import label_quality

    assert label_quality.main(["--quick", "--out", str(tmp_path / "out"), "--results", str(tmp_path / "res")]) == 0
    table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["table"]
    assert set(table) == {"ring", "dome-occluders"}
    for rig, t in table.items():
        v = t["versions"]
        assert set(v) == {"mediapipe:raw", "mediapipe:bootstrapped", "mediapipe:bootstrapped+smoothed"}
        raw, boot = v["mediapipe:raw"], v["mediapipe:bootstrapped"]
        # bootstrapping only adds labels where views agree: never fewer labelled joints, never more misses
        assert boot["labelled_joints"] >= raw["labelled_joints"] and boot["misses"] <= raw["misses"]
        assert all(x["median_px"] > 0 and 0 <= x["pck_5px"] <= 1 for x in v.values())
        assert t["constant_pose_pa_mpjpe_mm"] > 0 and t["frames"] == 8  # 2 captures x 4 frames
        assert (tmp_path / "out" / "reports" / rig / "labels_report.html").stat().st_size > 10_000
    assert not (tmp_path / "res").exists()  # a smoke run is not a result
