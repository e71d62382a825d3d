"""Synthetic calibrated multi-camera captures with ground truth, drawn with the hand model.

One seed fixes everything: the hand's shape, a smooth pose sequence within joint limits,
a random global rotation and drift, the camera rig (ring or dome, realistic intrinsics),
lighting, skin tone, backgrounds, occluders and sensor noise. The result is written in
capture format v1 with ground truth (3D joints, hand-model parameters, 2D projections,
per-joint visibility) and per-view masks.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from model.atomic import atomic_path
from model.errors import HamucoError
from model.geometry import axis_angle_to_matrix, look_at, normalize
from model.hand_model import MIRROR, ROOT_JOINT, HandModel, mirror_axis_angle
from model.hand_pose import POSE_PRIORS, HandPoseSpace
from model.procedural_hand import MeshBuilder

from .capture import GROUND_TRUTH_FILE, Camera, Capture, GroundTruth, write_capture_json
from .provenance import code_version
from .render import (LABEL_FOREARM, LABEL_HAND, LABEL_OCCLUDER, Lighting, rasterize, shade,
                     textured_background, vertex_normals)

# Skin albedos (BGR, linear-ish 0..1) from light to dark tones.
SKIN_TONES = np.array([
    [0.66, 0.74, 0.92], [0.58, 0.68, 0.88], [0.50, 0.62, 0.84], [0.42, 0.55, 0.78],
    [0.34, 0.45, 0.66], [0.26, 0.35, 0.52], [0.20, 0.27, 0.40],
])
VISIBILITY_TOLERANCE = 0.02  # a joint lies inside the skin; this much surface in front still shows it


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a synthetic capture."""

    cameras: int = 8
    frames: int = 16
    seed: int = 0
    image_size: int = 256
    rig: str = "ring"  # "ring" or "dome"
    distance: float = 0.65  # metres from the hand to the cameras
    hand_model: Optional[str] = None  # converted MANO .npz; None = procedural hand
    handedness: str = "right"
    occluders: int = 0
    image_format: str = "png"
    supersample: int = 2
    # diversity (the defaults draw exactly what captures drew before these settings existed)
    keyframe_every: int = 15  # a new key pose every this many frames; 1 = an independent pose per frame
    pose_prior: str = "default"  # "default" (open to fist around one grasp) or "wide" (model.hand_pose)
    shape_sigma: float = 0.8  # spread of the hand-shape coefficients β (clipped to ±2)
    roll_deg: float = 8.0  # each camera's roll about its axis is uniform in ±this (in-plane rotation)
    # the hand's centre wanders up to this many metres per axis from the rig's centre over time (0: it
    # stays within ~2 cm); the cameras' focal length shrinks to keep it in view. What frame sync and calibration checks
    # need: a hand that moves through the scene, as real hands do
    travel: float = 0.0

    def check(self) -> None:
        problems = []
        if not 1 <= self.cameras <= 64:
            problems.append(f"cameras must be between 1 and 64 (got {self.cameras})")
        if self.frames < 1:
            problems.append(f"frames must be at least 1 (got {self.frames})")
        if not 64 <= self.image_size <= 2048:
            problems.append(f"image size must be between 64 and 2048 pixels (got {self.image_size})")
        if self.rig not in ("ring", "dome"):
            problems.append(f"rig must be 'ring' or 'dome' (got {self.rig!r})")
        if self.handedness not in ("right", "left"):
            problems.append(f"handedness must be 'right' or 'left' (got {self.handedness!r})")
        if self.image_format not in ("png", "jpg"):
            problems.append(f"image format must be 'png' or 'jpg' (got {self.image_format!r})")
        if not 0.2 <= self.distance <= 5.0:
            problems.append(f"distance must be between 0.2 and 5 metres (got {self.distance})")
        if not 1 <= self.supersample <= 4:
            problems.append(f"supersample must be 1..4 (got {self.supersample})")
        if self.occluders < 0:
            problems.append(f"occluders must be >= 0 (got {self.occluders})")
        if self.keyframe_every < 1:
            problems.append(f"keyframe_every must be at least 1 (got {self.keyframe_every})")
        if self.pose_prior not in POSE_PRIORS:
            problems.append(f"pose prior must be one of {', '.join(POSE_PRIORS)} (got {self.pose_prior!r})")
        if not 0 <= self.shape_sigma <= 3:
            problems.append(f"shape_sigma must be between 0 and 3 (got {self.shape_sigma})")
        if not 0 <= self.roll_deg <= 180:
            problems.append(f"roll_deg must be between 0 and 180 (got {self.roll_deg})")
        if not 0 <= self.travel <= min(0.3, self.distance / 4):
            problems.append(f"travel must be between 0 and 0.3 metres and at most a quarter of the camera "
                            f"distance {self.distance} (got {self.travel})")
        if problems:
            raise HamucoError("invalid synthetic capture settings: " + "; ".join(problems))


