"""The evaluation report: one self-contained static HTML page (figures embedded as PNG data URIs).

Sections: what was evaluated (checkpoint, dataset, labeler, code version); the metric table per
mode and baseline; per-view tables; error-versus-threshold (PCK) curves; 2D overlays of pseudo
label, prediction and ground truth for the best and worst samples; 3D skeleton plots of the same
samples; training curves from the run's ``metrics.jsonl``; the quarantine counts of data
preparation. :func:`write_report` writes it atomically; it opens in any browser without a server
or network.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from model.hand_model import OPENPOSE_PARENTS  # noqa: E402
from model.alignment import apply_similarity, similarity_procrustes  # noqa: E402
from model.evaluation import camera_ground_truth, ranking_error  # noqa: E402

from .capture import atomic_write_bytes  # noqa: E402
from .shards import ShardReader  # noqa: E402

BONES = [(p, j) for j, p in enumerate(OPENPOSE_PARENTS) if p >= 0]  # OpenPose order
COLORS = {"pseudo label": "#e8590c", "prediction": "#2b8a3e", "ground truth": "#1971c2"}
MODE_TITLES = {"single": "single view", "interaction": "interaction (multi-view, no extrinsics)",
               "fusion": "fusion (multi-view, with extrinsics)"}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(x, digits=1) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return html.escape(str(x))
    if isinstance(x, int):
        return str(x)
    return "–" if not math.isfinite(x) else f"{x:.{digits}f}"


def _table(rows: list[dict], columns: list[tuple[str, str, int]], caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(key, ''), d)}</td>" for key, _, d in columns) + "</tr>"
                   for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


METRIC_COLUMNS = [("name", "", 0), ("pa_mpjpe_mm", "PA-MPJPE (mm)", 1), ("nmpjpe_mm", "NMPJPE (mm)", 1),
                  ("mpjpe_mm", "MPJPE (mm)", 1), ("auc_0_50mm", "AUC 0–50 mm", 3), ("error_2d_px", "2D error (px)", 1),
                  ("count", "count", 0)]


def pck_figure(metrics: dict) -> str:
    t = metrics["pck_thresholds_mm"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, curve in metrics["pck"].items():
        style = "--" if name.startswith("baseline/") or name == "reference" else "-"
        ax.plot(t, curve, style, label=name.replace("baseline/", "baseline: "))
    ax.set_xlabel("threshold (mm), Procrustes-aligned joints")
    ax.set_ylabel("PCK")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _skeleton_2d(ax, uv: np.ndarray, color: str, label: str) -> None:
    if not np.isfinite(uv).all():
        return
    for a, b in BONES:
        ax.plot(uv[[a, b], 0], uv[[a, b], 1], color=color, lw=1.2)
    ax.scatter(uv[:, 0], uv[:, 1], s=6, color=color, label=label)


def overlay_figure(crops: np.ndarray, rec, i: int, views: list[int], names: list[str], title: str) -> str:
    fig, axes = plt.subplots(1, len(views), figsize=(2.4 * len(views), 2.7), squeeze=False)
    for ax, v in zip(axes[0], views):
        ax.imshow(crops[v])
        _skeleton_2d(ax, rec.keypoints[i, v], COLORS["pseudo label"], "pseudo label")
        _skeleton_2d(ax, rec.preds["interaction_2d"][i, v], COLORS["prediction"], "prediction")
        _skeleton_2d(ax, rec.gt_2d[i, v], COLORS["ground truth"], "ground truth")
        ax.set_xlim(0, crops.shape[2])
        ax.set_ylim(crops.shape[1], 0)
        ax.set_title(names[v], fontsize=8)
        ax.axis("off")
    axes[0][0].legend(fontsize=6, loc="lower left")
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def skeleton_3d_figure(pred: np.ndarray, gt: np.ndarray, title: str) -> str:
    """Prediction similarity-aligned onto the ground truth (millimetres), three views of the same hand."""
    import torch
    P, G = torch.from_numpy(pred[None].astype(np.float64)), torch.from_numpy(gt[None].astype(np.float64))
    s, R, t = similarity_procrustes(P, G)
    aligned = apply_similarity(P, s, R, t)[0].numpy() * 1000
    gt = gt * 1000
    fig = plt.figure(figsize=(7.5, 2.8))
    for k, (elev, azim) in enumerate(((20, -60), (90, -90), (0, 0))):
        ax = fig.add_subplot(1, 3, k + 1, projection="3d")
        for pts, color, label in ((gt, COLORS["ground truth"], "ground truth"),
                                  (aligned, COLORS["prediction"], "prediction (PA-aligned)")):
            for a, b in BONES:
                ax.plot(*pts[[a, b]].T, color=color, lw=1.3)
            ax.scatter(*pts.T, s=5, color=color, label=label)
        c = gt.mean(0)
        r = max(np.ptp(gt, axis=0).max(), 1.0) / 2 + 10
        ax.set_xlim(c[0] - r, c[0] + r)
        ax.set_ylim(c[1] - r, c[1] + r)
        ax.set_zlim(c[2] - r, c[2] + r)
        ax.view_init(elev=elev, azim=azim)
        ax.tick_params(labelsize=5)
        if k == 0:
            ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(title, fontsize=9)
    return _png(fig)


VALIDATION_PANELS = ("label_signal", "label_2d_px/interaction", "cross_view_mm", "pa_mpjpe_mm/single",
                     "pa_mpjpe_mm/fusion")


def training_figure(metrics_jsonl: Path) -> Optional[str]:
    """The training losses per step and, where the run has a ``validation.jsonl`` beside it, the
    validation signals on held-out frames (the step of checkpoint-best.pt marked)."""
    rows = [json.loads(x) for x in metrics_jsonl.read_text().splitlines() if x.strip()]
    if not rows:
        return None
    keys = [k for k in ("total", "joint_2d/single", "joint_2d/interaction", "consistency", "distillation")
            if k in rows[0]]
    val_path = Path(metrics_jsonl).parent / "validation.jsonl"
    val = [json.loads(x) for x in val_path.read_text().splitlines() if x.strip()] if val_path.exists() else []
    vkeys = [k for k in VALIDATION_PANELS if val and any(np.isfinite(r.get(k, np.nan)) for r in val)]
    ncol = len(keys) + len(vkeys)
    fig, axes = plt.subplots(1, ncol, figsize=(2.6 * ncol, 2.4), squeeze=False)
    for ax, k in zip(axes[0][len(keys):], vkeys):
        ax.plot([r["step"] for r in val], [r.get(k, np.nan) for r in val], color="#2b8a3e", marker="o", ms=2.5, lw=1)
        best = [r["step"] for r in val if r.get("best")]
        if best:
            ax.axvline(best[-1], color="k", ls=":", lw=0.8)
        ax.set_title(f"held-out: {k}", fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    steps = np.array([r.get("step", i + 1) for i, r in enumerate(rows)])
    w = max(1, len(rows) // 50)
    for ax, k in zip(axes[0], keys):
        y = np.array([r[k] for r in rows], float)
        ax.plot(steps, y, color="#adb5bd", lw=0.6)
        if len(y) >= w > 1:
            ax.plot(steps[w - 1:], np.convolve(y, np.ones(w) / w, mode="valid"), color="#1864ab", lw=1.2)
        ax.set_title(k, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    return _png(fig)


def _pick_views(mask_row: np.ndarray, limit: int = 4) -> list[int]:
    valid = np.flatnonzero(mask_row)
    if len(valid) <= limit:
        return valid.tolist()
    return valid[np.linspace(0, len(valid) - 1, limit).round().astype(int)].tolist()


def sample_sections(ev, count: int = 2) -> list[dict]:
    """Best and worst samples by the ranking error, with their overlay and 3D figures."""
    rec = ev.records
    rank = ranking_error(ev.errors)
    finite = np.flatnonzero(np.isfinite(rank))
    if finite.size == 0:
        return []
    order = finite[np.argsort(rank[finite], kind="stable")]
    picks = [("best", int(i)) for i in order[:count]] + [("worst", int(i)) for i in order[::-1][:count]
                                                        if int(i) not in order[:count]]
    names = rec.camera_names or [f"view{v}" for v in range(rec.view_mask.shape[1])]
    gt_cam = camera_ground_truth(rec.gt_world, rec.extrinsics)
    out = []
    for kind, i in picks:
        ref = ev.samples[i]
        with ShardReader(ref.shard) as r:
            crops = r[ref.index].crops
        views = _pick_views(rec.view_mask[i])
        title = f"{kind}: frame {ref.frame_id} ({Path(ref.shard).name} #{ref.index}), error {rank[i] * 1000:.1f} mm"
        if np.isfinite(rec.preds["fusion"][i]).all():
            gt = rec.gt_world[i] - rec.gt_world[i, 9]
            pred3d, where = rec.preds["fusion"][i], "fusion, world frame"
        else:
            v0 = int(np.flatnonzero(rec.view_mask[i])[0])
            gt, pred3d, where = gt_cam[i, v0], rec.preds["reference"][i], f"views aligned to {names[v0]}"
        out.append({"kind": kind, "title": title,
                    "overlay": overlay_figure(crops, rec, i, views, names, title),
                    "skeleton": skeleton_3d_figure(pred3d, gt, f"{kind}: {where}")})
    return out


CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#212529;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #dee2e6;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.9em}caption{text-align:left;font-weight:600;padding:.2em 0}
th,td{border:1px solid #dee2e6;padding:.25em .6em;text-align:right}th{background:#f1f3f5}
td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:.4em 0}
.meta td{text-align:left}.note{color:#495057;font-size:.9em}
"""


