"""Fast tests for model.metrics against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from model.metrics import (
    auc,
    average,
    error_2d,
    f_score,
    mpjpe,
    nmpjpe,
    pa_mpjpe,
    pck_curve,
    valid_samples,
)


def _rotations(rng, n):
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    det = np.linalg.det(q)
    q[:, :, 0] *= det[:, None]          # make det = +1
    return q


@pytest.fixture
def joints():
    rng = np.random.default_rng(0)
    return rng.normal(scale=0.05, size=(6, 21, 3)) + np.array([0.0, 0.0, 0.5])


def test_pa_mpjpe_zero_for_similarity_copy(joints):
    rng = np.random.default_rng(1)
    n = joints.shape[0]
    s = rng.uniform(0.5, 2.0, size=n)
    R = _rotations(rng, n)
    assert np.allclose(np.linalg.det(R), 1.0)
    t = rng.normal(size=(n, 3))
    pred = s[:, None, None] * joints @ R.transpose(0, 2, 1) + t[:, None, :]
    pa = pa_mpjpe(pred, joints)
    assert pa.shape == (n,)
    assert np.all(pa < 1e-9)
    assert np.all(mpjpe(pred, joints) > 1e-3)
    assert pa_mpjpe(pred, joints, per_joint=True).shape == (n, 21)


def test_mpjpe_root_aligned_translation_is_zero(joints):
    pred = joints + np.array([0.3, -0.2, 1.0])
    assert np.all(mpjpe(pred, joints) < 1e-12)


def test_mpjpe_hand_values(joints):
    pred = joints.copy()
    pred[:, 3, 0] += 0.021                  # one non-root joint off by 21 mm
    np.testing.assert_allclose(mpjpe(pred, joints), 0.001, atol=1e-12)
    pred = joints.copy()
    pred[:, 9, 1] += 0.021                  # root off by 21 mm -> the other 20 joints move
    np.testing.assert_allclose(mpjpe(pred, joints), 20 * 0.021 / 21, atol=1e-12)
    # other root index
    pred = joints + 1.0
    assert np.all(mpjpe(pred, joints, root=0) < 1e-12)


def test_nmpjpe_zero_for_scaled_translated_copy(joints):
    pred = 1.7 * joints + np.array([0.1, 0.2, -0.3])
    assert np.all(nmpjpe(pred, joints) < 1e-12)
    assert np.all(mpjpe(pred, joints) > 1e-3)


def test_nmpjpe_hand_value():
    gt = np.zeros((1, 21, 3))
    gt[0, 0] = [0.0, -0.1, 0.0]             # wrist 10 cm below the middle MCP (joint 9 at 0)
    pred = 2.0 * gt
    pred[0, 5] = [0.042, 0.0, 0.0]          # after scaling by 0.5 -> 21 mm off
    np.testing.assert_allclose(nmpjpe(pred, gt), [0.021 / 21], atol=1e-12)


def test_auc_hand_values():
    errs = np.full((4, 21), 0.010)
    # t_k = 0.05 k / 99: PCK = 0 for k <= 19 (t_19 = 9.6 mm), 1 for k >= 20 (t_20 = 10.1 mm)
    assert auc(errs) == pytest.approx((0.5 + 79) / 99, abs=1e-12)
    assert auc(np.zeros((4, 21))) == pytest.approx(1.0)
    assert auc(np.full((4, 21), 0.060)) == pytest.approx(0.0)
    # coarse grid 0, 25, 50 mm with errors 10 mm: PCK = 0, 1, 1 -> (0.5 + 1) / 2
    assert auc(errs, steps=3) == pytest.approx(0.75)
    # half the joints perfect, half beyond range -> 0.5
    mixed = np.concatenate([np.zeros((2, 21)), np.full((2, 21), 0.1)])
    assert auc(mixed) == pytest.approx(0.5)


def test_pck_curve_and_nan_errors():
    errs = np.array([[0.001, 0.002], [0.003, np.nan]])
    np.testing.assert_allclose(pck_curve(errs, [0.0, 0.002, 0.01]), [0.0, 2 / 3, 1.0])
    assert np.isnan(pck_curve(np.full((2, 3), np.nan), [0.01])).all()


def test_error_2d_tiny_example():
    pred = np.array([[[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]]])
    gt = np.array([[[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]]])
    np.testing.assert_allclose(error_2d(pred, gt), [2.0])
    np.testing.assert_allclose(error_2d(pred, gt, mask=np.array([[1, 1, 0]])), [2.5])
    np.testing.assert_allclose(error_2d(pred, gt, mask=np.array([True, False, True])), [0.5])
    assert np.isnan(error_2d(pred, gt, mask=np.zeros((1, 3))))[0]
    gt_nan = gt.copy()
    gt_nan[0, 2] = np.nan                    # NaN gt joint is masked out
    np.testing.assert_allclose(error_2d(pred, gt_nan), [2.5])


def test_f_score_identical_and_far():
    rng = np.random.default_rng(2)
    v = rng.normal(scale=0.05, size=(3, 50, 3))
    f = f_score(v, v)
    assert f.shape == (3, 2)
    np.testing.assert_allclose(f, 1.0)
    np.testing.assert_allclose(f_score(v, v, threshold=0.005), 1.0)
    far = v + np.array([1.0, 0.0, 0.0])
    np.testing.assert_allclose(f_score(far, v, threshold=0.015), 0.0)
    np.testing.assert_allclose(f_score(far, v, align=True), 1.0)


def test_f_score_hand_value():
    pred = np.array([[[0.0, 0.0, 0.0], [0.001, 0.0, 0.0], [0.010, 0.0, 0.0]]])
    gt = np.array([[[0.0, 0.0, 0.0], [0.0012, 0.0, 0.0]]])
    # pred -> gt distances 0, 0.2 mm, 8.8 mm: P = 2/3; gt -> pred 0, 0.2 mm: R = 1
    # F = 2 (2/3) / (5/3) = 0.8 at 5 mm; at 15 mm P = R = 1.
    np.testing.assert_allclose(f_score(pred, gt), [[0.8, 1.0]], atol=1e-12)
    np.testing.assert_allclose(f_score(pred, gt, threshold=0.005), [0.8], atol=1e-12)
    # strict "<": a distance exactly at the threshold does not count
    np.testing.assert_allclose(f_score(pred, gt, threshold=0.0), [0.0])
    # chunking gives the same values
    many_p = np.repeat(pred, 5, axis=0)
    many_g = np.repeat(gt, 5, axis=0)
    np.testing.assert_allclose(f_score(many_p, many_g, chunk=2), np.tile([[0.8, 1.0]], (5, 1)))


def test_nan_ground_truth_excluded(joints):
    gt = joints.copy()
    gt[2, 4, 1] = np.nan
    gt[4] = np.nan
    pred = joints.copy()
    pred[:, 3, 0] += 0.021
    valid = valid_samples(gt)
    assert valid.tolist() == [True, True, False, True, False, True]
    for fn in (mpjpe, nmpjpe, pa_mpjpe):
        v = fn(pred, gt)
        assert np.isnan(v[~valid]).all()
        assert np.isfinite(v[valid]).all()
    np.testing.assert_allclose(average(mpjpe(pred, gt)), 0.001, atol=1e-12)
    np.testing.assert_allclose(average(mpjpe(pred, gt), valid=valid), 0.001, atol=1e-12)
    # per-joint errors of invalid samples are NaN and drop out of the AUC
    errs = mpjpe(pred, gt, per_joint=True)
    assert np.isnan(errs[~valid]).all()
    assert 0.0 < auc(errs) < 1.0
    f = f_score(pred, gt)
    assert np.isnan(f[~valid]).all() and np.isfinite(f[valid]).all()
    # nothing valid: no crash, NaN average
    assert math.isnan(average(pa_mpjpe(pred, np.full_like(gt, np.nan))))


def test_torch_inputs_and_float32(joints):
    pred = joints + 0.01
    a = mpjpe(torch.tensor(pred, dtype=torch.float32), torch.tensor(joints))
    assert isinstance(a, np.ndarray)
    np.testing.assert_allclose(a, mpjpe(pred, joints), atol=1e-6)
    b = pa_mpjpe(torch.tensor(pred, requires_grad=True), torch.tensor(joints))
    assert np.all(b < 1e-9)


def test_shape_errors():
    with pytest.raises(ValueError):
        mpjpe(np.zeros((2, 21, 3)), np.zeros((2, 20, 3)))
    with pytest.raises(ValueError):
        error_2d(np.zeros((2, 21, 3)), np.zeros((2, 21, 3)))


def test_orientation_error_is_the_angle_procrustes_removes():
    from model.metrics import orientation_error_deg, pa_mpjpe

    rng = np.random.default_rng(3)
    gt = rng.normal(size=(4, 21, 3)) * 0.03

    def turn(axis, deg):
        axis = np.asarray(axis, float) / np.linalg.norm(axis)
        K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        a = np.radians(deg)
        return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K

    angles = [0.0, 25.0, 90.0, 170.0]
    axes = [(0, 0, 1), (1, 2, 0), (0, 1, 0), (1, 1, 1)]
    pred = np.stack([1.3 * g @ turn(ax, a).T + 0.1 for g, ax, a in zip(gt, axes, angles)])
    assert np.allclose(orientation_error_deg(pred, gt), angles, atol=1e-4)
    assert np.allclose(pa_mpjpe(pred, gt), 0, atol=1e-9)  # what PA-MPJPE cannot see
    pred[1, 3] = np.nan
    out = orientation_error_deg(pred, gt)
    assert np.isnan(out[1]) and np.isclose(out[2], 90.0, atol=1e-4)
