"""Label quality of a prepared dataset (``hamuco labels report``; issue 21): per label version, capture,
camera and joint, what real captures can tell without ground truth (reprojection error after
triangulating the labels, share of outlier views, views without labels) and, where the captures have
ground truth (synthetic ones), the 2D error, PCK at 2 / 5 / 10 crop pixels, whether the confidence
predicts the error (a reliability table and plot) and the PA-MPJPE of triangulating the labels. With
another dataset index (``against``: another labeler, another label version of the same captures) the
two are compared on the views both have: agreement per joint and, with ground truth, which is closer.

Every figure is over *labelled joints*: a view's joint with confidence > 0 in a valid view of that
version. Distances to the ground truth are in crop pixels (the unit training sees); reprojection errors
in image pixels (the unit of the RANSAC threshold). Triangulation: the refinement's RANSAC
(``pipeline.triangulate``) of each version's labels, cameras from the shard (crop intrinsics and
crop affine back to the image), threshold ``threshold_px``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from model.errors import HamucoError
from model.hand_model import OPENPOSE_NAMES
from model.metrics import pa_mpjpe

from .bootstrap import _median
from .crop import apply_affine, invert_affine
from .dataset import load_index
from .shards import ShardReader
from .triangulate import triangulate_ransac

PCK_PX = (2.0, 5.0, 10.0)
CONF_BINS = np.linspace(0.0, 1.0, 6)  # reliability: 5 confidence bins


@dataclass
class VersionLabels:
    """Every labelled view of one label version, flattened per (sample, view) and joint."""

    name: str
    keys: list = field(default_factory=list)  # (capture, frame_id) per sample
    cameras: list = field(default_factory=list)  # camera names per sample (V,)
    keypoints: list = field(default_factory=list)  # (V, J, 2) crop px per sample
    confidence: list = field(default_factory=list)  # (V, J)
    valid: list = field(default_factory=list)  # (V,)
    has_crop: list = field(default_factory=list)  # (V,)
    gt_2d: list = field(default_factory=list)  # (V, J, 2) or None
    gt_world: list = field(default_factory=list)  # (J, 3) or None
    P_image: list = field(default_factory=list)  # (V, 3, 4), NaN rows for views without calibration or crop
    affines: list = field(default_factory=list)  # (V, 2, 3)


def version_names(index: dict) -> dict[str, str]:
    """Field set → the name the report gives it: ``<labeler>:raw``, ``<labeler>:bootstrapped`` (or
    ``bootstrapped+smoothed``)."""
    labeler = index.get("labeler", "labels")
    names = {"raw": f"{labeler}:raw"}
    if "bootstrapped" in index.get("label_versions", []):
        smooth = (index.get("bootstrap") or {}).get("smooth")
        names["bootstrapped"] = f"{labeler}:bootstrapped" + ("+smoothed" if smooth else "")
    return names


def _image_P(sample) -> Optional[np.ndarray]:
    """World → image projection of every view from the shard (crop intrinsics taken back to the image by
    the crop affine); None unless every view with a crop is calibrated."""
    V = sample.view_valid.shape[0]
    P = np.full((V, 3, 4), np.nan)
    for v in range(V):
        A = sample.crop_affine[v]
        if not np.all(np.isfinite(A)):
            continue
        if not (sample.extrinsics_known[v] and np.all(np.isfinite(sample.crop_K[v]))):
            continue
        A3 = np.vstack([A, [0.0, 0.0, 1.0]])
        P[v] = np.linalg.inv(A3) @ sample.crop_K[v] @ sample.extrinsics[v]
    return P


def read_versions(index_path: str | Path) -> dict[str, VersionLabels]:
    """The label versions of a dataset index (every shard, every split)."""
    index = load_index(index_path)
    names = version_names(index)
    out = {k: VersionLabels(n) for k, n in names.items()}
    for entry in index["shards"]:
        with ShardReader(entry["path"]) as r:
            if "bootstrapped" in out and not r.has_bootstrapped_labels:
                raise HamucoError(f"{entry['path']}: the index lists a bootstrapped label version, this shard has "
                                  "none")
            for s in r:
                P = _image_P(s)
                has_crop = np.all(np.isfinite(s.crop_affine.reshape(len(s.view_valid), -1)), axis=1)
                for key, vl in out.items():
                    if key == "raw":
                        kp, conf, valid = s.keypoints, s.confidence, s.view_valid
                    else:
                        kp, conf, valid = s.bootstrapped_keypoints, s.bootstrapped_confidence, s.bootstrapped_view_valid
                    vl.keys.append((entry["capture"], s.frame_id))
                    vl.cameras.append(list(r.camera_names))
                    vl.keypoints.append(np.asarray(kp, np.float64))
                    vl.confidence.append(np.where(valid[:, None], conf, 0.0))
                    vl.valid.append(np.asarray(valid, bool))
                    vl.has_crop.append(has_crop)
                    vl.gt_2d.append(s.gt_joints_2d)
                    vl.gt_world.append(s.gt_joints_world)
                    vl.P_image.append(P)
                    vl.affines.append(s.crop_affine)
    return out


@dataclass
class Records:
    """One row per (sample, view, joint) of one version."""

    capture: np.ndarray
    camera: np.ndarray
    joint: np.ndarray
    labelled: np.ndarray
    has_crop: np.ndarray
    confidence: np.ndarray
    error_px: np.ndarray  # to the ground truth, crop px (NaN without)
    reprojection_px: np.ndarray  # to the triangulation of this version, image px (NaN where none)
    outlier: np.ndarray  # labelled but not an inlier of that triangulation


def triangulate_version(vl: VersionLabels, threshold_px: float) -> tuple[list, list, list]:
    """Per sample: triangulated joints (J, 3), reprojection error (V, J) image px, inliers (V, J)."""
    joints, reproj, inliers = [], [], []
    for kp, conf, valid, P, A in zip(vl.keypoints, vl.confidence, vl.valid, vl.P_image, vl.affines):
        V, J = conf.shape
        usable = valid & np.all(np.isfinite(P.reshape(V, -1)), axis=1)
        if usable.sum() < 2:
            joints.append(np.full((J, 3), np.nan))
            reproj.append(np.full((V, J), np.nan))
            inliers.append(np.zeros((V, J), bool))
            continue
        uv = np.zeros((V, J, 2))
        for v in np.nonzero(usable)[0]:
            uv[v] = apply_affine(kp[v], invert_affine(A[v]))
        Pz = np.where(np.isfinite(P), P, 0.0)
        tri = triangulate_ransac(Pz, uv, np.where(usable[:, None], conf, 0.0), threshold_px=threshold_px)
        joints.append(tri.joints)
        reproj.append(np.where(usable[:, None] & (conf > 0), tri.reprojection_error, np.nan))
        inliers.append(tri.inliers)
    return joints, reproj, inliers


def records(vl: VersionLabels, threshold_px: float, keep: Optional[set] = None) -> tuple[Records, list]:
    """Rows of one version (only the samples whose key is in ``keep``, when given) and its triangulation."""
    joints, reproj, inliers = triangulate_version(vl, threshold_px)
    cols: dict[str, list] = {k: [] for k in Records.__dataclass_fields__}
    tri = []
    for i, (key, cams) in enumerate(zip(vl.keys, vl.cameras)):
        if keep is not None and key not in keep:
            continue
        V, J = vl.confidence[i].shape
        labelled = vl.valid[i][:, None] & (vl.confidence[i] > 0)
        gt = vl.gt_2d[i]
        err = (np.linalg.norm(vl.keypoints[i] - gt, axis=-1) if gt is not None else np.full((V, J), np.nan))
        cols["capture"].append(np.full((V, J), key[0], object))
        cols["camera"].append(np.repeat(np.array(cams, object)[:, None], J, axis=1))
        cols["joint"].append(np.broadcast_to(np.arange(J), (V, J)))
        cols["labelled"].append(labelled)
        cols["has_crop"].append(np.repeat(vl.has_crop[i][:, None], J, axis=1))
        cols["confidence"].append(vl.confidence[i])
        cols["error_px"].append(np.where(labelled, err, np.nan))
        cols["reprojection_px"].append(np.where(labelled, reproj[i], np.nan))
        cols["outlier"].append(labelled & np.isfinite(reproj[i]) & ~inliers[i])
        tri.append((key, joints[i], vl.gt_world[i]))
    return Records(**{k: np.concatenate([np.ravel(a) for a in v]) if v else np.array([]) for k, v in cols.items()}), tri


def summary(r: Records, mask: np.ndarray) -> dict:
    lab = mask & r.labelled
    err = r.error_px[lab]
    out = {"labelled_joints": int(lab.sum()), "joints_with_crop": int((mask & r.has_crop).sum()),
           "misses": int((mask & r.has_crop & ~r.labelled).sum()),
           "reprojection_median_px": _median(r.reprojection_px[lab]),
           "outlier_share": (round(float(r.outlier[lab].sum() / max(np.isfinite(r.reprojection_px[lab]).sum(), 1)), 4)
                             if lab.any() else None)}
    if np.isfinite(err).any():
        e = err[np.isfinite(err)]
        out["median_px"] = round(float(np.median(e)), 3)
        out.update({f"pck_{int(t)}px": round(float((e <= t).mean()), 4) for t in PCK_PX})
    return out


def reliability(r: Records) -> list[dict]:
    """Median 2D error per confidence bin: a confidence that predicts the error falls bin by bin."""
    rows = []
    lab = r.labelled & np.isfinite(r.error_px)
    for lo, hi in zip(CONF_BINS[:-1], CONF_BINS[1:]):
        m = lab & (r.confidence > lo) & (r.confidence <= hi)
        rows.append({"confidence": f"({lo:.1f}, {hi:.1f}]", "count": int(m.sum()),
                     "median_px": _median(r.error_px[m]), "pck_5px": (round(float((r.error_px[m] <= 5).mean()), 4)
                                                                      if m.any() else None)})
    return rows


def triangulation_pa_mpjpe(tri: list) -> dict:
    """PA-MPJPE (mm) of the triangulated labels against the ground truth, per capture and overall (frames
    with every joint triangulated); the share of frames that had them."""
    per: dict[str, list] = {}
    for (capture, _), X, gt in tri:
        if gt is None:
            continue
        per.setdefault(capture, []).append(float(pa_mpjpe(X[None], gt[None])[0]) * 1000 if np.isfinite(X).all()
                                           else np.nan)
    out = {}
    for cap, v in per.items():
        a = np.array(v)
        out[cap] = {"pa_mpjpe_mm": _median_mean(a), "frames": len(a), "triangulated_share": round(float(np.isfinite(a).mean()), 4)}
    allv = np.concatenate([np.array(v) for v in per.values()]) if per else np.array([])
    if allv.size:
        out["all"] = {"pa_mpjpe_mm": _median_mean(allv), "frames": int(allv.size),
                      "triangulated_share": round(float(np.isfinite(allv).mean()), 4)}
    return out


def _median_mean(a: np.ndarray) -> Optional[float]:
    a = a[np.isfinite(a)]
    return round(float(a.mean()), 3) if a.size else None


def same_labels(a: VersionLabels, b: VersionLabels) -> bool:
    """The two versions label the frames they share identically (same keys, views, labels, confidence)."""
    idx = {k: i for i, k in enumerate(b.keys)}
    shared = [(i, idx[k]) for i, k in enumerate(a.keys) if k in idx]
    return bool(shared) and all(
        a.cameras[i] == b.cameras[k] and np.array_equal(a.valid[i], b.valid[k])
        and np.array_equal(a.keypoints[i], b.keypoints[k]) and np.array_equal(a.confidence[i], b.confidence[k])
        for i, k in shared)


def _image_points(vl: VersionLabels, i: int, v: int) -> np.ndarray:
    """Version ``vl``'s labels of sample ``i``, view ``v`` in image pixels (two indexes may crop differently)."""
    A = vl.affines[i][v]
    if not np.all(np.isfinite(A)):
        return np.full((21, 2), np.nan)
    return apply_affine(vl.keypoints[i][v], invert_affine(A))


