"""Multi-view triangulation and label refinement for calibrated captures (NumPy, vectorized).

Conventions: ``V`` cameras, ``J`` joints, pixels for image coordinates, world units (metres)
for 3-D points, OpenCV pinhole cameras ``x ~ K [R | t] X``.

* :func:`projection_matrices`: ``P = K [R | t]`` for every camera.
* :func:`triangulate_dlt`: confidence-weighted linear (DLT) triangulation of every joint at once,
  one batched SVD over joints.
* :func:`reprojection_errors`: pixel distance between projected points and observations.
* :func:`triangulate_ransac`: robust per-joint triangulation. Every pair of views (or, with many
  views, a seeded sample of pairs per joint) is a hypothesis; a view is an inlier when its
  reprojection error is below ``threshold_px``; the hypothesis with the largest
  confidence-weighted support wins and is re-triangulated from all its inliers, weighted by
  confidence. Joints × hypotheses × views are processed together as batched arrays; no Python
  loop runs over joints or hypotheses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.errors import HamucoError

# |w| of a unit homogeneous solution below this is a point at infinity (no usable triangulation)
_W_EPS = 1e-10
# at most this many refit / re-select rounds after the best hypothesis (local optimisation)
_LO_ROUNDS = 4


class TriangulationError(HamucoError):
    """Camera matrices, observations or parameters that cannot be triangulated."""


def _check_P(P: np.ndarray) -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 3 or P.shape[1:] != (3, 4):
        raise TriangulationError(f"camera matrices must have shape (V, 3, 4), got {P.shape}")
    if not np.all(np.isfinite(P)):
        raise TriangulationError("camera matrices contain NaN or inf (is every camera calibrated?)")
    return P


def _check_obs(P: np.ndarray, uv: np.ndarray, weights: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    uv = np.asarray(uv, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    V = P.shape[0]
    if uv.ndim != 3 or uv.shape[0] != V or uv.shape[2] != 2:
        raise TriangulationError(f"observations must have shape ({V}, J, 2) for {V} cameras, got {uv.shape}")
    if w.shape != uv.shape[:2]:
        raise TriangulationError(f"{what} must have shape {uv.shape[:2]}, got {w.shape}")
    # a view without finite coordinates, or with a negative / NaN weight, does not count
    w = np.where(np.all(np.isfinite(uv), axis=-1) & np.isfinite(w), np.clip(w, 0.0, None), 0.0)
    return uv, w


def _dlt_rows(P: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Unit-norm DLT rows ``u·P3 − P1`` and ``v·P3 − P2``: (V, J, 2, 4); zeros where uv is not finite."""
    uv = np.where(np.isfinite(uv), uv, 0.0)
    p3 = P[:, None, 2, :]  # (V, 1, 4)
    rows = np.stack([uv[..., 0:1] * p3 - P[:, None, 0, :],
                     uv[..., 1:2] * p3 - P[:, None, 1, :]], axis=2)  # (V, J, 2, 4)
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def _solve_homogeneous(A: np.ndarray) -> np.ndarray:
    """Least-squares null vector of (..., M, 4) systems, dehomogenized: (..., 3), NaN at infinity."""
    _, _, vt = np.linalg.svd(A)
    Xh = vt[..., -1, :]
    w = Xh[..., 3:]
    at_infinity = np.abs(w) < _W_EPS
    X = Xh[..., :3] / np.where(at_infinity, 1.0, w)
    return np.where(at_infinity, np.nan, X)


