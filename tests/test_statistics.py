"""Intervals of the science benchmark (model.statistics) and the per-frame pieces it aggregates."""
import numpy as np
import pytest

from model.evaluation import auc_per_prediction, scores_3d, summarize_3d
from model.metrics import pa_mpjpe
from model.statistics import paired_difference, procrustes_mean_pose, seed_frame_interval
from pipeline.science import per_frame


def test_interval_holds_the_mean_and_narrows_with_more_frames():
    rng = np.random.default_rng(0)
    small = seed_frame_interval(rng.normal(10, 2, size=(3, 30)), resamples=2000)
    large = seed_frame_interval(rng.normal(10, 2, size=(3, 3000)), resamples=2000)
    for iv in (small, large):
        assert iv.low < iv.mean < iv.high
    assert (large.high - large.low) < (small.high - small.low) / 5
    assert 9.8 < large.mean < 10.2 and large.low < 10 < large.high
    assert small.frames == 30 and np.isfinite(small.seed_std)


def test_seeds_are_averaged_per_frame_before_resampling():
    """Two seeds that disagree frame by frame in opposite directions average to a constant: no spread."""
    base = np.linspace(5, 15, 40)
    e = np.stack([base + 3, base - 3])
    iv = seed_frame_interval(e, resamples=1000)
    assert iv.mean == pytest.approx(base.mean())
    assert iv.seed_std == pytest.approx(np.std([base.mean() + 3, base.mean() - 3], ddof=1))
    one = seed_frame_interval(base, resamples=1000)
    assert one.mean == pytest.approx(iv.mean) and np.isnan(one.seed_std)


def test_frames_without_a_value_do_not_count():
    e = np.array([1.0, 2.0, np.nan, 3.0])
    iv = seed_frame_interval(e, resamples=200)
    assert iv.frames == 3 and iv.mean == pytest.approx(2.0)
    assert seed_frame_interval(np.full(4, np.nan)).frames == 0


def test_paired_difference_sees_a_shift_the_unpaired_intervals_hide():
    rng = np.random.default_rng(1)
    b = rng.normal(20, 8, size=200)  # frames differ a lot from each other
    a = b - 0.5 + rng.normal(0, 0.2, size=200)  # a is better by 0.5 on every frame
    d = paired_difference(a, b, resamples=2000)
    assert d.high < 0 and d.excludes(0)
    ia, ib = seed_frame_interval(a, resamples=2000), seed_frame_interval(b, resamples=2000)
    assert ia.high > ib.low  # the rows' own intervals overlap
    same = paired_difference(b, b, resamples=200)
    assert same.mean == 0 and same.low == 0 and same.high == 0 and not same.excludes(0)
    with pytest.raises(ValueError, match="same frames"):
        paired_difference(a[:10], b)


def test_bootstrap_is_deterministic_for_a_seed():
    e = np.random.default_rng(2).normal(size=(3, 50))
    assert seed_frame_interval(e, resamples=500, seed=4) == seed_frame_interval(e, resamples=500, seed=4)


def _rot(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_procrustes_mean_pose_of_similar_copies_is_the_pose():
    rng = np.random.default_rng(3)
    pose = rng.normal(size=(21, 3)) * 0.03
    copies = np.stack([rng.uniform(0.5, 2) * pose @ _rot(rng).T + rng.normal(size=3) for _ in range(12)])
    mean = procrustes_mean_pose(copies)
    assert pa_mpjpe(mean[None], pose[None])[0] < 1e-6
    # the plain average of rotated copies is not the pose
    assert pa_mpjpe(copies.mean(0)[None], pose[None])[0] > 1e-3


def test_auc_per_prediction_averages_to_the_pooled_auc():
    rng = np.random.default_rng(4)
    gt = rng.normal(size=(30, 21, 3)) * 0.04
    pred = gt + rng.normal(size=gt.shape) * 0.01
    s = scores_3d(pred, gt)
    per = auc_per_prediction(s["pa_joint"])
    assert per.shape == (30,) and np.all((per >= 0) & (per <= 1))
    assert per.mean() == pytest.approx(summarize_3d(s)["auc_0_50mm"], abs=1e-9)
    s["pa_joint"][3, 5] = np.nan
    assert np.isnan(auc_per_prediction(s["pa_joint"])[3])


def test_per_frame_means_the_valid_views_only():
    e = np.array([[1.0, 3.0, 100.0], [np.nan, 4.0, 6.0], [np.nan, np.nan, np.nan]])
    mask = np.array([[True, True, False], [True, True, True], [False, False, False]])
    out = per_frame(e, mask)
    assert out[0] == 2.0 and out[1] == 5.0 and np.isnan(out[2])
    assert per_frame(e)[0] == pytest.approx(104 / 3)
    assert np.array_equal(per_frame(np.array([1.0, 2.0])), [1.0, 2.0])
