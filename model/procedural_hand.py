"""An open, procedurally generated right hand in the MANO file format.

The licensed MANO file cannot ship with this project, so every feature and test runs on this
model when no MANO file is configured. It is built by code, deterministically:

* a kinematic tree in MANO order (wrist; index, middle, pinky, ring, thumb × 3 joints),
  adult bone lengths (palm ~9 cm, hand ~19 cm);
* a closed skin: overlapping watertight tubes (palm, four fingers, thumb) with rounded caps,
  elliptical finger cross-sections and a rounded-rectangle palm;
* smooth linear-blend skinning weights (smoothstep transitions across each joint);
* ten linear shape blend shapes, the finite-difference derivatives of the generator with
  respect to ten proportions (size, finger length, palm width, ...);
* no pose correctives (``posedirs`` are zero) and identity PCA hand components.

The result is a plain dict with MANO's keys that :class:`model.hand_model.HandModel` loads
exactly like a converted MANO file, plus ``tip_vertex_ids`` (thumb, index, middle, ring,
pinky fingertip vertices). Hand frame of the rest pose: fingers along +y, thumb towards +x,
palm (volar side) facing +z, wrist at the origin, metres.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import lru_cache

import numpy as np

from .geometry import normalize

MANO_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
# MANO joint indices of each finger's three joints, proximal to distal.
FINGER_JOINTS = {
    "index": (1, 2, 3),
    "middle": (4, 5, 6),
    "pinky": (7, 8, 9),
    "ring": (10, 11, 12),
    "thumb": (13, 14, 15),
}
TIP_ORDER = ("thumb", "index", "middle", "ring", "pinky")
NUM_BETAS = 10


@dataclass(frozen=True)
class HandProportions:
    """The generator's free parameters (lengths in metres, ratios, radians)."""

    size: float = 1.0
    palm_length: float = 0.090
    palm_width: float = 0.084
    palm_thickness: float = 0.029
    finger_length: float = 1.0
    finger_thickness: float = 1.0
    thumb_length: float = 1.0
    finger_spread: float = 0.0
    pinky_length: float = 1.0
    index_length: float = 1.0


# One shape coefficient per proportion: β_k = 1 adds this much to the field.
SHAPE_STEPS = (
    ("size", 0.05),
    ("finger_length", 0.05),
    ("palm_width", 0.004),
    ("palm_length", 0.004),
    ("finger_thickness", 0.07),
    ("thumb_length", 0.06),
    ("palm_thickness", 0.0025),
    ("finger_spread", 0.25),
    ("pinky_length", 0.06),
    ("index_length", 0.04),
)
assert len(SHAPE_STEPS) == NUM_BETAS

# Per finger: MCP (x, y) for the default palm, splay angle (rad, + towards the thumb),
# bone lengths MCP→PIP, PIP→DIP, DIP→tip, and radii at MCP, PIP, DIP.
_FINGERS = {
    "index": ((0.026, 0.087), 0.09, (0.040, 0.024, 0.022), (0.0098, 0.0090, 0.0081)),
    "middle": ((0.006, 0.090), 0.02, (0.044, 0.028, 0.024), (0.0101, 0.0092, 0.0083)),
    "ring": ((-0.0135, 0.086), -0.06, (0.041, 0.027, 0.023), (0.0095, 0.0087, 0.0079)),
    "pinky": ((-0.031, 0.077), -0.15, (0.032, 0.020, 0.020), (0.0085, 0.0078, 0.0071)),
}
_THUMB_CMC = (0.019, 0.021, 0.008)
_THUMB_DIR = (0.46, 0.84, 0.30)
_THUMB_BONES = (0.040, 0.031, 0.027)
_THUMB_RADII = (0.0155, 0.0118, 0.0104)

_FINGER_RING = 16
_PALM_RING = 28


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _step(s: np.ndarray, centre: float, width: float) -> np.ndarray:
    """0 before centre - width, 1 after centre + width, smooth in between."""
    return _smoothstep((np.asarray(s) - centre + width) / (2.0 * width))