def render_report(ev, provenance: dict, dataset_index: Optional[dict] = None,
                  training_metrics: Optional[Path] = None, title: str = "HaMuCo evaluation") -> str:
    m = ev.metrics
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    meta = [{"k": k, "v": v} for k, v in provenance.items() if not isinstance(v, (dict, list))]
    parts.append(_table(meta, [("k", "", 0), ("v", "", 0)], "what was evaluated").replace("<table>",
                                                                                         "<table class='meta'>"))
    rows = [{"name": MODE_TITLES.get(k, k), **v} for k, v in m["modes"].items()]
    rows += [{"name": f"untrained: {MODE_TITLES.get(k, k)}", **v} for k, v in m.get("untrained", {}).get("modes", {}).items()]
    rows += [{"name": f"baseline: {k}", **v} for k, v in m["baselines"].items()]
    parts.append("<h2>Metrics</h2>" + _table(rows, METRIC_COLUMNS, f"{m['samples']} samples, "
                                              f"{m['valid_views']} valid views of {m['samples'] * m['views']}"))
    parts.append("<p class='note'>Joint errors are root-relative (middle MCP). MPJPE: root-aligned; NMPJPE: "
                 "root-aligned and scaled by the wrist–middle-MCP bone; PA-MPJPE: similarity Procrustes; AUC of "
                 "PCK over 0–50 mm on Procrustes-aligned joints; 2D error in crop pixels. Baselines come from the "
                 "same shards: the pseudo labels' own 2D error, their confidence-weighted DLT triangulation with "
                 "the calibrated cameras, and the views aligned onto a reference view without extrinsics.</p>")
    for mode, vrows in m["per_view"].items():
        parts.append(_table([{"name": r["view"], **r} for r in vrows], METRIC_COLUMNS,
                            f"per view: {MODE_TITLES.get(mode, mode)}"))
    parts.append("<h2>Error versus threshold</h2>" + f"<img alt='PCK curves' src='{pck_figure(m)}'>")
    samples = sample_sections(ev)
    if samples:
        parts.append("<h2>Best and worst samples</h2><p class='note'>Orange: pseudo label; green: prediction "
                     "(interaction branch); blue: ground truth.</p>")
        for s in samples:
            parts.append(f"<h3>{html.escape(s['title'])}</h3><img alt='2D overlay' src='{s['overlay']}'>"
                         f"<img alt='3D skeleton' src='{s['skeleton']}'>")
    if training_metrics is not None and Path(training_metrics).is_file():
        fig = training_figure(Path(training_metrics))
        if fig:
            parts.append(f"<h2>Training curves</h2><img alt='training curves' src='{fig}'>")
    if dataset_index and dataset_index.get("quarantine"):
        qrows = []
        for q in dataset_index["quarantine"]:
            qrows.append({"capture": q["capture"], "views": q["views"],
                          **{k: v for k, v in q.get("counts", {}).items()}})
        cols = [("capture", "capture", 0), ("views", "views", 0)]
        cols += [(k, k.replace("_", " "), 0) for k in qrows[0] if k not in ("capture", "views")]
        parts.append("<h2>Data preparation: quarantine</h2>" + _table(qrows, cols, "views per outcome"))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path, document: str) -> Path:
    data = document.encode()
    atomic_write_bytes(Path(path), lambda fh: fh.write(data))
    return Path(path)
