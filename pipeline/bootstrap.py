"""Multi-view bootstrapping and temporal smoothing of 2D pseudo labels (issue 21).

The OpenPose hand detector was itself trained this way (Simon et al., CVPR 2017): label every view,
triangulate robustly, reproject into the views where the labeler failed or disagreed, keep what is
consistent. Here, for one calibrated capture:

1. per frame, the labels of every view with a crop are taken to image pixels and triangulated joint by
   joint with :func:`pipeline.triangulate.triangulate_ransac` (the refinement's RANSAC, the same
   threshold); a joint supported by at least ``min_inliers`` views gets a *support*
   (:func:`support_confidence`), the confidence its reprojection will carry;
2. optionally (``smooth``) the triangulated joints are smoothed over the capture's frames
   (:func:`smooth_joints`: a robust local polynomial fit, centred, so it does not lag through motion;
   outliers against the neighbours' median are rejected first and short gaps are filled);
3. every joint is reprojected into every view that has a crop; per view and joint:

   - the labeler's label is *kept* when it lies within ``disagree_px`` (image pixels) of the
     reprojection, or when there is no supported 3D joint to compare it with;
   - it is *replaced* by the reprojection when it lies farther (the confidence becomes the support);
   - where the view has no label (labeler miss: confidence below ``min_confidence``, or a view the
     labeler found nothing in) the reprojection *fills* it when it lands inside the crop.

The labeler's own labels are never changed: the result is a second label version stored beside them
(``pipeline/shards.py``, ``bootstrapped_*`` fields) with, per view and joint, where it came from
(``SOURCE_*``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from model.errors import HamucoError

from .crop import apply_affine, invert_affine
from .triangulate import triangulate_ransac

SOURCE_KEPT, SOURCE_REPLACED, SOURCE_FILLED, SOURCE_NONE = 0, 1, 2, 3
SOURCE_NAMES = {SOURCE_KEPT: "kept", SOURCE_REPLACED: "replaced", SOURCE_FILLED: "filled", SOURCE_NONE: "none"}


@dataclass(frozen=True)
class BootstrapParams:
    threshold_px: float = 15.0  # RANSAC inlier threshold, image pixels (the refinement's default)
    disagree_px: float = 10.0  # a label farther than this from the reprojection (image pixels) is replaced
    min_inliers: int = 3  # views that must agree on a joint before it is reprojected into the others
    min_confidence: float = 0.05  # a label below this confidence counts as missing
    smooth: bool = False  # smooth the triangulated joints over the capture's frames first
    smooth_window: int = 7  # frames of the local fit (odd)
    smooth_order: int = 2  # degree of the local polynomial
    outlier_mm: float = 20.0  # a joint this far from its neighbours' median is rejected before the fit
    max_gap: int = 3  # a joint missing at most this many frames in a row is filled by the fit
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        for name in ("threshold_px", "disagree_px", "outlier_mm"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                problems.append(f"{name} must be a positive number, got {v}")
        if self.min_inliers < 2:
            problems.append(f"min_inliers must be at least 2, got {self.min_inliers}")
        if not 0 <= self.min_confidence < 1:
            problems.append(f"min_confidence must be in [0, 1), got {self.min_confidence}")
        if self.smooth_window < 3 or self.smooth_window % 2 == 0:
            problems.append(f"smooth_window must be an odd number of frames >= 3, got {self.smooth_window}")
        if not 0 <= self.smooth_order < self.smooth_window:
            problems.append(f"smooth_order must be in [0, smooth_window), got {self.smooth_order}")
        if self.max_gap < 0:
            problems.append(f"max_gap must be >= 0, got {self.max_gap}")
        if problems:
            raise HamucoError("bootstrap parameters: " + "; ".join(problems))

    def to_json(self) -> dict:
        return asdict(self)


def support_confidence(num_inliers: np.ndarray, rms_px: np.ndarray, threshold_px: float) -> np.ndarray:
    """The confidence a reprojected joint carries: ``(1 − 2^−(n−1)) · exp(−½ (rms/σ)²)`` for ``n`` inlier
    views with RMS reprojection error ``rms`` (σ = the RANSAC threshold): 2 views → 0.5, 3 → 0.75,
    4 → 0.88, 8 → 0.99 when they agree exactly; an inlier spread at the threshold keeps ×0.61. 0 for
    fewer than 2 inliers."""
    n = np.asarray(num_inliers, np.float64)
    rms = np.where(np.isfinite(rms_px), rms_px, np.inf)
    conf = (1.0 - np.power(2.0, -(n - 1.0))) * np.exp(-0.5 * np.square(rms / threshold_px))
    return np.where(n >= 2, conf, 0.0)


def project(P: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points X (J, 3) into every view: pixels (V, J, 2) and depth (V, J) (NaN where X is NaN)."""
    Xh = np.concatenate([X, np.ones(X.shape[:-1] + (1,))], axis=-1)
    x = np.einsum("vij,kj->vki", P, Xh)
    depth = x[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = x[..., :2] / depth[..., None]
    return uv, depth


@dataclass
class FrameTriangulation:
    joints: np.ndarray  # (J, 3) world, NaN where unsupported
    support: np.ndarray  # (J,) confidence of a reprojection, 0 where unsupported
    num_inliers: np.ndarray  # (J,)


def triangulate_frame(P: np.ndarray, keypoints: np.ndarray, confidence: np.ndarray, affines: np.ndarray,
                      has_label: np.ndarray, params: BootstrapParams) -> FrameTriangulation:
    """RANSAC triangulation of one frame's labels (crop pixels, mapped to the image by the inverse of each
    view's crop affine); joints with fewer than ``min_inliers`` inlier views are unsupported."""
    V, J = confidence.shape
    uv = np.zeros((V, J, 2))
    conf = np.zeros((V, J))
    for v in np.nonzero(has_label)[0]:
        uv[v] = apply_affine(keypoints[v].astype(np.float64), invert_affine(affines[v]))
        conf[v] = confidence[v]
    conf = np.where(conf >= params.min_confidence, conf, 0.0)
    tri = triangulate_ransac(P, uv, conf, threshold_px=params.threshold_px, min_confidence=params.min_confidence,
                             seed=params.seed)
    err = np.where(tri.inliers, tri.reprojection_error, np.nan)
    with np.errstate(invalid="ignore"):
        rms = np.sqrt(np.nanmean(np.square(err), axis=0)) if np.any(tri.inliers) else np.full(J, np.nan)
    ok = (tri.num_inliers >= params.min_inliers) & np.all(np.isfinite(tri.joints), axis=1)
    support = np.where(ok, support_confidence(tri.num_inliers, rms, params.threshold_px), 0.0)
    joints = np.where(ok[:, None], tri.joints, np.nan)
    return FrameTriangulation(joints=joints, support=support, num_inliers=tri.num_inliers)


def _runs(mask: np.ndarray) -> np.ndarray:
    """Length of the run of True values each element belongs to (0 where False)."""
    out = np.zeros(len(mask), int)
    i = 0
    while i < len(mask):
        if mask[i]:
            j = i
            while j < len(mask) and mask[j]:
                j += 1
            out[i:j] = j - i
            i = j
        else:
            i += 1
    return out


def _fit_at(values: np.ndarray, use: np.ndarray, t: int, h: int, order: int,
            leave_out: bool = False) -> tuple[Optional[np.ndarray], int]:
    """Constant term of a least-squares polynomial in time, centred on frame ``t``, over the frames
    within ±h where ``use``: the fitted value at ``t`` and the number of frames it rests on. Degree
    ``order`` (lower with fewer frames); at most 1 when the frames all lie on one side of ``t`` without
    it (extrapolating a parabola amplifies noise several-fold)."""
    lo, hi = max(0, t - h), min(len(use), t + h + 1)
    m = use[lo:hi].copy()
    if leave_out:
        m[t - lo] = False
    n = int(m.sum())
    if n == 0:
        return None, 0
    s = (np.arange(lo, hi)[m] - t).astype(np.float64)
    extrapolating = not ((s < 0).any() and (s > 0).any()) and not (s == 0).any()
    deg = min(1 if extrapolating else order, n - 1)
    coef, *_ = np.linalg.lstsq(np.vander(s, deg + 1, increasing=True), values[lo:hi][m], rcond=None)
    return coef[0], n


def smooth_joints(joints: np.ndarray, present: np.ndarray, window: int = 7, order: int = 2,
                  outlier_m: float = 0.02, max_gap: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Temporal smoothing of triangulated joints (F frames, J joints, 3) where ``present`` (F, J).

    1. Outliers: each present joint is predicted from the other frames within ±window//2 (a local
       polynomial fit that leaves the frame out, from at least 3 frames); one farther than
       ``outlier_m`` from its prediction is rejected. Twice: the second pass predicts from the values
       the first one kept, so an outlier does not pull its neighbours' predictions. A fit through the
       neighbours follows motion, so fast movement is not taken for an outlier.
    2. Fit: at every frame, a polynomial of degree ``order`` in time, centred on the frame,
       least-squares over the kept values within ±window//2 frames; its constant term is the smoothed
       value (a Savitzky–Golay filter that tolerates gaps and the capture's ends; no lag).
    3. A frame whose joint was missing or rejected gets the fit only inside a gap of at most ``max_gap``
       frames with kept values on both sides within the window (interpolation, never extrapolation);
       otherwise it stays NaN.

    Returns (smoothed (F, J, 3), rejected (F, J), filled (F, J)); deterministic.
    """
    X = np.asarray(joints, np.float64)
    present = np.asarray(present, bool) & np.all(np.isfinite(X), axis=-1)
    F, J = present.shape
    h = window // 2
    kept = present.copy()
    for _ in range(2):
        test = present.copy()
        for t, j in zip(*np.nonzero(present)):
            pred, n = _fit_at(X[:, j], kept[:, j], t, h, order, leave_out=True)
            if n >= 3 and np.linalg.norm(X[t, j] - pred) > outlier_m:
                test[t, j] = False
        kept = test
    rejected = present & ~kept
    gap = np.stack([_runs(~kept[:, j]) for j in range(J)], axis=1) if F else np.zeros((0, J), int)
    out = np.full_like(X, np.nan)
    filled = np.zeros((F, J), bool)
    for t in range(F):
        lo, hi = max(0, t - h), min(F, t + h + 1)
        for j in range(J):
            if not kept[t, j]:
                if gap[t, j] > max_gap or not (kept[lo:t, j].any() and kept[t + 1:hi, j].any()):
                    continue
                filled[t, j] = True
            value, n = _fit_at(X[:, j], kept[:, j], t, h, order)
            if n:
                out[t, j] = value
    return out, rejected, filled


@dataclass
class BootstrappedFrame:
    keypoints: np.ndarray  # (V, J, 2) float32 crop pixels
    confidence: np.ndarray  # (V, J) float32
    view_valid: np.ndarray  # (V,) bool
    source: np.ndarray  # (V, J) uint8
    joints: np.ndarray  # (J, 3) float32 world joints the reprojections come from


def bootstrap_frame(P: np.ndarray, keypoints: np.ndarray, confidence: np.ndarray, view_valid: np.ndarray,
                    affines: np.ndarray, crop_size: int, joints: np.ndarray, support: np.ndarray,
                    params: BootstrapParams) -> BootstrappedFrame:
    """Keep, replace or fill each view's labels against the reprojection of ``joints`` (module notes).

    ``view_valid`` marks views with labels; a view with a crop (finite ``affines``) but no label (the
    labeler found nothing) can be filled and then becomes valid in the bootstrapped version."""
    V, J = confidence.shape
    kp = np.where(view_valid[:, None, None], keypoints, 0.0).astype(np.float64)
    conf = np.where(view_valid[:, None], confidence, 0.0).astype(np.float64)
    source = np.full((V, J), SOURCE_NONE, np.uint8)
    has_crop = np.all(np.isfinite(affines.reshape(V, -1)), axis=1)
    labelled = view_valid[:, None] & (conf >= params.min_confidence) & (conf > 0)
    source[labelled] = SOURCE_KEPT
    supported = (support > 0) & np.all(np.isfinite(joints), axis=1)  # (J,)
    uv, depth = project(P, np.where(supported[:, None], joints, 0.0))
    for v in np.nonzero(has_crop)[0]:
        A = affines[v]
        reproj_crop = apply_affine(uv[v], A)
        in_front = depth[v] > 0
        inside = np.all((reproj_crop >= 0) & (reproj_crop <= crop_size), axis=-1)
        label_img = apply_affine(kp[v], invert_affine(A)) if view_valid[v] else np.full((J, 2), np.nan)
        dist = np.linalg.norm(label_img - uv[v], axis=-1)
        replace = labelled[v] & supported & in_front & (dist > params.disagree_px)
        fill = ~labelled[v] & supported & in_front & inside
        for mask, code in ((replace, SOURCE_REPLACED), (fill, SOURCE_FILLED)):
            kp[v, mask] = reproj_crop[mask]
            conf[v, mask] = support[mask]
            source[v, mask] = code
    valid = view_valid | (has_crop & np.any(source == SOURCE_FILLED, axis=1))
    none = source == SOURCE_NONE  # below min_confidence and not filled: no label in this version
    kp[none] = 0.0
    conf[none] = 0.0
    kp[~valid] = 0.0
    conf[~valid] = 0.0
    return BootstrappedFrame(keypoints=kp.astype(np.float32), confidence=conf.astype(np.float32),
                             view_valid=valid, source=source,
                             joints=np.where(supported[:, None], joints, np.nan).astype(np.float32))


@dataclass
class CaptureBootstrap:
    frames: list[BootstrappedFrame]
    rejected: np.ndarray  # (F, J) triangulated joints the smoothing rejected as outliers
    smoothed_filled: np.ndarray  # (F, J) joints the smoothing filled in a short gap


def bootstrap_capture(P: np.ndarray, frames: Sequence[dict], crop_size: int, params: BootstrapParams,
                      progress: Optional[callable] = None) -> CaptureBootstrap:
    """Bootstrap every frame of one capture, in frame order. ``frames``: dicts with ``keypoints`` (V, J, 2)
    crop pixels, ``confidence`` (V, J), ``view_valid`` (V,), ``crop_affine`` (V, 2, 3) (NaN: no crop)."""
    tris = []
    for fr in frames:
        V = len(fr["view_valid"])
        labelled = np.asarray(fr["view_valid"], bool) & np.all(np.isfinite(fr["crop_affine"].reshape(V, -1)), axis=1)
        tris.append(triangulate_frame(P, fr["keypoints"], fr["confidence"], fr["crop_affine"], labelled, params))
        if progress:
            progress()
    F = len(frames)
    J = tris[0].joints.shape[0] if tris else 21
    joints = np.stack([t.joints for t in tris]) if tris else np.zeros((0, J, 3))
    support = np.stack([t.support for t in tris]) if tris else np.zeros((0, J))
    rejected = np.zeros((F, J), bool)
    filled = np.zeros((F, J), bool)
    if params.smooth and F:
        smoothed, rejected, filled = smooth_joints(joints, support > 0, params.smooth_window, params.smooth_order,
                                                   params.outlier_mm / 1000.0, params.max_gap)
        # a joint the smoothing filled or replaced carries half the mean support of the frames around it
        h = params.smooth_window // 2
        new_support = support.copy()
        for t in range(F):
            lo, hi = max(0, t - h), min(F, t + h + 1)
            for j in np.nonzero(filled[t] | rejected[t])[0]:
                near = support[lo:hi, j][(support[lo:hi, j] > 0) & ~rejected[lo:hi, j]]
                new_support[t, j] = 0.5 * float(near.mean()) if near.size and filled[t, j] else 0.0
        ok = np.all(np.isfinite(smoothed), axis=-1)
        support = np.where(ok, new_support, 0.0)
        joints = np.where(ok[..., None], smoothed, np.nan)
    out = [bootstrap_frame(P, fr["keypoints"], fr["confidence"], np.asarray(fr["view_valid"], bool),
                           fr["crop_affine"], crop_size, joints[i], support[i], params) for i, fr in enumerate(frames)]
    return CaptureBootstrap(frames=out, rejected=rejected, smoothed_filled=filled)


# ----------------------------------------------------------------------------- shards

def bootstrap_shards(capture, shard_paths: Sequence, out_paths: Sequence, params: BootstrapParams,
                     provenance: dict, progress: bool = True) -> dict:
    """Write, for each shard of one capture (in frame order), a copy holding the bootstrapped label
    version beside the labeler's labels (``bootstrapped_*`` fields; crops and every other field as they
    were, except ``crop_K`` now also given for views with a crop that the labeler left empty, which the
    bootstrapped version may use). Returns the capture's bootstrap statistics (:func:`bootstrap_statistics`).

    An uncalibrated capture cannot be bootstrapped: its labels are copied as the bootstrapped version
    (every label ``kept``), and the statistics say why."""
    from tqdm import tqdm

    from .crop import crop_intrinsics
    from .shards import ShardReader, ShardSample, ShardWriter

    from types import SimpleNamespace

    readers = [ShardReader(p) for p in shard_paths]
    try:
        # the labels of the whole capture (smoothing spans shards); the crops are read shard by shard below
        names = ("keypoints", "confidence", "view_valid", "crop_affine")
        fields = {n: np.concatenate([r.field(n) for r in readers]) for n in names} if readers else {}
        has_gt = bool(readers) and all("gt_joints_2d" in r.ground_truth_fields for r in readers)
        gt2d = np.concatenate([r.field("gt_joints_2d") for r in readers]) if has_gt else None
        n_frames = len(fields["keypoints"]) if readers else 0
        samples = [SimpleNamespace(**{n: fields[n][i] for n in names}, gt_joints_2d=gt2d[i] if has_gt else None)
                   for i in range(n_frames)]
        calibrated = all(c.has_intrinsics and c.has_extrinsics for c in capture.cameras)
        V = readers[0].num_views if readers else 0
        S = readers[0].crop_size if readers else 0
        frames = [dict(keypoints=s.keypoints, confidence=s.confidence, view_valid=s.view_valid,
                       crop_affine=s.crop_affine) for s in samples]
        reason = None
        if calibrated:
            from .triangulate import projection_matrices

            P = projection_matrices(np.stack([c.K for c in capture.cameras]), np.stack([c.R for c in capture.cameras]),
                                    np.stack([c.t for c in capture.cameras]))
            bar = tqdm(total=len(frames), desc=f"bootstrap {capture.name}", unit="frame", disable=not progress)
            result = bootstrap_capture(P, frames, S, params, progress=lambda: bar.update(1))
            bar.close()
            boots, rejected, filled = result.frames, result.rejected, result.smoothed_filled
        else:
            reason = "the capture is not calibrated (intrinsics and extrinsics of every camera are needed)"
            boots = [BootstrappedFrame(keypoints=s.keypoints.copy(), confidence=s.confidence.copy(),
                                       view_valid=s.view_valid.copy(),
                                       source=np.where(s.view_valid[:, None] & (s.confidence > 0), SOURCE_KEPT,
                                                       SOURCE_NONE).astype(np.uint8),
                                       joints=np.full((21, 3), np.nan, np.float32)) for s in samples]
            rejected = filled = np.zeros((len(samples), 21), bool)
        k = 0
        for reader, out in zip(readers, out_paths):
            attrs = {key: reader.attrs[key] for key in ("labeler", "source_capture", "capture_hash", "handedness",
                                                        "code_version", "weights_sha256", "labeler_params")
                     if key in reader.attrs}
            attrs["provenance"] = dict(reader.attrs.get("provenance") or {}, bootstrap=provenance)
            with ShardWriter(out, reader.camera_names, reader.crop_size, attrs) as w:
                for i in range(len(reader)):
                    s, b = reader[i], boots[k]
                    crop_K = s.crop_K.copy()
                    for v in range(V):
                        if (b.view_valid[v] and not np.all(np.isfinite(crop_K[v]))
                                and capture.cameras[v].has_intrinsics):
                            crop_K[v] = crop_intrinsics(capture.cameras[v].K, s.crop_affine[v])
                    fields = {name: getattr(s, name) for name in s.__dataclass_fields__}
                    fields.update(crop_K=crop_K, bootstrapped_keypoints=b.keypoints,
                                  bootstrapped_confidence=b.confidence, bootstrapped_view_valid=b.view_valid,
                                  bootstrap_source=b.source, bootstrap_joints=b.joints)
                    w.add(ShardSample(**fields))
                    k += 1
        stats = bootstrap_statistics(capture.name, [r.camera_names for r in readers][0] if readers else [],
                                     samples, boots)
        stats.update(params=params.to_json(), calibrated=calibrated, reason=reason,
                     smoothing={"rejected_joints": int(rejected.sum()), "filled_joints": int(filled.sum())})
        return stats
    finally:
        for r in readers:
            r.close()


def _median(x: np.ndarray) -> Optional[float]:
    """Median of the finite values, rounded for reports (None when there is none)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return round(float(np.median(x)), 3) if x.size else None


def bootstrap_statistics(name: str, cameras: Sequence[str], samples: Sequence, boots: Sequence) -> dict:
    """Per camera and overall: how many labels were kept, replaced, filled or left empty (views with a
    crop), and, with 2D ground truth, the median 2D error (crop px) of the labeler's labels and of the
    bootstrapped ones over the joints each version labels."""
    V = len(cameras)
    counts = np.zeros((V, 4), np.int64)
    raw_err: list[list] = [[] for _ in range(V)]
    boot_err: list[list] = [[] for _ in range(V)]
    for s, b in zip(samples, boots):
        has_crop = np.all(np.isfinite(s.crop_affine.reshape(V, -1)), axis=1)
        for v in np.nonzero(has_crop)[0]:
            counts[v] += np.bincount(b.source[v], minlength=4)[:4]
            if s.gt_joints_2d is not None:
                gt = s.gt_joints_2d[v]
                if s.view_valid[v]:
                    raw_err[v].append(np.where(s.confidence[v] > 0, np.linalg.norm(s.keypoints[v] - gt, axis=-1),
                                               np.nan))
                if b.view_valid[v]:
                    boot_err[v].append(np.where(b.confidence[v] > 0, np.linalg.norm(b.keypoints[v] - gt, axis=-1),
                                                np.nan))

    def summary(c: np.ndarray, raw: list, boot: list) -> dict:
        out = {SOURCE_NAMES[i]: int(c[i]) for i in range(4)}
        if raw or boot:
            r = np.concatenate(raw) if raw else np.array([])
            bt = np.concatenate(boot) if boot else np.array([])
            out.update(raw_median_px=_median(r), bootstrapped_median_px=_median(bt),
                       raw_labelled_joints=int(np.isfinite(r).sum()), bootstrapped_labelled_joints=int(np.isfinite(bt).sum()))
        return out

    return {"capture": name, "frames": len(samples),
            "per_camera": {cam: summary(counts[v], raw_err[v], boot_err[v]) for v, cam in enumerate(cameras)},
            "all": summary(counts.sum(0), sum(raw_err, []), sum(boot_err, []))}
