"""Multi-view triangulation: exact data, gross outliers, noise, missing views, determinism."""
import numpy as np
import pytest

from model.geometry import look_at, project, world_to_camera
from pipeline.triangulate import (TriangulationError, TriangulationResult, projection_matrices, reprojection_errors,
                                  triangulate_dlt, triangulate_ransac)

J = 21
SIZE = 256
THRESHOLD = 8.0  # px


def make_rig(rng, views=8, radius=0.6):
    """Cameras on a jittered ring around the origin, looking at it (f ≈ 500 px, 256² images)."""
    az = np.linspace(0.0, 2 * np.pi, views, endpoint=False) + rng.uniform(-0.2, 0.2, views)
    height = rng.uniform(-0.25, 0.25, views)
    r = radius * rng.uniform(0.9, 1.1, views)
    centers = np.stack([r * np.cos(az), r * np.sin(az), height], axis=1)
    Rs, ts = zip(*(look_at(c, rng.normal(0.0, 0.01, 3), np.array([0.0, 0.0, 1.0])) for c in centers))
    K = np.zeros((views, 3, 3))
    f = rng.uniform(480, 520, views)
    K[:, 0, 0], K[:, 1, 1] = f, f * rng.uniform(0.99, 1.01, views)
    K[:, 0, 2], K[:, 1, 2] = SIZE / 2 + rng.uniform(-3, 3, views), SIZE / 2 + rng.uniform(-3, 3, views)
    K[:, 2, 2] = 1.0
    return K, np.stack(Rs), np.stack(ts)


def make_points(rng, n=J, radius=0.1):
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d * radius * rng.uniform(0, 1, (n, 1)) ** (1 / 3)


def project_all(K, R, t, X):
    uv = np.stack([project(world_to_camera(X, R[v], t[v]), K[v])[0] for v in range(len(K))])
    assert np.all((uv > 0) & (uv < SIZE)), "test points must be visible in every view"
    return uv


def scene(seed, views=8):
    rng = np.random.default_rng(seed)
    K, R, t = make_rig(rng, views)
    X = make_points(rng)
    uv = project_all(K, R, t, X)
    conf = rng.uniform(0.5, 1.0, (views, J))
    return rng, projection_matrices(K, R, t), X, uv, conf


def add_outliers(rng, uv, conf, fraction=0.3, min_distance=20.0):
    """Replace a fraction of observations by random pixels anywhere in the image, with high confidence.

    A random pixel that happens to land within ``min_distance`` px of the true projection is
    drawn again: it would be a (slightly noisy) inlier, not a gross outlier.
    """
    outlier = rng.random(conf.shape) < fraction
    bad = uv.copy()
    redraw = outlier.copy()
    while redraw.any():
        bad[redraw] = rng.uniform(0, SIZE, (redraw.sum(), 2))
        redraw &= np.linalg.norm(bad - uv, axis=-1) < min_distance
    conf = np.where(outlier, rng.uniform(0.7, 1.0, conf.shape), conf)
    return bad, conf, outlier


def joint_errors(X, Y):
    return np.linalg.norm(X - Y, axis=1)


def test_projection_matrices_match_pinhole_projection():
    rng = np.random.default_rng(0)
    K, R, t = make_rig(rng)
    X = make_points(rng)
    P = projection_matrices(K, R, t)
    assert P.shape == (8, 3, 4)
    Xh = np.c_[X, np.ones(J)]
    p = np.einsum("vij,nj->vni", P, Xh)
    np.testing.assert_allclose(p[..., :2] / p[..., 2:], project_all(K, R, t, X), atol=1e-9)
    with pytest.raises(TriangulationError):
        projection_matrices(K, R, t[:, :2])


@pytest.mark.parametrize("seed", range(3))
def test_exact_projections_dlt_and_ransac(seed):
    _, P, X, uv, conf = scene(seed)
    Xd = triangulate_dlt(P, uv, conf)
    assert joint_errors(Xd, X).max() < 1e-3  # metres; in practice ~1e-12
    res = triangulate_ransac(P, uv, conf, threshold_px=THRESHOLD)
    assert isinstance(res, TriangulationResult)
    assert res.joints.shape == (J, 3) and res.inliers.shape == (8, J) and res.num_inliers.shape == (J,)
    assert joint_errors(res.joints, X).max() < 1e-3
    assert res.inliers.all() and np.all(res.num_inliers == 8)
    assert np.nanmax(res.reprojection_error) < 1e-6
    np.testing.assert_allclose(res.refined_confidence, conf, rtol=1e-9)