def _reprojection_errors(P: np.ndarray, X: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Batched errors: X (..., J, 3), uv (V, J, 2) → (..., V, J); NaN for NaN X, inf behind a camera."""
    p = np.einsum("vik,...jk->...vji", P[:, :, :3], X) + P[:, None, :, 3]  # (..., V, J, 3)
    depth = p[..., 2]
    safe = np.where(depth > 0, depth, 1.0)
    err = np.linalg.norm(p[..., :2] / safe[..., None] - uv, axis=-1)
    return np.where(depth <= 0, np.inf, err)  # NaN depth (NaN X) compares False and stays NaN


def projection_matrices(K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Camera matrices ``P = K [R | t]``: K (V, 3, 3), R (V, 3, 3), t (V, 3) → (V, 3, 4).

    ``R, t`` map world to camera coordinates (OpenCV convention, as :func:`model.geometry.look_at`).
    """
    K = np.asarray(K, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if K.ndim != 3 or K.shape[1:] != (3, 3) or R.shape != K.shape or t.shape != (K.shape[0], 3):
        raise TriangulationError(f"expected K (V, 3, 3), R (V, 3, 3), t (V, 3); got {K.shape}, {R.shape}, {t.shape}")
    return K @ np.concatenate([R, t[:, :, None]], axis=2)


def triangulate_dlt(P: np.ndarray, uv: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Confidence-weighted linear triangulation of all joints: P (V, 3, 4), uv (V, J, 2), weights (V, J) → (J, 3).

    Each view contributes the two DLT equations ``(u·P3 − P1)·X = 0`` and ``(v·P3 − P2)·X = 0``,
    each scaled to unit norm (conditioning: every equation weighs the same before confidence) and
    then multiplied by the view's weight; the homogeneous least-squares solution of every joint
    comes from one batched SVD. Views with weight 0 (or non-finite uv) do not contribute; joints
    with fewer than 2 views of positive weight, or whose solution lies at infinity, are NaN.
    """
    P = _check_P(P)
    uv, w = _check_obs(P, uv, weights, "weights")
    J = uv.shape[1]
    if J == 0:
        return np.zeros((0, 3))
    rows = _dlt_rows(P, uv) * w[:, :, None, None]  # (V, J, 2, 4)
    A = rows.transpose(1, 0, 2, 3).reshape(J, -1, 4)  # (J, 2V, 4)
    X = _solve_homogeneous(A)
    X[(w > 0).sum(axis=0) < 2] = np.nan
    return X


def reprojection_errors(P: np.ndarray, X: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Pixel distance (V, J) between the projections of X (J, 3) and the observations uv (V, J, 2).

    NaN where the joint (or the observation) is NaN; ``inf`` where the point is not in front of
    the camera (depth ≤ 0).
    """
    P = _check_P(P)
    X = np.asarray(X, dtype=np.float64)
    uv = np.asarray(uv, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 3 or uv.shape != (P.shape[0], X.shape[0], 2):
        raise TriangulationError(f"expected X (J, 3) and uv ({P.shape[0]}, J, 2); got {X.shape} and {uv.shape}")
    return _reprojection_errors(P, X, uv)


@dataclass
class TriangulationResult:
    """Output of :func:`triangulate_ransac` (V views, J joints)."""

    joints: np.ndarray  # (J, 3) world points, NaN where fewer than 2 usable (inlier) views
    inliers: np.ndarray  # (V, J) bool, views used for the final triangulation
    reprojection_error: np.ndarray  # (V, J) pixels to the final joints (NaN where the joint is NaN)
    refined_confidence: np.ndarray  # (V, J) confidence down-weighted by reprojection error
    num_inliers: np.ndarray  # (J,) int, inliers.sum(0)


def triangulate_ransac(P: np.ndarray, uv: np.ndarray, confidence: np.ndarray, threshold_px: float = 15.0,
                       iterations: int = 100, min_confidence: float = 0.05, seed: int = 0) -> TriangulationResult:
    """Robust confidence-weighted triangulation of every joint, with refined per-view confidences.

    P (V, 3, 4), uv (V, J, 2) pixels, confidence (V, J) ≥ 0. A view is *usable* for a joint when
    its confidence is ≥ ``min_confidence`` (and > 0) and its uv is finite.

    1. Hypotheses: when ``V·(V−1)/2 ≤ iterations`` every pair of views is tried (e.g. 12 views →
       66 pairs); otherwise ``iterations`` pairs of usable views are drawn per joint from
       ``numpy.random.default_rng(seed)`` (deterministic for a seed). Each pair gives a two-view
       DLT point weighted by the two confidences; pairs with an unusable view are skipped.
    2. Scoring: a usable view is an inlier of a hypothesis when its reprojection error is below
       ``threshold_px``. The support is the sum of the inliers' confidences, each scaled by the
       MSAC kernel ``1 − (err / threshold_px)²`` (Torr & Zisserman 2000) so that, among
       hypotheses with the same inliers, the tighter fit wins, and a chance agreement of two
       outliers near the threshold does not outweigh exact inliers. The largest support wins
       (ties: the first pair).
    3. Fit: the winner's inliers are re-triangulated with :func:`triangulate_dlt`, weights =
       confidence; then, up to a few rounds, the inliers are re-selected against this point
       and re-fitted while the support grows (local optimisation).
    A joint with fewer than 2 inliers (in particular fewer than 2 usable views) is NaN and has
    no inliers. ``inliers``/``num_inliers`` are the views of the final fit;
    ``reprojection_error`` is every view's error to the final joint.

    Refined confidence, with ``err`` the reprojection error to the final joint and
    ``σ = threshold_px``::

        refined = confidence · exp(−½ · (err / σ)²)

    An inlier well inside the threshold keeps almost all its confidence (err = σ/3 → ×0.95), a
    view at the threshold keeps ×0.61, a gross outlier (err ≫ σ, or behind the camera) gets ~0.
    Where the joint could not be triangulated (NaN) there is no evidence either way and the
    confidence is kept as given (negative/NaN confidences and views without finite uv → 0).
    Refined ≤ confidence always.
    """
    P = _check_P(P)
    uv, conf = _check_obs(P, uv, confidence, "confidence")
    threshold_px = float(threshold_px)
    if not np.isfinite(threshold_px) or threshold_px <= 0:
        raise TriangulationError(f"threshold_px must be a positive number of pixels, got {threshold_px}")
    if int(iterations) < 1:
        raise TriangulationError(f"iterations must be at least 1, got {iterations}")
    V, J = conf.shape
    usable = (conf >= min_confidence) & (conf > 0)  # (V, J)
    jj = np.arange(J)[None, :]

    # 1. pair hypotheses, (H, J) view indices
    n_pairs = V * (V - 1) // 2
    if n_pairs <= int(iterations):
        a, b = np.triu_indices(V, k=1)
        a = np.broadcast_to(a[:, None], (n_pairs, J))
        b = np.broadcast_to(b[:, None], (n_pairs, J))
    else:
        rng = np.random.default_rng(seed)
        keys = rng.random((int(iterations), J, V))
        keys = np.where(usable.T[None], keys, np.inf)  # usable views come first
        two = np.argpartition(keys, 1, axis=-1)[..., :2]
        a, b = two[..., 0], two[..., 1]
    H = a.shape[0]
    if H == 0 or J == 0:
        return _result(P, uv, conf, np.full((J, 3), np.nan), np.zeros((V, J), bool), threshold_px)
    rows = _dlt_rows(P, uv)  # (V, J, 2, 4)
    A = np.concatenate([rows[a, jj] * conf[a, jj][..., None, None],
                        rows[b, jj] * conf[b, jj][..., None, None]], axis=-2)  # (H, J, 4, 4)
    X_hyp = _solve_homogeneous(A)  # (H, J, 3)
    valid = usable[a, jj] & usable[b, jj] & np.all(np.isfinite(X_hyp), axis=-1)  # (H, J)

    # 2. scoring, all hypotheses × views × joints at once
    err = _reprojection_errors(P, np.where(valid[..., None], X_hyp, 0.0), uv)  # (H, V, J)
    inl, score = _score(err, conf, usable, threshold_px)
    score = np.where(valid, score, -1.0)  # (H, J)
    best = np.argmax(score, axis=0)  # (J,), first hypothesis among equals
    best_inl = np.take_along_axis(inl, best[None, None, :], axis=0)[0]  # (V, J)
    best_score = np.take_along_axis(score, best[None, :], axis=0)[0]  # (J,)

    # 3. fit on the inliers, re-select the inliers against the fit while the score improves
    for _ in range(_LO_ROUNDS):
        X = triangulate_dlt(P, uv, np.where(best_inl, conf, 0.0))
        inl1, score1 = _score(_reprojection_errors(P, X, uv), conf, usable, threshold_px)
        take = (inl1.sum(axis=0) >= 2) & (score1 > best_score) & np.any(inl1 != best_inl, axis=0)
        if not take.any():
            break
        best_inl = np.where(take[None], inl1, best_inl)
        best_score = np.where(take, score1, best_score)
    X = triangulate_dlt(P, uv, np.where(best_inl, conf, 0.0))
    ok = np.all(np.isfinite(X), axis=1) & (best_inl.sum(axis=0) >= 2)
    X[~ok] = np.nan
    return _result(P, uv, conf, X, best_inl & ok[None], threshold_px)


def _score(err: np.ndarray, conf: np.ndarray, usable: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Inliers (err < threshold among usable views) and their MSAC score Σ conf · (1 − (err/threshold)²)."""
    inl = (err < threshold) & usable
    score = np.where(inl, conf * (1.0 - np.square(np.where(inl, err, 0.0) / threshold)), 0.0).sum(axis=-2)
    return inl, score


def _result(P: np.ndarray, uv: np.ndarray, conf: np.ndarray, X: np.ndarray, inliers: np.ndarray,
            sigma: float) -> TriangulationResult:
    err = _reprojection_errors(P, X, uv)  # NaN where X (or uv) is NaN, inf behind a camera
    factor = np.exp(-0.5 * np.square(np.where(np.isnan(err), 0.0, err) / sigma))  # inf → 0, NaN → 1
    return TriangulationResult(joints=X, inliers=inliers, reprojection_error=err, refined_confidence=conf * factor,
                               num_inliers=inliers.sum(axis=0))