class MeshBuilder:
    """Accumulates closed tube meshes with per-vertex skinning weights."""

    def __init__(self) -> None:
        self.vertices: list[np.ndarray] = []
        self.faces: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self.count = 0

    def add_tube(
        self,
        centres: np.ndarray,
        tangents: np.ndarray,
        normals: np.ndarray,
        half_widths: np.ndarray,
        half_depths: np.ndarray,
        ring_weights: np.ndarray,
        n_ring: int,
        cap_start: float,
        cap_end: float,
        exponent: float = 2.0,
        y_offsets=None,
    ) -> dict:
        """A closed tube through ring centres with rounded caps of the given depths.

        Rings lie in the plane spanned by the binormal b = n × t and the normal n; the
        frame (b, n, t) is right-handed, so the faces below wind outwards. Returns the
        vertex indices of every ring and of the two apexes.
        """
        centres = np.asarray(centres, float)
        t = normalize(tangents)
        n = normalize(normals - np.sum(normals * t, axis=1, keepdims=True) * t)
        b = np.cross(n, t)
        phi = 2.0 * np.pi * np.arange(n_ring) / n_ring
        c, s = np.cos(phi), np.sin(phi)
        # superellipse: exponent 2 is an ellipse, larger is a rounded rectangle
        cx = np.sign(c) * np.abs(c) ** (2.0 / exponent)
        sz = np.sign(s) * np.abs(s) ** (2.0 / exponent)

        rings_c, rings_t, rings_n, rings_b, rings_w, rings_d, rings_wt = [], [], [], [], [], [], []
        n_cap = 4
        # start cap rings (shrinking towards the start apex), then the body, then the end cap
        for k in range(n_cap, 0, -1):
            a = 0.5 * np.pi * k / (n_cap + 1)
            rings_c.append(centres[0] - t[0] * cap_start * np.sin(a))
            rings_t.append(t[0]); rings_n.append(n[0]); rings_b.append(b[0])
            rings_w.append(half_widths[0] * np.cos(a)); rings_d.append(half_depths[0] * np.cos(a))
            rings_wt.append(ring_weights[0])
        body_first = len(rings_c)
        for i in range(len(centres)):
            rings_c.append(centres[i]); rings_t.append(t[i]); rings_n.append(n[i]); rings_b.append(b[i])
            rings_w.append(half_widths[i]); rings_d.append(half_depths[i]); rings_wt.append(ring_weights[i])
        for k in range(1, n_cap + 1):
            a = 0.5 * np.pi * k / (n_cap + 1)
            rings_c.append(centres[-1] + t[-1] * cap_end * np.sin(a))
            rings_t.append(t[-1]); rings_n.append(n[-1]); rings_b.append(b[-1])
            rings_w.append(half_widths[-1] * np.cos(a)); rings_d.append(half_depths[-1] * np.cos(a))
            rings_wt.append(ring_weights[-1])

        R = len(rings_c)
        rc, rb, rn = np.array(rings_c), np.array(rings_b), np.array(rings_n)
        rw, rd = np.array(rings_w), np.array(rings_d)
        ring_verts = (
            rc[:, None, :]
            + (rw[:, None] * cx[None, :])[..., None] * rb[:, None, :]
            + (rd[:, None] * sz[None, :])[..., None] * rn[:, None, :]
        )
        if y_offsets is not None:  # palm top follows the knuckle arc
            ring_verts = y_offsets(ring_verts, np.arange(R) - body_first)
        start_apex = centres[0] - t[0] * cap_start
        end_apex = centres[-1] + t[-1] * cap_end
        verts = np.concatenate([start_apex[None], ring_verts.reshape(-1, 3), end_apex[None]], 0)

        base = self.count
        ring_index = base + 1 + np.arange(R * n_ring).reshape(R, n_ring)
        start_id, end_id = base, base + 1 + R * n_ring
        j = np.arange(n_ring)
        jn = (j + 1) % n_ring
        faces = []
        for r in range(R - 1):
            a, bb = ring_index[r, j], ring_index[r, jn]
            cc, d = ring_index[r + 1, j], ring_index[r + 1, jn]
            faces.append(np.stack([a, bb, cc], 1))
            faces.append(np.stack([bb, d, cc], 1))
        faces.append(np.stack([ring_index[0, jn], ring_index[0, j], np.full(n_ring, start_id)], 1))
        faces.append(np.stack([ring_index[-1, j], ring_index[-1, jn], np.full(n_ring, end_id)], 1))

        wt = np.array(rings_wt)
        weights = np.concatenate([wt[:1], np.repeat(wt, n_ring, axis=0), wt[-1:]], 0)
        self.vertices.append(verts)
        self.faces.append(np.concatenate(faces, 0))
        self.weights.append(weights)
        self.count += len(verts)
        return {"rings": ring_index[body_first:body_first + len(centres)], "start": start_id, "end": end_id}

    def result(self):
        return (np.concatenate(self.vertices), np.concatenate(self.faces).astype(np.int64),
                np.concatenate(self.weights))


