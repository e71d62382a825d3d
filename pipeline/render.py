"""A small vectorized software rasterizer for synthetic captures (NumPy + OpenCV only).

Triangles are scan-converted all at once: every (triangle, pixel-in-bounding-box) pair is
enumerated with array arithmetic, barycentric coordinates decide coverage, and a sort picks
the nearest fragment per pixel. Colours are Gouraud-shaded per vertex. Pixel centres lie at
integer coordinates (OpenCV's convention), so projections from ``K`` land on the pixels
they name.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from model.geometry import normalize

LABEL_BACKGROUND, LABEL_HAND, LABEL_FOREARM, LABEL_OCCLUDER = 0, 1, 2, 3


@dataclass
class RenderBuffers:
    color: np.ndarray  # (H, W, 3) float, BGR in [0, 1]
    depth: np.ndarray  # (H, W) camera depth in metres, inf where empty
    label: np.ndarray  # (H, W) uint8 label of the nearest surface, 0 where empty


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (V, 3)."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    idx = faces.ravel()
    per_corner = np.repeat(fn, 3, axis=0)
    vn = np.stack([np.bincount(idx, per_corner[:, k], minlength=len(vertices)) for k in range(3)], 1)
    return normalize(vn)


def rasterize(uv: np.ndarray, depth: np.ndarray, faces: np.ndarray, colors: np.ndarray,
              face_labels: np.ndarray, height: int, width: int, near: float = 1e-3) -> RenderBuffers:
    """Z-buffered rasterization of a triangle mesh already projected to pixels."""
    tri = uv[faces]  # (F, 3, 2)
    tz = depth[faces]
    lo = np.ceil(tri.min(1)).astype(np.int64)
    hi = np.floor(tri.max(1)).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [width - 1, height - 1])
    nx = hi[:, 0] - lo[:, 0] + 1
    ny = hi[:, 1] - lo[:, 1] + 1
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    det = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    ok = (nx > 0) & (ny > 0) & np.all(tz > near, axis=1) & (np.abs(det) > 1e-12)
    ids = np.nonzero(ok)[0]
    color = np.zeros((height, width, colors.shape[1]))
    zbuf = np.full((height, width), np.inf)
    lab = np.zeros((height, width), np.uint8)
    if len(ids) == 0:
        return RenderBuffers(color, zbuf, lab)
    counts = nx[ids] * ny[ids]
    fi = np.repeat(ids, counts)
    start = np.repeat(np.cumsum(counts) - counts, counts)
    local = np.arange(len(fi)) - start
    px = lo[fi, 0] + local % nx[fi]
    py = lo[fi, 1] + local // nx[fi]
    inv = 1.0 / det
    dx = px - c[fi, 0]
    dy = py - c[fi, 1]
    l1 = ((b[fi, 1] - c[fi, 1]) * dx + (c[fi, 0] - b[fi, 0]) * dy) * inv[fi]
    l2 = ((c[fi, 1] - a[fi, 1]) * dx + (a[fi, 0] - c[fi, 0]) * dy) * inv[fi]
    l3 = 1.0 - l1 - l2
    eps = -1e-9
    inside = (l1 >= eps) & (l2 >= eps) & (l3 >= eps)
    fi, px, py, l1, l2, l3 = fi[inside], px[inside], py[inside], l1[inside], l2[inside], l3[inside]
    z = 1.0 / (l1 / tz[fi, 0] + l2 / tz[fi, 1] + l3 / tz[fi, 2])  # perspective-correct depth
    pix = py * width + px
    order = np.lexsort((z, pix))
    pix_sorted = pix[order]
    first = np.ones(len(order), bool)
    first[1:] = pix_sorted[1:] != pix_sorted[:-1]
    win = order[first]
    f = faces[fi[win]]
    col = (l1[win, None] * colors[f[:, 0]] + l2[win, None] * colors[f[:, 1]] + l3[win, None] * colors[f[:, 2]])
    color.reshape(-1, colors.shape[1])[pix[win]] = col
    zbuf.reshape(-1)[pix[win]] = z[win]
    lab.reshape(-1)[pix[win]] = face_labels[fi[win]]
    return RenderBuffers(color, zbuf, lab)


@dataclass
class Lighting:
    """Directional key and fill lights plus ambient, in world coordinates."""

    key_dir: np.ndarray
    fill_dir: np.ndarray
    key: float = 0.75
    fill: float = 0.3
    ambient: float = 0.28
    specular: float = 0.10
    shininess: float = 18.0
    wrap: float = 0.35  # soft terminator, as light scattered under skin

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Lighting":
        key = normalize(rng.normal(size=3) + np.array([0.0, 0.0, 1.2]))
        fill = normalize(-key + rng.normal(scale=0.4, size=3))
        return cls(key_dir=key, fill_dir=fill, key=rng.uniform(0.6, 0.85), fill=rng.uniform(0.2, 0.4),
                   ambient=rng.uniform(0.32, 0.45))


def shade(vertices: np.ndarray, normals: np.ndarray, albedo: np.ndarray, light: Lighting,
          camera_centre: np.ndarray) -> np.ndarray:
    """Per-vertex colour: wrapped Lambert key + fill, ambient and Blinn-Phong highlights."""
    def lambert(d):
        return np.clip((normals @ d + light.wrap) / (1.0 + light.wrap), 0.0, None)

    view = normalize(camera_centre[None] - vertices)
    # two-sided: a normal facing away from the camera is a back face seen at the silhouette
    flip = np.sum(normals * view, axis=1, keepdims=True) < 0
    n = np.where(flip, -normals, normals)
    diffuse = light.ambient + light.key * lambert(light.key_dir)[:, None] + light.fill * lambert(light.fill_dir)[:, None]
    half = normalize(view + light.key_dir[None])
    spec = light.specular * np.clip(np.sum(n * half, axis=1), 0, 1) ** light.shininess
    return np.clip(albedo * diffuse + spec[:, None], 0.0, 1.0)


def textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random but natural-looking background: gradients, blotches, shapes, grain (BGR 0..1)."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    grey0, grey1 = rng.uniform(0.2, 0.8, 2)
    c0 = np.clip(grey0 + rng.normal(0, 0.12, 3), 0, 1)
    c1 = np.clip(grey1 + rng.normal(0, 0.12, 3), 0, 1)
    ang = rng.uniform(0, 2 * np.pi)
    g = (np.cos(ang) * xx + np.sin(ang) * yy)
    g = (g - g.min()) / max(np.ptp(g), 1e-9)
    img = c0 * (1 - g[..., None]) + c1 * g[..., None]
    for cells in (4, 12):  # low- and mid-frequency blotches
        noise = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
        img += 0.05 * cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    canvas = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    for _ in range(rng.integers(3, 10)):
        col = tuple(int(v) for v in np.clip(rng.uniform(30, 220) + rng.normal(0, 35, 3), 0, 255))
        kind = rng.integers(0, 3)
        p = (int(rng.uniform(-0.1, 1.1) * width), int(rng.uniform(-0.1, 1.1) * height))
        if kind == 0:
            q = (p[0] + int(rng.uniform(0.1, 0.5) * width), p[1] + int(rng.uniform(0.1, 0.5) * height))
            cv2.rectangle(canvas, p, q, col, -1)
        elif kind == 1:
            cv2.circle(canvas, p, int(rng.uniform(0.05, 0.25) * width), col, -1, lineType=cv2.LINE_AA)
        else:
            q = (int(rng.uniform(0, 1) * width), int(rng.uniform(0, 1) * height))
            cv2.line(canvas, p, q, col, int(rng.integers(2, 10)), lineType=cv2.LINE_AA)
    canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(1.5, 3.5))
    out = canvas.astype(np.float64) / 255.0
    out += rng.normal(0, 0.015, out.shape)  # fine texture
    return np.clip(out, 0, 1)