def agreement(a: VersionLabels, b: VersionLabels) -> dict:
    """Two versions on the same views (matched by capture, frame and camera name), compared in image pixels
    (the indexes may have other crops): median distance per joint where both label, and with ground truth,
    the share of those joints where each is closer."""
    idx = {k: i for i, k in enumerate(b.keys)}
    dist, closer_a, closer_b, with_gt, per_joint = [], 0, 0, 0, [[] for _ in range(21)]
    for i, key in enumerate(a.keys):
        k = idx.get(key)
        if k is None:
            continue
        bi = {c: v for v, c in enumerate(b.cameras[k])}
        for v, cam in enumerate(a.cameras[i]):
            w = bi.get(cam)
            if w is None:
                continue
            both = (a.valid[i][v] & b.valid[k][w]) & (a.confidence[i][v] > 0) & (b.confidence[k][w] > 0)
            pa, pb = _image_points(a, i, v), _image_points(b, k, w)
            d = np.linalg.norm(pa - pb, axis=-1)
            both &= np.isfinite(d)
            for j in np.nonzero(both)[0]:
                per_joint[j].append(d[j])
            dist.append(d[both])
            if a.gt_2d[i] is not None and b.gt_2d[k] is not None:  # crop px, each against its own crop's truth
                ea = np.linalg.norm(a.keypoints[i][v] - a.gt_2d[i][v], axis=-1)
                eb = np.linalg.norm(b.keypoints[k][w] - b.gt_2d[k][w], axis=-1)
                has = both & np.isfinite(ea) & np.isfinite(eb)
                with_gt += int(has.sum())
                closer_a += int((has & (ea < eb)).sum())
                closer_b += int((has & (eb < ea)).sum())
    d = np.concatenate(dist) if dist else np.array([])
    out = {"a": a.name, "b": b.name, "joints_both_label": int(d.size), "median_distance_image_px": _median(d),
           "per_joint_median_image_px": [_median(np.array(x)) for x in per_joint]}
    if with_gt:
        out.update(a_closer_share=round(closer_a / with_gt, 4), b_closer_share=round(closer_b / with_gt, 4),
                   joints_with_ground_truth=with_gt)
    return out