# The embedded default: what `make demo` generates.
DEMO_CONFIG = SynthConfig(cameras=8, frames=12, seed=0)


@dataclass
class Scene:
    cameras: list[Camera]
    global_orient: np.ndarray  # (F, 3)
    hand_pose: np.ndarray  # (F, 45)
    betas: np.ndarray  # (10,)
    transl: np.ndarray  # (F, 3)
    joints: np.ndarray  # (F, 21, 3) world
    meshes: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]  # per frame: verts, faces, albedo, labels
    lighting: Lighting
    background_seeds: list[int]
    hand_model_sha256: str


def _camera_rig(cfg: SynthConfig, rng: np.random.Generator) -> list[Camera]:
    W = H = cfg.image_size
    cams = []
    golden = np.pi * (3.0 - np.sqrt(5.0))
    offset = rng.uniform(0, 2 * np.pi)
    for k in range(cfg.cameras):
        if cfg.rig == "ring":
            az = offset + 2 * np.pi * k / cfg.cameras + rng.uniform(-0.12, 0.12)
            el = np.deg2rad(rng.uniform(-15, 30))
        else:
            z = 0.12 + 0.8 * (k + 0.5) / cfg.cameras
            az, el = offset + k * golden, np.arcsin(z)
        d = cfg.distance * rng.uniform(0.9, 1.1)
        centre = d * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        R, _ = look_at(centre, rng.normal(0, 0.01, 3), np.array([0.0, 0.0, 1.0]))
        roll = axis_angle_to_matrix(np.array([0.0, 0.0, np.deg2rad(rng.uniform(-cfg.roll_deg, cfg.roll_deg))]))
        R = roll @ R
        t = -R @ centre
        f = 0.7 * W * d / (0.21 + 2 * cfg.travel) * rng.uniform(0.94, 1.06)
        K = np.array([[f, 0, W / 2 - 0.5 + rng.uniform(-0.02, 0.02) * W],
                      [0, f * rng.uniform(0.995, 1.005), H / 2 - 0.5 + rng.uniform(-0.02, 0.02) * H],
                      [0, 0, 1]])
        name = f"cam{k:02d}"
        cams.append(Camera(name=name, width=W, height=H, K=K, dist=np.zeros(5), R=R, t=t,
                           images=f"images/{name}/{{frame}}.{cfg.image_format}"))
    return cams


