"""Evaluation metrics for 3D / 2D hand pose and hand meshes (pure NumPy math).

Conventions
-----------
* Inputs may be NumPy arrays or torch tensors (converted with ``.detach().cpu()``);
  everything is computed in float64 and returned as NumPy arrays.
* 3D joints are ``(N, J, 3)`` arrays (``J = 21`` in the usual keypoint order, joint 0 the
  wrist, joint 9 the middle-finger MCP) in **metres**; errors are returned in the same
  unit as the input (multiply by 1000 for mm).  2D keypoints are ``(N, J, 2)`` in pixels.
* Every per-sample function returns one value per sample, shape ``(N,)`` (or ``(N, J)``
  with ``per_joint=True``), so that results can be concatenated across batches and
  averaged once with :func:`average`.

NaN handling
------------
A sample whose ground truth contains any non-finite coordinate (NaN / inf) is *invalid*:
its per-sample value (and every per-joint value) is NaN, it never reaches an SVD or a
distance computation with garbage, and nothing raises.  :func:`average` ignores NaN
entries, so invalid samples are excluded from the averages (it returns NaN when no
finite entry is left).  Predictions containing non-finite values likewise give NaN for
that sample (and are therefore also left out by :func:`average`; use
:func:`valid_samples` on the ground truth and ``average(values, valid=...)`` if such
failures should instead poison the mean).  For :func:`error_2d` non-finite ground-truth
*joints* are simply masked out (a per-joint mask exists there).

Metrics
-------
With ``e_nj = || p_nj - g_nj ||_2`` for aligned prediction ``p`` and ground truth ``g``,
every MPJPE variant is ``mean_j e_nj`` per sample:

* ``mpjpe``     root alignment: ``p = P - P_root``, ``g = G - G_root`` (root = joint 9).
* ``nmpjpe``    root alignment then scale normalisation of the prediction:
  ``p = (P - P_root) * |G_0 - G_9| / |P_0 - P_9|`` (as in the official HanCo code).
* ``pa_mpjpe``  similarity Procrustes alignment (scale, rotation, translation) of ``P`` onto
  ``G`` (:func:`model.alignment.similarity_procrustes`).
* ``pck_curve`` / ``auc``  fraction of joint errors ``<= t`` over thresholds ``t`` in
  ``[0, 50 mm]`` and its trapezoidal area normalised to ``[0, 1]`` (FreiHAND ``EvalUtil``).
* ``error_2d``  mean pixel distance over masked-in joints.
* ``f_score``   FreiHAND F-score of two point sets at a distance threshold.
"""

from __future__ import annotations


import numpy as np
import torch

from model.alignment import apply_similarity, similarity_procrustes

__all__ = [
    "to_numpy",
    "valid_samples",
    "average",
    "root_align",
    "mpjpe",
    "nmpjpe",
    "pa_mpjpe",
    "pck_curve",
    "auc",
    "error_2d",
    "f_score",
    "ROOT_JOINT",
    "WRIST_JOINT",
]

ROOT_JOINT = 9    # middle-finger MCP
WRIST_JOINT = 0
_EPS = 1e-12


# ----------------------------------------------------------------------------- helpers

