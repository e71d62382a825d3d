"""Frame offsets of unsynchronised videos, estimated from the hand (issue 22).

Camera ``c``'s offset ``o`` means capture frame ``k`` is its video frame ``k + o`` (format v1's
``cameras[].frame_offset``). With a calibrated rig, views of the same instant agree in 3D: the hand seen
by camera ``a`` in its frame ``k`` and by camera ``b`` in its frame ``k + d`` triangulate (two-view DLT)
with a small reprojection error when ``d`` is their relative offset (and, for motion along their epipolar
lines, at other shifts too). :func:`offset_curve` gives, per candidate shift, the median reprojection
error over the frames both see and the 21 joints;
:func:`estimate_offsets` combines every pair's curve (a pair only sees motion across its epipolar lines)
and reports each camera's curve against all the others. It needs a hand that moves through the scene:
a still hand agrees at every offset (the curves are then flat, and say so).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .triangulate import reprojection_errors, triangulate_dlt, triangulate_ransac


def offset_curve(P_ref: np.ndarray, P_c: np.ndarray, obs_ref: np.ndarray, obs_c: np.ndarray, max_offset: int,
                 min_frames: int = 3) -> dict[int, Optional[float]]:
    """{offset: median two-view reprojection error (px)} for offsets in ±``max_offset``; ``obs_*`` (F, J, 2)
    image points per video frame, NaN where unseen. None where fewer than ``min_frames`` frames pair up."""
    P = np.stack([P_ref, P_c])
    out: dict[int, Optional[float]] = {}
    for o in range(-max_offset, max_offset + 1):
        errs = []
        for k in range(len(obs_ref)):
            if not 0 <= k + o < len(obs_c):
                continue
            uv = np.stack([obs_ref[k], obs_c[k + o]])
            seen = np.all(np.isfinite(uv), axis=(0, 2))
            if seen.sum() < 6:
                continue
            X = triangulate_dlt(P, np.where(np.isfinite(uv), uv, 0.0), np.repeat(seen[None].astype(float), 2, 0))
            err = reprojection_errors(P, X, np.where(np.isfinite(uv), uv, 0.0))[:, seen]
            errs.append(float(np.median(err)))
        out[o] = round(float(np.median(errs)), 3) if len(errs) >= min_frames else None
    return out


def _pair_costs(P: np.ndarray, observations: np.ndarray, max_shift: int) -> dict[tuple[int, int], dict[int, float]]:
    """Every pair's :func:`offset_curve` over relative shifts ±``max_shift``, divided by its own median: a
    pair whose curve is flat (the hand moves along their epipolar lines, or not at all) weighs the same at
    every shift, so only informative pairs steer the solution."""
    costs = {}
    V = P.shape[0]
    for a in range(V):
        for b in range(a + 1, V):
            curve = offset_curve(P[a], P[b], observations[:, a], observations[:, b], max_shift)
            valid = {d: e for d, e in curve.items() if e is not None}
            if len(valid) >= 3:
                mid = max(float(np.median(list(valid.values()))), 1e-6)
                costs[(a, b)] = {d: e / mid for d, e in valid.items()}
    return costs


def _solve(costs: dict, V: int, reference: int, max_offset: int, start: np.ndarray, sweeps: int = 10) -> tuple:
    """Coordinate descent on the summed pair costs (offset of b minus offset of a per pair; a shift a pair
    never saw costs its median, 1)."""
    o = start.copy()

    def cam_cost(c: int, x: int) -> float:
        total = 0.0
        for (a, b), cost in costs.items():
            if c == a:
                total += cost.get(o[b] - x, 1.0)
            elif c == b:
                total += cost.get(x - o[a], 1.0)
        return total

    for _ in range(sweeps):
        changed = False
        for c in range(V):
            if c == reference:
                continue
            best = min(range(-max_offset, max_offset + 1), key=lambda x: (cam_cost(c, x), abs(x)))
            changed |= best != o[c]
            o[c] = best
        if not changed:
            break
    total = sum(cost.get(o[b] - o[a], 1.0) for (a, b), cost in costs.items())
    return o, total


def view_curve(P: np.ndarray, observations: np.ndarray, c: int, offsets: np.ndarray, max_offset: int,
               min_frames: int = 3) -> dict[int, Optional[float]]:
    """Camera ``c``'s curve against every other camera at its offset: {offset: median px between what ``c``
    sees in video frame ``k + offset`` and the hand the others see at the same instant (RANSAC-triangulated
    from their frames ``k + offsets[j]``)}, None where fewer than ``min_frames`` frames pair up."""
    F, V, J, _ = observations.shape
    others = [j for j in range(V) if j != c]
    hands = {}
    for k in range(-max_offset, F + max_offset):
        frames = [k + offsets[j] for j in others]
        if not all(0 <= f < F for f in frames):
            continue
        uv = np.stack([observations[f, j] for f, j in zip(frames, others)])
        seen = np.isfinite(uv).all(axis=2)
        if (seen.sum(axis=0) >= 2).sum() < 6:
            continue
        X = triangulate_ransac(P[others], np.where(np.isfinite(uv), uv, 0.0), seen.astype(float),
                               threshold_px=25.0).joints
        if np.isfinite(X).all(axis=1).sum() >= 6:
            hands[k] = X
    out: dict[int, Optional[float]] = {}
    for x in range(-max_offset, max_offset + 1):
        errs = []
        for k, X in hands.items():
            if not 0 <= k + x < F:
                continue
            mine = observations[k + x, c]
            ok = np.isfinite(mine).all(axis=1) & np.isfinite(X).all(axis=1)
            if ok.sum() >= 6:
                errs.append(float(np.median(reprojection_errors(P[c:c + 1], X[ok], mine[None, ok])[0])))
        out[x] = round(float(np.median(errs)), 3) if len(errs) >= min_frames else None
    return out


def estimate_offsets(P: np.ndarray, observations: np.ndarray, names: list[str], reference: int = 0,
                     max_offset: int = 10, min_contrast: float = 1.5) -> dict[str, dict]:
    """Per camera: its offset relative to ``reference`` (whose offset is 0), its curve, and how clearly the
    offset stands out. ``observations`` (F, V, J, 2) per video frame, NaN where unseen.

    1. Every pair of cameras gives a two-view curve over relative shifts (:func:`offset_curve`); a pair
       only sees motion across its epipolar lines and both cameras must see the hand, so no single pair
       (not even with the reference) settles an offset. The offsets minimise the pairs' summed, normalised
       curves (coordinate descent from no shift and from each camera's best shift against the reference).
    2. Each camera's curve against all the others at their offsets (:func:`view_curve`, px) is reported;
       ``contrast`` is its smallest value at least 2 frames from the offset over the offset's. An estimate
       with ``contrast`` below ``min_contrast``, or whose own curve's minimum lies more than a frame from it,
       is ``ambiguous``: reported, not to be applied."""
    V = len(names)
    costs = _pair_costs(P, observations, 2 * max_offset)
    starts = [np.zeros(V, dtype=int)]
    ref_best = np.zeros(V, dtype=int)
    for (a, b), cost in costs.items():
        if reference in (a, b):
            other = b if a == reference else a
            inside = {d: e for d, e in cost.items() if abs(d) <= max_offset}
            if inside:
                d = min(inside, key=inside.get)
                ref_best[other] = d if a == reference else -d
    starts.append(ref_best)
    offsets, _ = min((_solve(costs, V, reference, max_offset, s) for s in starts), key=lambda r: r[1])
    # cameras whose offsets the pairs tie to the reference's (directly or through other cameras): a group
    # with no pair to the rest could shift as a whole at no cost, so its offsets mean nothing
    linked, todo = {reference}, [reference]
    while todo:
        m = todo.pop()
        for a, b in costs:
            for x, y in ((a, b), (b, a)):
                if x == m and y not in linked:
                    linked.add(y)
                    todo.append(y)
    out: dict[str, dict] = {names[reference]: {"offset": 0, "reference": True}}
    for c in range(V):
        if c == reference:
            continue
        if c not in linked:
            out[names[c]] = {"offset": None, "curve": {}, "reason": "no camera pair ties it to the reference "
                             f"{names[reference]} (the hand is not seen in enough frames both cameras share)"}
            continue
        if V >= 3:
            curve = view_curve(P, observations, c, offsets, max_offset)
        else:  # two cameras: the pair's own curve (no third view to triangulate against)
            curve = offset_curve(P[reference], P[c], observations[:, reference], observations[:, c], max_offset)
        valid = {o: e for o, e in curve.items() if e is not None}
        if offsets[c] not in valid:
            out[names[c]] = {"offset": None, "curve": curve,
                             "reason": f"the other cameras' hand and this camera's do not meet in enough frames at "
                             f"the offset the pairs give ({int(offsets[c]):+d})"}
            continue
        best = int(offsets[c])
        far = [e for o, e in valid.items() if abs(o - best) >= 2]
        contrast = round(min(far) / max(valid[best], 1e-6), 2) if far else None
        own_min = min(valid, key=valid.get)
        out[names[c]] = {"offset": best, "error_px": valid[best], "contrast": contrast, "curve": curve,
                         "ambiguous": bool(contrast is None or contrast < min_contrast or abs(own_min - best) > 1)}
    return out


def format_offsets(est: dict) -> str:
    lines = []
    for name, e in est.items():
        if e.get("reference"):
            lines.append(f"  {name}: reference")
            continue
        if e["offset"] is None:
            lines.append(f"  {name}: not estimated ({e['reason']})")
            continue
        curve = "  ".join(f"{o:+d}:{v:.1f}" for o, v in e["curve"].items() if v is not None)
        flag = " AMBIGUOUS, not applied" if e.get("ambiguous") else ""
        lines.append(f"  {name}: offset {e['offset']:+d} ({e['error_px']:.2f} px; next best x{e['contrast']}){flag}"
                     f" | {curve}")
    return "\n".join(lines)