def _forearm(rest_joints: np.ndarray, volar: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A forearm (with a sleeve) in the rest frame: vertices, faces, sleeve flag per vertex."""
    fwd = normalize(rest_joints[ROOT_JOINT] - rest_joints[0])
    s = np.array([0.015, 0.0, -0.04, -0.08, -0.12, -0.16, -0.22, -0.30])
    centres = rest_joints[0][None] + s[:, None] * fwd[None]
    hw = np.interp(-s, [-0.015, 0.0, 0.08, 0.30], [0.026, 0.029, 0.031, 0.036])
    hd = hw * 0.72
    hd = np.where(-s >= 0.10, hd * 1.25, hd)
    hw = np.where(-s >= 0.10, hw * 1.25, hw)  # the sleeve is a little wider
    mb = MeshBuilder()
    n = len(s)
    mb.add_tube(centres, np.repeat(-fwd[None], n, 0), np.repeat(volar[None], n, 0), hw, hd,
                np.zeros((n, 1)), 20, cap_start=0.01, cap_end=0.02)
    v, f, _ = mb.result()
    sleeve = ((v - rest_joints[0]) @ fwd) < -0.095
    return v, f, sleeve


def _ellipsoid(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mb = MeshBuilder()
    r = rng.uniform(0.015, 0.035, 3)
    n = 5
    s = np.linspace(-0.6, 0.6, n) * r[2]
    centres = np.stack([np.zeros(n), np.zeros(n), s], 1)
    prof = np.sqrt(1 - (s / r[2]) ** 2)
    mb.add_tube(centres, np.repeat([[0.0, 0.0, 1.0]], n, 0), np.repeat([[1.0, 0.0, 0.0]], n, 0),
                r[0] * prof, r[1] * prof, np.zeros((n, 1)), 18, cap_start=0.4 * r[2], cap_end=0.4 * r[2])
    v, f, _ = mb.result()
    return v, f


def _skin_albedo(hand: HandModel, betas: np.ndarray, skin: np.ndarray, volar: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Per-vertex skin colour: lighter, pinker palms and finger pads, nails, mottling.

    Computed on the rest pose of whichever hand model is loaded, so it works for MANO too.
    """
    with torch.no_grad():
        zero = torch.zeros(1, 3, dtype=torch.float64)
        rest = hand(zero, torch.zeros(1, 45, dtype=torch.float64), torch.as_tensor(betas)[None]).vertices[0].numpy()
    normals = vertex_normals(rest, hand.faces)
    palm_side = np.clip(normals @ volar, 0.0, 1.0)[:, None] ** 0.7
    palm_tone = skin + (1.0 - skin) * 0.3 + np.array([-0.02, -0.01, 0.04])
    albedo = skin[None] * (1 - 0.6 * palm_side) + palm_tone[None] * 0.6 * palm_side
    tips = rest[hand.tip_vertex_ids.numpy()]
    near_tip = np.min(np.linalg.norm(rest[:, None] - tips[None], axis=-1), axis=1) < 0.011
    nail = near_tip & (normals @ volar < -0.35)
    albedo[nail] = 0.7 * palm_tone + 0.3 * np.array([0.85, 0.85, 0.92])
    albedo *= 1.0 + 0.035 * np.sin(rest @ rng.normal(0, 120, (3, 3)))
    return np.clip(albedo, 0, 1)


def build_scene(cfg: SynthConfig) -> Scene:
    """Sample and pose everything (deterministic for ``cfg.seed``)."""
    cfg.check()
    rng = np.random.default_rng(cfg.seed)
    hand = HandModel(cfg.hand_model, side=cfg.handedness, dtype=torch.float64)
    F = cfg.frames
    betas = np.clip(rng.normal(0, cfg.shape_sigma, 10), -2, 2)
    with torch.no_grad():
        rest = hand.rest_joints(torch.as_tensor(betas)).numpy()
    right_rest = rest * MIRROR if cfg.handedness == "left" else rest
    space = HandPoseSpace(right_rest)
    hand_pose = space.to_hand_pose(space.sample_sequence(rng, F, cfg.keyframe_every, cfg.pose_prior))
    # hand raised in the rig, forearm from below: the wrist→middle-MCP axis points within
    # 60° of world up, any twist about it, then a bounded sway over time
    fwd_rest = normalize(right_rest[ROOT_JOINT] - right_rest[0])
    tilt = np.arccos(rng.uniform(0.5, 1.0))
    az = rng.uniform(0, 2 * np.pi)
    up = np.array([np.sin(tilt) * np.cos(az), np.sin(tilt) * np.sin(az), np.cos(tilt)])
    align, _ = Rotation.align_vectors(up[None], fwd_rest[None])
    R0 = Rotation.from_rotvec(up * rng.uniform(0, 2 * np.pi)) * align
    tt = np.arange(F)[:, None]
    sway = rng.uniform(0.1, 0.35, 3) * np.sin(2 * np.pi * tt / rng.uniform(30, 60, 3) + rng.uniform(0, 2 * np.pi, 3))
    global_orient = (R0 * Rotation.from_rotvec(sway)).as_rotvec()
    if cfg.handedness == "left":
        hand_pose = mirror_axis_angle(hand_pose)
    with torch.no_grad():
        out = hand(torch.as_tensor(global_orient), torch.as_tensor(hand_pose),
                   torch.as_tensor(betas)[None].expand(F, -1))
    joints = out.joints.numpy()
    phase = rng.uniform(0, 2 * np.pi, (2, 3))
    centre = 0.012 * (np.sin(tt / 9.0 + phase[0]) + 0.5 * np.sin(tt / 4.3 + phase[1]))
    if cfg.travel > 0:  # its own stream: captures without travel stay what they were
        trng = np.random.default_rng([cfg.seed, 22])
        slow = np.sin(2 * np.pi * tt / trng.uniform(16, 28, 3) + trng.uniform(0, 2 * np.pi, 3))
        fast = np.sin(2 * np.pi * tt / trng.uniform(6, 10, 3) + trng.uniform(0, 2 * np.pi, 3))
        centre = centre + cfg.travel * (slow + 0.5 * fast) / 1.5
    transl = centre - joints[:, ROOT_JOINT]
    verts = out.vertices.numpy() + transl[:, None]
    joints = joints + transl[:, None]

    # forearm rigidly attached to the wrist
    fore_v, fore_f, sleeve = _forearm(rest, space.volar)
    J0_rest = rest[0]  # the wrist, MANO's root joint
    Rg = axis_angle_to_matrix(global_orient)
    J0 = out.mano_joints.numpy()[:, 0] + transl
    fore_world = np.einsum("fij,vj->fvi", Rg, fore_v - J0_rest) + J0[:, None]

    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.93, 1.07, 3)
    sleeve_col = rng.uniform(0.1, 0.9, 3)
    hand_albedo = _skin_albedo(hand, betas, skin, space.volar if cfg.handedness == "right" else space.volar * MIRROR,
                               rng)
    fore_albedo = np.where(sleeve[:, None], sleeve_col[None], skin[None])

    occluders = []
    for _ in range(cfg.occluders):
        ov, of = _ellipsoid(rng)
        rot = Rotation.random(random_state=rng).as_matrix()
        start = normalize(rng.normal(size=3)) * rng.uniform(0.07, 0.11)
        vel = rng.normal(0, 0.002, 3)
        col = rng.uniform(0.05, 0.95, 3)
        occluders.append((ov @ rot.T, of, start, vel, col))

    meshes = []
    for fr in range(F):
        parts_v = [verts[fr], fore_world[fr]]
        parts_f = [hand.faces, fore_f]
        parts_a = [hand_albedo, fore_albedo]
        parts_l = [np.full(len(hand.faces), LABEL_HAND), np.full(len(fore_f), LABEL_FOREARM)]
        for ov, of, start, vel, col in occluders:
            parts_v.append(ov + start + vel * fr)
            parts_f.append(of)
            parts_a.append(np.repeat(col[None], len(ov), 0))
            parts_l.append(np.full(len(of), LABEL_OCCLUDER))
        offs = np.cumsum([0] + [len(v) for v in parts_v[:-1]])
        meshes.append((np.concatenate(parts_v), np.concatenate([f + o for f, o in zip(parts_f, offs)]),
                       np.concatenate(parts_a), np.concatenate(parts_l).astype(np.uint8)))
    cameras = _camera_rig(cfg, rng)
    return Scene(cameras=cameras, global_orient=global_orient, hand_pose=hand_pose, betas=betas,
                 transl=transl, joints=joints, meshes=meshes, lighting=Lighting.random(rng),
                 background_seeds=[int(s) for s in rng.integers(0, 2 ** 31, len(cameras))],
                 hand_model_sha256=hand.sha256)