def label_report(index_path: str | Path, against: Optional[str | Path] = None, threshold_px: float = 15.0) -> dict:
    """The report's data (what ``labels_report.json`` holds); see the module notes."""
    versions = read_versions(index_path)
    identical = []
    if against is not None:
        other = read_versions(against)
        ours = list(versions.values())
        for k, v in other.items():
            twin = next((o for o in ours if same_labels(o, v)), None)
            if twin is not None:  # e.g. the raw labels both indexes were made from: shown once
                identical.append({"against": v.name, "same_as": twin.name})
                continue
            if v.name in {o.name for o in ours}:
                v.name += " (against)"
            versions["against:" + k] = v
    # a comparison covers the frames every version has (the other index may hold other captures)
    common = set.intersection(*(set(v.keys) for v in versions.values()))
    if not common:
        raise HamucoError(f"{index_path}: no frame in common between the label versions to compare "
                          f"(the --against index holds other captures?)")
    result: dict = {"index": str(index_path), "against": str(against) if against else None,
                    "threshold_px": threshold_px, "frames": len(common), "versions": {},
                    "identical_versions_left_out": identical}
    for vl in versions.values():
        r, tri = records(vl, threshold_px, common)
        caps, cams = sorted(set(r.capture)), sorted(set(r.camera))
        result["versions"][vl.name] = {
            "all": summary(r, np.ones(r.capture.shape, bool)),
            "per_capture": {c: summary(r, r.capture == c) for c in caps},
            "per_camera": {c: summary(r, r.camera == c) for c in cams},
            "per_joint": {OPENPOSE_NAMES[j]: summary(r, r.joint == j) for j in range(21)},
            "reliability": reliability(r),
            "triangulation": triangulation_pa_mpjpe(tri),
        }
    result["ground_truth"] = any("median_px" in v["all"] for v in result["versions"].values())
    vs = list(versions.values())
    result["agreement"] = [agreement(vs[i], vs[k]) for i in range(len(vs)) for k in range(i + 1, len(vs))]
    return result