def to_numpy(x) -> np.ndarray:
    """Array-like or torch tensor -> float64 NumPy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _sample_finite(x: np.ndarray) -> np.ndarray:
    """``(N, ...)`` -> ``(N,)`` bool: all entries of the sample are finite."""
    return np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)


def valid_samples(gt) -> np.ndarray:
    """``(N,)`` bool mask of samples whose ground truth is entirely finite."""
    return _sample_finite(to_numpy(gt))


def average(values, valid=None) -> float:
    """Mean of per-sample (or per-joint) values, excluding invalid samples.

    ``valid=None``: mean over all finite entries (NaN = invalid sample, see module doc).
    ``valid`` a bool mask over the leading axis: mean over exactly those samples (NaN
    entries among them propagate).  Returns NaN (without a warning) when nothing is left.
    """
    v = to_numpy(values)
    if valid is None:
        v = v[np.isfinite(v)]
    else:
        v = v[np.asarray(valid, dtype=bool)]
    return float(v.mean()) if v.size else float("nan")


def _check_pair(pred, gt, dim: int = 3):
    p, g = to_numpy(pred), to_numpy(gt)
    if p.shape != g.shape or p.ndim != 3 or p.shape[-1] != dim:
        raise ValueError(f"expected matching (N, J, {dim}) arrays, got {p.shape} and {g.shape}")
    return p, g


def _sanitize(p: np.ndarray, g: np.ndarray):
    """Zero out invalid samples (non-finite gt or pred); return them and the valid mask."""
    ok = _sample_finite(g) & _sample_finite(p)
    p = np.where(ok[:, None, None], p, 0.0)
    g = np.where(ok[:, None, None], g, 0.0)
    return p, g, ok


def _finish(err: np.ndarray, ok: np.ndarray, per_joint: bool) -> np.ndarray:
    """Per-joint errors ``(N, J)`` -> ``(N,)`` / ``(N, J)`` with NaN for invalid samples."""
    err = np.where(ok[:, None], err, np.nan)
    return err if per_joint else err.mean(axis=1)


def root_align(x, root: int = ROOT_JOINT) -> np.ndarray:
    """``X - X[:, root]`` for ``(N, J, 3)`` joints."""
    x = to_numpy(x)
    return x - x[:, root:root + 1]


# ----------------------------------------------------------------------------- 3D joint errors

def mpjpe(pred, gt, root: int = ROOT_JOINT, per_joint: bool = False) -> np.ndarray:
    """Mean per-joint position error after root alignment.

        MPJPE_n = (1/J) sum_j || (P_nj - P_n,root) - (G_nj - G_n,root) ||_2

    Args:
        pred, gt: ``(N, J, 3)`` joints in metres.  root: root joint index (9 = middle MCP).
        per_joint: return the ``(N, J)`` errors instead of their per-sample mean.
    Returns:
        ``(N,)`` (or ``(N, J)``) errors in the input unit (metres); NaN for invalid samples.
    """
    p, g = _check_pair(pred, gt)
    p, g, ok = _sanitize(p, g)
    err = np.linalg.norm(root_align(p, root) - root_align(g, root), axis=-1)
    return _finish(err, ok, per_joint)


def nmpjpe(pred, gt, root: int = ROOT_JOINT, per_joint: bool = False,
           bone: tuple[int, int] = (WRIST_JOINT, ROOT_JOINT)) -> np.ndarray:
    """Scale-normalised MPJPE (official HanCo protocol).

        p_n  = (P_n - P_n,root) * s_n,   s_n = |G_n,a - G_n,b| / |P_n,a - P_n,b|
        NMPJPE_n = (1/J) sum_j || p_nj - (G_nj - G_n,root) ||_2

    with ``(a, b) = bone = (0, 9)`` (wrist -> middle-finger MCP).  A degenerate predicted
    bone (length ~ 0) gives ``s_n = 1``.

    Returns:
        ``(N,)`` (or ``(N, J)``) errors in metres; NaN for invalid samples.
    """
    p, g = _check_pair(pred, gt)
    p, g, ok = _sanitize(p, g)
    a, b = bone
    len_p = np.linalg.norm(p[:, a] - p[:, b], axis=-1)
    len_g = np.linalg.norm(g[:, a] - g[:, b], axis=-1)
    degenerate = len_p <= _EPS
    s = np.where(degenerate, 1.0, len_g / np.where(degenerate, 1.0, len_p))
    err = np.linalg.norm(root_align(p, root) * s[:, None, None] - root_align(g, root), axis=-1)
    return _finish(err, ok, per_joint)


def pa_mpjpe(pred, gt, per_joint: bool = False) -> np.ndarray:
    """Procrustes-aligned MPJPE.

        (s, R, t) = argmin sum_j || s R P_nj + t - G_nj ||^2     (Umeyama, det R = +1)
        PA-MPJPE_n = (1/J) sum_j || s R P_nj + t - G_nj ||_2

    Args:
        pred, gt: ``(N, J, 3)`` point sets in metres (any ``J``, e.g. 778 mesh vertices).
    Returns:
        ``(N,)`` (or ``(N, J)``) errors in metres; NaN for invalid samples.
    """
    p, g = _check_pair(pred, gt)
    p, g, ok = _sanitize(p, g)
    err = np.linalg.norm(_procrustes_align(p, g) - g, axis=-1)
    return _finish(err, ok, per_joint)


def orientation_error_deg(pred, gt) -> np.ndarray:
    """The angle of the rotation that Procrustes alignment needs: how far the prediction's global
    orientation is from the ground truth's, in degrees (0 = same orientation, 180 = turned over).

        (s, R, t) = argmin sum_j || s R P_nj + t - G_nj ||^2,   angle_n = arccos((tr R - 1) / 2)

    PA-MPJPE removes exactly this rotation, so a network can have a small PA-MPJPE per view and
    still a useless orientation; fusing views with known extrinsics relies on it.

    Args:
        pred, gt: ``(N, J, 3)`` joints in the same frame (e.g. a view's camera frame).
    Returns:
        ``(N,)`` degrees; NaN for invalid samples.
    """
    p, g = _check_pair(pred, gt)
    p, g, ok = _sanitize(p, g)
    _, R, _ = similarity_procrustes(torch.from_numpy(p), torch.from_numpy(g))
    cos = (np.trace(R.numpy(), axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.where(ok, np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))), np.nan)


def _procrustes_align(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Similarity-align ``p`` onto ``g`` (both finite ``(N, J, 3)`` float64)."""
    P, G = torch.from_numpy(p), torch.from_numpy(g)
    s, R, t = similarity_procrustes(P, G)
    return apply_similarity(P, s, R, t).numpy()


# ----------------------------------------------------------------------------- PCK / AUC

def pck_curve(errors_per_joint, thresholds) -> np.ndarray:
    """Percentage of correct keypoints for each threshold.

        PCK(t) = #{(n, j) valid : e_nj <= t} / #{(n, j) valid}

    Args:
        errors_per_joint: per-joint errors of any shape (e.g. ``(N, J)`` from
            ``pa_mpjpe(..., per_joint=True)``), same unit as ``thresholds``; non-finite
            entries (invalid samples) are excluded.
        thresholds: ``(T,)`` thresholds.
    Returns:
        ``(T,)`` fractions in ``[0, 1]`` (NaN if no finite error is given).
    """
    e = to_numpy(errors_per_joint).reshape(-1)
    e = e[np.isfinite(e)]
    t = to_numpy(thresholds).reshape(-1)
    if e.size == 0:
        return np.full(t.shape, np.nan)
    return (e[None, :] <= t[:, None]).mean(axis=1)


def auc(errors_per_joint, max_threshold: float = 0.05, steps: int = 100,
        min_threshold: float = 0.0) -> float:
    """Area under the PCK curve, normalised to ``[0, 1]`` (FreiHAND ``EvalUtil``).

        t_k = linspace(min_threshold, max_threshold, steps),   k = 0 .. steps-1
        AUC = trapz(PCK(t_k), t_k) / (max_threshold - min_threshold)

    Defaults: 0-50 mm (errors in metres) with 100 thresholds.  E.g. all errors 10 mm ->
    PCK is 0 for ``t_0..t_19`` and 1 for ``t_20..t_99`` -> AUC = (0.5 + 79) / 99.
    """
    t = np.linspace(min_threshold, max_threshold, steps)
    pck = pck_curve(errors_per_joint, t)
    area = np.sum((pck[1:] + pck[:-1]) * np.diff(t)) / 2.0
    return float(area / (max_threshold - min_threshold))


# ----------------------------------------------------------------------------- 2D

def error_2d(pred_uv, gt_uv, mask=None) -> np.ndarray:
    """Mean 2D keypoint distance in pixels over masked-in joints.

        E_n = sum_j m_nj || u_nj - v_nj ||_2 / sum_j m_nj

    Args:
        pred_uv, gt_uv: ``(N, J, 2)`` pixel coordinates.
        mask: optional ``(N, J)`` (or broadcastable, e.g. ``(J,)``) bool / 0-1 weights of
            joints to count; joints with non-finite ground truth or prediction are
            always masked out.
    Returns:
        ``(N,)`` errors in pixels; NaN for samples with no joint left.
    """
    p, g = _check_pair(pred_uv, gt_uv, dim=2)
    m = np.ones(p.shape[:2]) if mask is None else np.broadcast_to(to_numpy(mask), p.shape[:2])
    finite = np.isfinite(p).all(-1) & np.isfinite(g).all(-1)
    m = np.where(finite, m, 0.0)
    d = np.linalg.norm(np.where(finite[..., None], p - g, 0.0), axis=-1)
    w = m.sum(axis=1)
    return np.where(w > 0, (m * d).sum(axis=1) / np.where(w > 0, w, 1.0), np.nan)


# ----------------------------------------------------------------------------- F-score

def f_score(pred_vertices, gt_vertices, threshold=(0.005, 0.015), align: bool = False,
            chunk: int = 64) -> np.ndarray:
    """FreiHAND F-score of predicted vs ground-truth point sets (e.g. 778 mesh vertices).

        d_p(x) = min_{y in GT} ||x - y||,   d_g(y) = min_{x in PRED} ||x - y||
        P = #{x in PRED : d_p(x) < th} / |PRED|          (precision)
        R = #{y in GT   : d_g(y) < th} / |GT|            (recall)
        F = 2 P R / (P + R)   (0 when P + R = 0)

    (strict ``<`` as in the FreiHAND evaluation code; F@5 mm / F@15 mm are
    ``threshold = 0.005 / 0.015`` with vertices in metres.)

    Args:
        pred_vertices: ``(N, V, 3)``; gt_vertices: ``(N, W, 3)`` (``V`` may differ from
            ``W`` unless ``align``).
        threshold: a scalar, or a sequence of ``K`` thresholds (default (5 mm, 15 mm)).
        align: first similarity-Procrustes-align the prediction onto the ground truth
            (needs vertex correspondence, ``V == W``), as FreiHAND does.
        chunk: samples per batched ``torch.cdist`` call (bounds memory only).
    Returns:
        ``(N,)`` for a scalar threshold, else ``(N, K)``; NaN for invalid samples.
    """
    p, g = to_numpy(pred_vertices), to_numpy(gt_vertices)
    if p.ndim != 3 or g.ndim != 3 or p.shape[0] != g.shape[0] or p.shape[-1] != 3 or g.shape[-1] != 3:
        raise ValueError(f"expected (N, V, 3) and (N, W, 3) arrays, got {p.shape} and {g.shape}")
    ok = _sample_finite(p) & _sample_finite(g)
    p = np.where(ok[:, None, None], p, 0.0)
    g = np.where(ok[:, None, None], g, 0.0)
    if align:
        if p.shape != g.shape:
            raise ValueError("align=True needs corresponding vertex sets of equal shape")
        p = _procrustes_align(p, g)

    scalar = np.ndim(threshold) == 0
    th = np.atleast_1d(to_numpy(threshold))                          # (K,)
    n = p.shape[0]
    d_pred = np.empty((n, p.shape[1]))
    d_gt = np.empty((n, g.shape[1]))
    P, G = torch.from_numpy(p), torch.from_numpy(g)
    for i in range(0, n, max(1, int(chunk))):                       # chunks, not samples
        D = torch.cdist(P[i:i + chunk], G[i:i + chunk],             # (c, V, W), exact
                       compute_mode="donot_use_mm_for_euclid_dist")
        if D.shape[1] and D.shape[2]:
            d_pred[i:i + chunk] = D.min(dim=2).values.numpy()
            d_gt[i:i + chunk] = D.min(dim=1).values.numpy()
        else:
            d_pred[i:i + chunk] = np.inf
            d_gt[i:i + chunk] = np.inf

    prec = (d_pred[:, None, :] < th[None, :, None]).mean(axis=2) if p.shape[1] else np.zeros((n, th.size))
    rec = (d_gt[:, None, :] < th[None, :, None]).mean(axis=2) if g.shape[1] else np.zeros((n, th.size))
    denom = prec + rec
    f = np.where(denom > 0, 2 * prec * rec / np.where(denom > 0, denom, 1.0), 0.0)
    f = np.where(ok[:, None], f, np.nan)
    return f[:, 0] if scalar else f