def render_view(scene: Scene, cfg: SynthConfig, frame: int, view: int,
                background: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(BGR uint8 image, label mask, joints 2D (21, 2), visibility (21,)) of one view."""
    cam = scene.cameras[view]
    verts, faces, albedo, labels = scene.meshes[frame]
    ss = cfg.supersample
    W, H = cam.width, cam.height
    cam_v = verts @ cam.R.T + cam.t
    uv, z = cam.project(verts)
    centre = -cam.R.T @ cam.t
    colors = shade(verts, vertex_normals(verts, faces), albedo, scene.lighting, centre)
    buf = rasterize(uv * ss + (ss - 1) / 2.0, cam_v[:, 2], faces, colors, labels, H * ss, W * ss)
    cover = (buf.label > 0).astype(np.float64)
    col = cv2.resize(buf.color, (W, H), interpolation=cv2.INTER_AREA)
    cov = cv2.resize(cover, (W, H), interpolation=cv2.INTER_AREA)[..., None]
    if background is None:
        background = textured_background(np.random.default_rng(scene.background_seeds[view]), H, W)
    img = col + (1.0 - cov) * background
    noise_rng = np.random.default_rng([cfg.seed, frame, view])
    img = img + noise_rng.normal(0, 0.008, img.shape)
    image = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    mask = buf.label[ss // 2::ss, ss // 2::ss].copy()
    depth = buf.depth.reshape(H, ss, W, ss).min(axis=(1, 3))

    j2d, jz = cam.project(scene.joints[frame])
    px = np.round(j2d).astype(int)
    inside = (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H) & (jz > 0)
    surface = np.full(len(px), np.inf)
    surface[inside] = depth[px[inside, 1], px[inside, 0]]
    on_occluder = np.zeros(len(px), bool)
    on_occluder[inside] = mask[px[inside, 1], px[inside, 0]] == LABEL_OCCLUDER
    visible = inside & (surface >= jz - VISIBILITY_TOLERANCE) & ~on_occluder
    return image, mask, j2d, visible


_WORK: dict = {}


def _render_frame(frame: int) -> tuple[int, np.ndarray, np.ndarray]:
    scene, cfg, root, backgrounds = _WORK["scene"], _WORK["cfg"], _WORK["root"], _WORK["backgrounds"]
    V = len(scene.cameras)
    j2d = np.zeros((V, 21, 2))
    vis = np.zeros((V, 21), bool)
    fid = f"{frame:06d}"
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if cfg.image_format == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    for v, cam in enumerate(scene.cameras):
        image, mask, j2d[v], vis[v] = render_view(scene, cfg, frame, v, backgrounds[v])
        cv2.imwrite(str(root / cam.images.format(frame=fid)), image, params)
        cv2.imwrite(str(root / "masks" / cam.name / f"{fid}.png"), mask)
    return frame, j2d, vis


def generate_capture(out: str | os.PathLike, cfg: SynthConfig = DEMO_CONFIG, overwrite: bool = False,
                     workers: int = 1, progress: bool = True) -> Capture:
    """Write a synthetic capture to ``out`` (atomically: a temporary directory, then a rename)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise HamucoError(f"{out}: already exists (pass --overwrite to replace it)")
    scene = build_scene(cfg)
    with atomic_path(out, directory=True) as tmp:  # a temporary directory, renamed onto out when complete
        capture = _write_capture(tmp, out.name, scene, cfg, workers, progress)
    capture.root = out
    return capture


def _write_capture(tmp: Path, name: str, scene, cfg: SynthConfig, workers: int, progress: bool) -> Capture:
    for cam in scene.cameras:
        (tmp / "images" / cam.name).mkdir(parents=True, exist_ok=True)
        (tmp / "masks" / cam.name).mkdir(parents=True, exist_ok=True)
    F, V = cfg.frames, len(scene.cameras)
    backgrounds = [textured_background(np.random.default_rng(s), c.height, c.width)
                   for s, c in zip(scene.background_seeds, scene.cameras)]
    _WORK.update(scene=scene, cfg=cfg, root=tmp, backgrounds=backgrounds)
    joints_2d = np.zeros((F, V, 21, 2))
    visibility = np.zeros((F, V, 21), bool)
    try:
        bar = tqdm(total=F * V, unit="view", desc="synth", disable=not progress)
        if workers > 1:
            with mp.get_context("fork").Pool(workers) as pool:
                for fr, j2d, vis in pool.imap_unordered(_render_frame, range(F)):
                    joints_2d[fr], visibility[fr] = j2d, vis
                    bar.update(V)
        else:
            for fr in range(F):
                _, joints_2d[fr], visibility[fr] = _render_frame(fr)
                bar.update(V)
        bar.close()
    finally:
        _WORK.clear()
    hand_name = cfg.hand_model or "procedural"
    gt = GroundTruth(joints_world=scene.joints, hand_pose=np.concatenate([scene.global_orient, scene.hand_pose], 1),
                     betas=scene.betas, transl=scene.transl, joints_2d=joints_2d, visibility=visibility,
                     hand_model=hand_name)
    gt.save(tmp / GROUND_TRUTH_FILE)
    capture = Capture(root=tmp, cameras=scene.cameras, frame_ids=[f"{i:06d}" for i in range(F)],
                      handedness=cfg.handedness, ground_truth_file=GROUND_TRUTH_FILE,
                      masks="masks/{camera}/{frame}.png",
                      metadata={"name": name, "generator": "hamuco synth", "code_version": code_version(),
                                "config": asdict(cfg), "hand_model": hand_name,
                                "hand_model_sha256": scene.hand_model_sha256})
    write_capture_json(capture)
    return capture


def summarize(capture: Capture) -> dict:
    """Figures people check first: views, frames, calibration, ground-truth visibility."""
    gt = capture.ground_truth
    info = {
        "capture": str(capture.root),
        "cameras": capture.num_views,
        "frames": capture.num_frames,
        "views": capture.num_views * capture.num_frames,
        "image_size": sorted({f"{c.width}x{c.height}" for c in capture.cameras}),
        "intrinsics": sum(c.has_intrinsics for c in capture.cameras),
        "extrinsics": sum(c.has_extrinsics for c in capture.cameras),
        "handedness": capture.handedness,
    }
    if gt is not None:
        info["ground_truth"] = True
        if gt.visibility is not None:
            info["visible_joints"] = round(float(np.mean(gt.visibility)), 3)
        if gt.joints_world is not None:
            span = np.ptp(gt.joints_world, axis=1).max(axis=1)
            info["hand_extent_m"] = round(float(np.mean(span)), 3)
    else:
        info["ground_truth"] = False
    return info


def format_summary(info: dict) -> str:
    return "\n".join(f"  {k:<16} {json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in info.items())