# ----------------------------------------------------------------------------- HTML

def _figures(result: dict) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import _png

    names = list(result["versions"])
    figs = {}
    if result["ground_truth"]:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for n in names:
            rel = result["versions"][n]["reliability"]
            x = [(lo + hi) / 2 for lo, hi in zip(CONF_BINS[:-1], CONF_BINS[1:])]
            y = [r["median_px"] if r["median_px"] is not None else np.nan for r in rel]
            ax.plot(x, y, "o-", label=n)
        ax.set_xlabel("confidence (bin centre)")
        ax.set_ylabel("median 2D error (crop px)")
        ax.set_title("reliability: does the confidence predict the error?", fontsize=9)
        ax.legend(fontsize=7)
        figs["reliability"] = _png(fig)
    key = "median_px" if result["ground_truth"] else "reprojection_median_px"
    fig, ax = plt.subplots(figsize=(9, 3.4))
    width = 0.8 / max(len(names), 1)
    joints = list(OPENPOSE_NAMES)
    for i, n in enumerate(names):
        y = [result["versions"][n]["per_joint"][j].get(key) or np.nan for j in joints]
        ax.bar(np.arange(21) + i * width, y, width, label=n)
    ax.set_xticks(np.arange(21) + 0.4 - width / 2, joints, rotation=90, fontsize=6)
    ax.set_ylabel("median 2D error (crop px)" if result["ground_truth"] else "median reprojection error (image px)")
    ax.legend(fontsize=7)
    figs["per_joint"] = _png(fig)
    cams = sorted({c for n in names for c in result["versions"][n]["per_camera"]})
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(cams) + 2), 3.2))
    for i, n in enumerate(names):
        y = [result["versions"][n]["per_camera"].get(c, {}).get(key) or np.nan for c in cams]
        ax.bar(np.arange(len(cams)) + i * width, y, width, label=n)
    ax.set_xticks(np.arange(len(cams)) + 0.4 - width / 2, cams, rotation=45, fontsize=7)
    ax.set_ylabel("median 2D error (crop px)" if result["ground_truth"] else "median reprojection error (image px)")
    ax.legend(fontsize=7)
    figs["per_camera"] = _png(fig)
    return figs