def test_reprojection_errors_nan_and_behind_camera():
    _, P, X, uv, _ = scene(0)
    err = reprojection_errors(P, X, uv)
    assert err.shape == (8, J) and np.all(err < 1e-6)
    Xn = X.copy()
    Xn[3] = np.nan
    err = reprojection_errors(P, Xn, uv)
    assert np.all(np.isnan(err[:, 3])) and np.all(np.isfinite(np.delete(err, 3, axis=1)))
    # a point 2 m out along camera 0's backward axis is behind camera 0
    C0 = -np.linalg.solve(P[0, :, :3], P[0, :, 3])  # camera centre
    Xb = X.copy()
    Xb[5] = C0 * (1 + 2.0 / np.linalg.norm(C0))
    err = reprojection_errors(P, Xb, uv)
    assert np.isinf(err[0, 5])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_ransac_rejects_gross_outliers(seed, noise):
    rng, P, X, uv, conf = scene(100 + seed)
    uv = uv + rng.normal(0, noise, uv.shape)
    bad, conf, outlier = add_outliers(rng, uv, conf)
    res = triangulate_ransac(P, bad, conf, threshold_px=THRESHOLD)
    n_good = (~outlier).sum(axis=0)
    checked = n_good >= 3
    assert checked.sum() >= 15
    err = joint_errors(res.joints, X)
    assert err[checked].max() < (1e-3 if noise == 0 else 5e-3), err

    # outliers detected: the inlier mask matches the truth for most entries
    assert np.mean(res.inliers[:, checked] == ~outlier[:, checked]) > 0.95
    assert np.all(res.num_inliers == res.inliers.sum(axis=0))
    # outliers lose their confidence, inliers keep it
    rc = res.refined_confidence
    assert np.median(rc[outlier] / conf[outlier]) < 1e-3
    assert np.median(rc[~outlier] / conf[~outlier]) > 0.9
    assert rc[outlier].mean() < 0.1 * rc[~outlier].mean()
    assert np.all(rc <= conf + 1e-12)

    # plain confidence-weighted DLT on the same data is clearly worse
    dlt = joint_errors(triangulate_dlt(P, bad, conf), X)
    assert np.median(dlt[checked]) > 10 * max(np.median(err[checked]), 1e-4)
    assert np.median(dlt[checked]) > 5e-3


def test_zero_confidence_views_are_ignored():
    rng, P, X, uv, conf = scene(7)
    conf[2] = 0.0
    conf[5, :10] = 0.0
    garbage = uv.copy()
    garbage[2] = rng.uniform(-1e4, 1e4, (J, 2))
    garbage[5, :10] = np.nan
    np.testing.assert_allclose(triangulate_dlt(P, garbage, conf), X, atol=1e-9)
    res = triangulate_ransac(P, garbage, conf, threshold_px=THRESHOLD)
    np.testing.assert_allclose(res.joints, X, atol=1e-9)
    assert not res.inliers[2].any() and not res.inliers[5, :10].any() and res.inliers[5, 10:].all()
    assert np.all(res.refined_confidence[2] == 0) and np.all(res.refined_confidence[5, :10] == 0)
    # below min_confidence: not used either
    conf2 = conf.copy()
    conf2[3] = 0.01
    res2 = triangulate_ransac(P, garbage, conf2, threshold_px=THRESHOLD, min_confidence=0.05)
    np.testing.assert_allclose(res2.joints, X, atol=1e-9)
    assert not res2.inliers[3].any()


def test_joint_seen_by_one_view_is_nan():
    _, P, X, uv, conf = scene(3)
    conf[:, 4] = 0.0
    conf[6, 4] = 0.9  # joint 4: one view only
    conf[:, 9] = 0.0  # joint 9: no view
    Xd = triangulate_dlt(P, uv, conf)
    assert np.all(np.isnan(Xd[[4, 9]])) and np.all(np.isfinite(np.delete(Xd, [4, 9], axis=0)))
    res = triangulate_ransac(P, uv, conf, threshold_px=THRESHOLD)
    assert np.all(np.isnan(res.joints[[4, 9]])) and res.num_inliers[4] == 0 and res.num_inliers[9] == 0
    assert not res.inliers[:, [4, 9]].any()
    assert np.all(np.isnan(res.reprojection_error[:, [4, 9]]))
    assert res.refined_confidence[6, 4] == pytest.approx(0.9)  # nothing to refine it against
    assert joint_errors(np.delete(res.joints, [4, 9], axis=0), np.delete(X, [4, 9], axis=0)).max() < 1e-6
    # a single camera, or none usable at all
    one = triangulate_ransac(P[:1], uv[:1], conf[:1], threshold_px=THRESHOLD)
    assert np.all(np.isnan(one.joints)) and not one.inliers.any()
    none = triangulate_ransac(P, uv, np.zeros_like(conf), threshold_px=THRESHOLD)
    assert np.all(np.isnan(none.joints)) and np.all(none.num_inliers == 0)


@pytest.mark.parametrize("views", [8, 20])
def test_deterministic_for_a_seed(views):
    rng, P, X, uv, conf = scene(11, views=views)
    bad, conf, outlier = add_outliers(rng, uv + rng.normal(0, 0.5, uv.shape), conf)
    kw = dict(threshold_px=THRESHOLD, iterations=40, seed=3)  # 20 views: 190 pairs > 40, sampled
    r1 = triangulate_ransac(P, bad, conf, **kw)
    r2 = triangulate_ransac(P, bad, conf, **kw)
    for f in ("joints", "inliers", "reprojection_error", "refined_confidence", "num_inliers"):
        np.testing.assert_array_equal(getattr(r1, f), getattr(r2, f))
    checked = (~outlier).sum(axis=0) >= 3
    assert joint_errors(r1.joints, X)[checked].max() < 5e-3


def test_invalid_parameters_raise():
    _, P, _, uv, conf = scene(0)
    with pytest.raises(TriangulationError):
        triangulate_ransac(P, uv, conf, threshold_px=0.0)
    with pytest.raises(TriangulationError):
        triangulate_ransac(P, uv[:, :, :1], conf)
    with pytest.raises(TriangulationError):
        triangulate_dlt(P[:, :2], uv, conf)