def _ring_positions(base: list[float], knots: list[float], sz: float) -> np.ndarray:
    """Ring positions along a finger: the base ones plus a dense band across each joint,
    so that every skinning transition spreads over several rings."""
    around = np.array([-0.006, -0.003, 0.0, 0.003, 0.006]) * sz
    return np.unique(np.round(np.concatenate([base, (np.array(knots)[:, None] + around).ravel()]), 9))


def _chain_weights(s: np.ndarray, joints: tuple[int, ...], knots: list[float], widths: list[float]) -> np.ndarray:
    """Blend weights along a finger: parent (wrist) before knots[0], then joint k."""
    w = np.zeros((len(s), 16))
    steps = [_step(s, k, wd) for k, wd in zip(knots, widths)]
    w[:, 0] = 1.0 - steps[0]
    for i, jnt in enumerate(joints):
        nxt = steps[i + 1] if i + 1 < len(steps) else 0.0
        w[:, jnt] = steps[i] - nxt
    return w


def build_hand(props: HandProportions = HandProportions()) -> dict:
    """Generate the rest-pose mesh, joints and skinning for the given proportions."""
    p = props
    sz = p.size
    pl = p.palm_length / 0.090
    pw = p.palm_width / 0.084
    mb = MeshBuilder()
    joints = np.zeros((16, 3))
    joint_rings: dict[int, np.ndarray] = {}
    tips: dict[str, int] = {}
    volar = np.array([0.0, 0.0, 1.0])

    mcp_xy = {}
    for name, ((x, y), splay, bones, radii) in _FINGERS.items():
        length = p.finger_length * {"pinky": p.pinky_length, "index": p.index_length}.get(name, 1.0)
        ang = splay * (1.0 + p.finger_spread)
        d = np.array([np.sin(ang), np.cos(ang), 0.0])
        mcp = np.array([x * pw, y * pl, 0.0]) * sz
        mcp_xy[name] = mcp[:2]
        L = np.array(bones) * length * sz
        r = np.array(radii) * p.finger_thickness * sz
        ids = FINGER_JOINTS[name]
        knots = [0.0, L[0], L[0] + L[1]]
        # ring positions along the chain (s = distance from the MCP)
        tip_cap = r[2] * 0.9
        s_rings = _ring_positions([-0.016 * sz, -0.008 * sz, L[0] / 2, knots[1] + L[1] / 2,
                                   knots[2] + L[2] - tip_cap], knots, sz)
        hw = np.interp(s_rings, [0.0, knots[1], knots[2], knots[2] + L[2]],
                       [r[0], r[1] * 1.04, r[2], r[2] * 0.9])
        hw = np.where(s_rings < 0, r[0] * 1.05, hw)
        centres = mcp[None] + s_rings[:, None] * d[None]
        wts = _chain_weights(s_rings, ids, knots, [0.0075 * sz] * 3)
        tube = mb.add_tube(centres, np.repeat(d[None], len(s_rings), 0), np.repeat(volar[None], len(s_rings), 0),
                           hw, hw * 0.84, wts, _FINGER_RING, cap_start=0.004 * sz, cap_end=tip_cap)
        for jnt, ring_pos in zip(ids, np.searchsorted(s_rings, knots)):
            joints[jnt] = centres[ring_pos]
            joint_rings[jnt] = tube["rings"][ring_pos]
        tips[name] = tube["end"]

    # thumb: CMC inside the thenar eminence, then MCP, IP and tip
    d = normalize(np.array(_THUMB_DIR))
    cmc = np.array(_THUMB_CMC) * np.array([pw, pl, p.palm_thickness / 0.029]) * sz
    L = np.array(_THUMB_BONES) * p.thumb_length * p.finger_length ** 0.5 * sz
    r = np.array(_THUMB_RADII) * p.finger_thickness * sz
    knots = [0.0, L[0], L[0] + L[1]]
    tip_cap = r[2] * 0.9
    s_rings = _ring_positions([-0.014 * sz, -0.010 * sz, L[0] / 2, knots[1] + L[1] / 2,
                               knots[2] + L[2] - tip_cap], knots, sz)
    hw = np.interp(s_rings, [-0.014 * sz, 0.0, L[0] / 2, knots[1], knots[2], knots[2] + L[2]],
                   [r[0] * 0.8, r[0], r[0] * 0.95, r[1], r[2], r[2] * 0.9])
    centres = cmc[None] + s_rings[:, None] * d[None]
    thumb_volar = normalize(np.array([-0.55, 0.0, 0.85]))
    wts = _chain_weights(s_rings, FINGER_JOINTS["thumb"], knots, [0.012 * sz, 0.0075 * sz, 0.0075 * sz])
    tube = mb.add_tube(centres, np.repeat(d[None], len(s_rings), 0), np.repeat(thumb_volar[None], len(s_rings), 0),
                       hw, hw * 0.82, wts, _FINGER_RING, cap_start=0.006 * sz, cap_end=tip_cap)
    for jnt, ring_pos in zip(FINGER_JOINTS["thumb"], np.searchsorted(s_rings, knots)):
        joints[jnt] = centres[ring_pos]
        joint_rings[jnt] = tube["rings"][ring_pos]
    tips["thumb"] = tube["end"]

    # palm: rounded-rectangle sections from below the wrist to the knuckles
    order = ["index", "middle", "ring", "pinky"]
    knuckle_x = np.array([mcp_xy[f][0] for f in order])
    knuckle_y = np.array([mcp_xy[f][1] for f in order])
    top_y = float(np.min(knuckle_y)) - 0.004 * sz
    ys = np.array([-0.012, -0.006, 0.0, 0.012, 0.026, 0.040, 0.054]) * sz * pl
    ys = np.concatenate([ys, np.linspace(0.062 * sz * pl, top_y, 3)])
    u = np.clip(ys / (0.055 * sz * pl), 0.0, 1.0)
    width = np.interp(ys, np.array([-0.012, 0.0, 0.05, 0.09]) * sz * pl,
                      np.array([0.056, 0.060, 0.084, 0.082]) * pw * sz)
    thick = np.interp(ys, np.array([-0.012, 0.0, 0.045, 0.09]) * sz * pl,
                      np.array([0.024, 0.026, p.palm_thickness, p.palm_thickness * 0.9]) * sz)
    xc = u * float(np.mean(knuckle_x[[0, 3]]))
    centres = np.stack([xc, ys, np.zeros_like(ys)], 1)
    topness = _smoothstep((ys - (top_y - 0.022 * sz)) / (0.022 * sz))

    def knuckle_arc(ring_verts: np.ndarray, body_ring: np.ndarray) -> np.ndarray:
        out = ring_verts.copy()
        idx = np.clip(body_ring, 0, len(ys) - 1)
        lift = np.interp(out[..., 0], knuckle_x[::-1], knuckle_y[::-1]) - np.min(knuckle_y)
        weight = np.where(body_ring >= 0, topness[idx], 0.0)
        weight = np.where(body_ring >= len(ys), 1.0, weight)
        out[..., 1] += weight[:, None] * lift * 0.8
        return out

    # palm skinning: wrist, blending into the nearest finger's MCP joint near the knuckles
    w_palm = np.zeros((len(ys), 16))
    w_palm[:, 0] = 1.0
    palm = mb.add_tube(centres, np.repeat([[0.0, 1.0, 0.0]], len(ys), 0), np.repeat(volar[None], len(ys), 0),
                       width / 2, thick / 2, w_palm, _PALM_RING, cap_start=0.010 * sz, cap_end=0.006 * sz,
                       exponent=3.2, y_offsets=knuckle_arc)
    joint_rings[0] = palm["rings"][2]  # the y = 0 section
    joints[0] = centres[2]

    vertices, faces, weights = mb.result()
    # palm vertices near the knuckles follow their finger a little (smooth in x)
    palm_ids = np.arange(palm["start"], palm["end"] + 1)
    pv = vertices[palm_ids]
    near_top = 0.45 * _smoothstep((pv[:, 1] - (top_y - 0.018 * sz)) / (0.018 * sz))
    g = np.exp(-0.5 * ((pv[:, :1] - knuckle_x[None]) / (0.010 * sz)) ** 2)
    g = g / np.maximum(g.sum(1, keepdims=True), 1e-12)
    weights[palm_ids] = 0.0
    weights[palm_ids, 0] = 1.0 - near_top
    for k, f in enumerate(order):
        weights[palm_ids, FINGER_JOINTS[f][0]] += near_top * g[:, k]

    J_regressor = np.zeros((16, len(vertices)))
    for j, ring in joint_rings.items():
        J_regressor[j, ring] = 1.0 / len(ring)
    return {
        "vertices": vertices,
        "faces": faces,
        "weights": weights,
        "joints": joints,
        "J_regressor": J_regressor,
        "tip_vertex_ids": np.array([tips[f] for f in TIP_ORDER], dtype=np.int64),
    }