SUMMARY_COLUMNS = [("name", "", 0), ("median_px", "median 2D error (px)", 2), ("pck_2px", "PCK@2", 3),
                   ("pck_5px", "PCK@5", 3), ("pck_10px", "PCK@10", 3), ("reprojection_median_px",
                   "reprojection (image px)", 2), ("outlier_share", "outlier share", 3), ("misses", "misses", 0),
                   ("labelled_joints", "labelled joints", 0)]


def render_label_report(result: dict) -> str:
    from .report import CSS
    from .report import _table as table

    def _table(rows, columns, caption=""):  # None (no such figure) shows as a dash
        return table([{k: (float("nan") if v is None else v) for k, v in r.items()} for r in rows], columns, caption)

    figs = _figures(result)
    title = "Label quality"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
             f"<style>{CSS}</style></head><body><h1>{title}</h1>",
             _table([{"k": "dataset index", "v": result["index"]}, {"k": "against", "v": result["against"] or "–"},
                     {"k": "frames compared", "v": result["frames"]},
                     {"k": "RANSAC threshold (image px)", "v": result["threshold_px"]}],
                    [("k", "", 0), ("v", "", 0)], "what was compared").replace("<table>", "<table class='meta'>"),
             "<p class='note'>Labelled joints: confidence &gt; 0 in a valid view of the version. 2D error and PCK "
             "against the ground truth in crop pixels (synthetic captures); reprojection error after RANSAC "
             "triangulation of the version's labels in image pixels, outlier share = labelled views the "
             "triangulation rejects, misses = joints of views with a crop but no label (what real captures "
             "show without ground truth).</p>"]
    vs = result["versions"]
    parts.append("<h2>Versions</h2>" + _table([{"name": n, **v["all"]} for n, v in vs.items()], SUMMARY_COLUMNS,
                                               "all captures"))
    for cap in sorted({c for v in vs.values() for c in v["per_capture"]}):
        parts.append(_table([{"name": n, **v["per_capture"][cap]} for n, v in vs.items() if cap in v["per_capture"]],
                            SUMMARY_COLUMNS, f"capture {cap}"))
    parts.append("<h2>Per camera</h2>" + f"<img alt='per camera' src='{figs['per_camera']}'>")
    for n, v in vs.items():
        parts.append(_table([{"name": c, **s} for c, s in v["per_camera"].items()], SUMMARY_COLUMNS, n))
    parts.append("<h2>Per joint</h2>" + f"<img alt='per joint' src='{figs['per_joint']}'>")
    if "reliability" in figs:
        parts.append("<h2>Reliability</h2>" + f"<img alt='reliability' src='{figs['reliability']}'>")
        for n, v in vs.items():
            parts.append(_table(v["reliability"], [("confidence", "confidence", 0), ("count", "count", 0),
                                                   ("median_px", "median 2D error (px)", 2),
                                                   ("pck_5px", "PCK@5", 3)], n))
    tri_rows = [{"name": n, "capture": c, **t} for n, v in vs.items() for c, t in v["triangulation"].items()]
    if tri_rows:
        parts.append("<h2>Triangulation</h2>" + _table(
            tri_rows, [("name", "version", 0), ("capture", "capture", 0), ("pa_mpjpe_mm", "PA-MPJPE (mm)", 2),
                       ("frames", "frames", 0), ("triangulated_share", "triangulated share", 3)],
            "RANSAC triangulation of each version's labels against the ground truth (mean over frames with every "
            "joint triangulated)"))
    if result["agreement"]:
        rows = [{**a, "pair": f"{a['a']} vs {a['b']}"} for a in result["agreement"]]
        parts.append("<h2>Agreement</h2>" + _table(
            rows, [("pair", "versions", 0), ("joints_both_label", "joints both label", 0),
                   ("median_distance_image_px", "median distance (image px)", 2), ("a_closer_share", "first closer", 3),
                   ("b_closer_share", "second closer", 3)], "on the views both label"))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_label_report(out_dir: str | Path, result: dict) -> dict[str, Path]:
    from model.atomic import atomic_write_text

    from .report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "labels_report.json", "html": out / "labels_report.html"}
    atomic_write_text(paths["json"], json.dumps(result, indent=1) + "\n")
    write_report(paths["html"], render_label_report(result))
    return paths


def format_summary(result: dict) -> str:
    lines = [f"{result['frames']} frames compared"]
    for n, v in result["versions"].items():
        a = v["all"]
        tri = v["triangulation"].get("all", {})
        lines.append(f"  {n}: median 2D error {a.get('median_px', '–')} px, PCK@5 {a.get('pck_5px', '–')}, "
                     f"reprojection {a.get('reprojection_median_px')} px, outlier share {a.get('outlier_share')}, "
                     f"misses {a['misses']}, triangulation PA-MPJPE {tri.get('pa_mpjpe_mm', '–')} mm")
    return "\n".join(lines)