def shape_proportions(betas: np.ndarray, base: HandProportions = HandProportions()) -> HandProportions:
    """Proportions reached by moving ``base`` along the ten shape coefficients."""
    values = {f.name: getattr(base, f.name) for f in fields(base)}
    for beta, (name, step) in zip(np.asarray(betas, float), SHAPE_STEPS):
        values[name] += beta * step
    return replace(base, **values)


@lru_cache(maxsize=4)
def _procedural_cached(props: HandProportions) -> tuple:
    rest = build_hand(props)
    h = 0.05
    dirs = []
    for k in range(NUM_BETAS):
        e = np.zeros(NUM_BETAS)
        e[k] = h
        plus = build_hand(shape_proportions(e, props))["vertices"]
        minus = build_hand(shape_proportions(-e, props))["vertices"]
        dirs.append((plus - minus) / (2 * h))
    shapedirs = np.stack(dirs, axis=-1)
    V = len(rest["vertices"])
    kintree = np.array([[2 ** 32 - 1] + list(MANO_PARENTS[1:]), list(range(16))], dtype=np.int64)
    data = {
        "v_template": rest["vertices"],
        "f": rest["faces"],
        "J_regressor": rest["J_regressor"],
        "weights": rest["weights"],
        "kintree_table": kintree,
        "shapedirs": shapedirs,
        "posedirs": np.zeros((V, 3, 135)),
        "hands_components": np.eye(45),
        "hands_mean": np.zeros(45),
        "tip_vertex_ids": rest["tip_vertex_ids"],
    }
    return tuple(sorted(data.items()))


def procedural_hand_model(props: HandProportions = HandProportions()) -> dict[str, np.ndarray]:
    """The procedural right hand as a MANO-format dict (fresh copies of every array)."""
    return {k: np.array(v, copy=True) for k, v in _procedural_cached(props)}
