"""Plausible hand articulation: anatomical joint axes, joint limits, smooth pose sequences.

A pose is described by 20 degrees of freedom (flexion and abduction at each finger's MCP,
flexion at PIP and DIP; two at the thumb's CMC, flexion at its MCP and IP). The rotation axes
are derived from the rest-pose joints of whichever right-hand model is loaded (MANO or the
procedural hand), so the same angles mean the same motion on both, and positive flexion
always curls a finger towards the palm.
"""
from __future__ import annotations

import numpy as np

from .geometry import axis_angle_to_matrix, matrix_to_axis_angle, normalize

FINGERS = ("index", "middle", "ring", "pinky")
# OpenPose indices (mcp, pip, dip, tip) and MANO joint indices (mcp, pip, dip)
_FINGER_OPENPOSE = {"index": (5, 6, 7, 8), "middle": (9, 10, 11, 12), "ring": (13, 14, 15, 16),
                    "pinky": (17, 18, 19, 20)}
_FINGER_MANO = {"index": (1, 2, 3), "middle": (4, 5, 6), "ring": (10, 11, 12), "pinky": (7, 8, 9)}
_THUMB_OPENPOSE = (1, 2, 3, 4)
_THUMB_MANO = (13, 14, 15)

DOF_NAMES = tuple(
    f"{f}_{d}" for f in FINGERS for d in ("mcp_flex", "mcp_abd", "pip_flex", "dip_flex")
) + ("thumb_cmc_flex", "thumb_cmc_abd", "thumb_mcp_flex", "thumb_ip_flex")
NUM_DOFS = len(DOF_NAMES)
POSE_PRIORS = ("default", "wide")

_FINGER_LIMITS = {"mcp_flex": (-0.35, 1.55), "mcp_abd": (-0.30, 0.30), "pip_flex": (0.0, 1.85),
                  "dip_flex": (-0.05, 1.30)}
_THUMB_LIMITS = {"thumb_cmc_flex": (-0.35, 0.90), "thumb_cmc_abd": (-0.30, 0.90),
                 "thumb_mcp_flex": (-0.15, 1.00), "thumb_ip_flex": (-0.30, 1.35)}
JOINT_LIMITS = np.array([_FINGER_LIMITS[n.split("_", 1)[1]] if not n.startswith("thumb") else _THUMB_LIMITS[n]
                         for n in DOF_NAMES])


def num_key_poses(n_frames: int, keyframe_every: int) -> int:
    """How many key poses :meth:`HandPoseSpace.sample_sequence` draws for ``n_frames`` frames."""
    return int(np.ceil(max(n_frames - 1, 1) / keyframe_every)) + 2


class HandPoseSpace:
    """Maps the 20 anatomical angles to MANO's 15 local axis-angle rotations (45 numbers)."""

    def __init__(self, rest_joints: np.ndarray) -> None:
        J = np.asarray(rest_joints, dtype=np.float64)
        side = normalize(J[5] - J[17])  # pinky MCP → index MCP, towards the thumb
        forward = normalize(J[9] - J[0])  # wrist → middle MCP
        volar = normalize(np.cross(side, forward))  # palm normal of a right hand
        self.volar = volar
        # (mano joint, [(dof index, axis)]) for every articulated joint
        self._joints: list[tuple[int, list[tuple[int, np.ndarray]]]] = []
        for fi, f in enumerate(FINGERS):
            op = _FINGER_OPENPOSE[f]
            mano = _FINGER_MANO[f]
            base = 4 * fi
            for k in range(3):
                d = normalize(J[op[k + 1]] - J[op[k]])
                flex = normalize(np.cross(d, volar))
                dofs = [(base + (0 if k == 0 else k + 1), flex)]
                if k == 0:
                    dofs.append((base + 1, volar))
                self._joints.append((mano[k], dofs))
        t_side = normalize(0.6 * volar - 0.8 * side)  # the thumb curls across the palm
        for k in range(3):
            d = normalize(J[_THUMB_OPENPOSE[k + 1]] - J[_THUMB_OPENPOSE[k]])
            curl = normalize(np.cross(d, t_side))
            dofs = [(16 + (0 if k == 0 else k + 1), curl)]
            if k == 0:
                dofs.append((17, normalize(np.cross(d, volar))))
            self._joints.append((_THUMB_MANO[k], dofs))

    def clip(self, dofs: np.ndarray) -> np.ndarray:
        return np.clip(dofs, JOINT_LIMITS[:, 0], JOINT_LIMITS[:, 1])

    def to_hand_pose(self, dofs: np.ndarray) -> np.ndarray:
        """(..., 20) angles → (..., 45) axis-angle of MANO joints 1..15."""
        dofs = np.asarray(dofs, dtype=np.float64)
        lead = dofs.shape[:-1]
        flat = dofs.reshape(-1, NUM_DOFS)
        pose = np.zeros((flat.shape[0], 16, 3))
        for mano_joint, parts in self._joints:
            R = np.broadcast_to(np.eye(3), (flat.shape[0], 3, 3))
            # abduction (applied last, outermost) after flexion
            for dof, axis in reversed(parts):
                R = R @ axis_angle_to_matrix(flat[:, dof, None] * axis[None])
            pose[:, mano_joint] = matrix_to_axis_angle(R)
        return pose[:, 1:].reshape(lead + (45,))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Independent plausible poses (n, 20): a shared grasp plus per-finger variation."""
        lo = JOINT_LIMITS[:, 0]
        grasp = rng.uniform(0, 1, (n, 1)) ** 1.6  # open hands are common, fists less so
        curl = np.clip(grasp + rng.normal(0, 0.22, (n, 5)), 0, 1)
        spread = rng.uniform(-1, 1, (n, 1)) * (1 - grasp)
        out = np.zeros((n, NUM_DOFS))
        for fi in range(4):
            c = curl[:, fi]
            b = 4 * fi
            # flexion is coupled along a finger (MCP, PIP and DIP bend together)
            out[:, b] = lo[b] * 0.25 * (1 - c) + c * 1.25 * rng.uniform(0.7, 1.0, n)
            out[:, b + 1] = spread[:, 0] * (fi - 1.5) / 1.5 * 0.25 + rng.normal(0, 0.05, n)
            out[:, b + 2] = c * 1.5 * rng.uniform(0.7, 1.0, n)
            out[:, b + 3] = 0.65 * out[:, b + 2] * rng.uniform(0.8, 1.1, n)
        c = curl[:, 4]
        out[:, 16] = c * 0.7 + rng.normal(0, 0.1, n)
        out[:, 17] = rng.uniform(-0.1, 0.6, n)
        out[:, 18] = c * 0.7 * rng.uniform(0.5, 1.0, n)
        out[:, 19] = c * 0.9 * rng.uniform(0.4, 1.0, n)
        return self.clip(out)

    def sample_sequence(self, rng: np.random.Generator, n_frames: int, keyframe_every: int = 15,
                        prior: str = "default") -> np.ndarray:
        """A smooth sequence (n_frames, 20): keyframe poses joined by C¹ cubic interpolation.

        ``keyframe_every`` 1 gives an independent pose in every frame; ``prior`` is ``"default"``
        (:meth:`sample`) or ``"wide"`` (:meth:`sample_wide`)."""
        if keyframe_every < 1:
            raise ValueError(f"keyframe_every must be at least 1 (got {keyframe_every})")
        if prior not in POSE_PRIORS:
            raise ValueError(f"pose prior must be one of {', '.join(POSE_PRIORS)} (got {prior!r})")
        n_keys = num_key_poses(n_frames, keyframe_every)
        keys = self.sample(rng, n_keys) if prior == "default" else self.sample_wide(rng, n_keys)
        t = np.arange(n_frames) / keyframe_every
        i = np.minimum(t.astype(int), n_keys - 2)
        u = (t - i)[:, None]
        h = u * u * (3 - 2 * u)  # smoothstep: zero velocity at every keyframe
        return self.clip(keys[i] * (1 - h) + keys[i + 1] * h)

    # Hand shapes people make, as (finger curl 0..1 for index, middle, ring, pinky; thumb curl; spread -1..1)
    # and a thumb opposition 0..1; the wide prior draws one of them (or a uniform pose) and perturbs it.
    ARCHETYPES = {
        "open": ((0.05, 0.05, 0.05, 0.05), 0.05, 0.2, 0.3),
        "spread": ((0.0, 0.0, 0.0, 0.0), 0.0, 1.0, 0.1),
        "fist": ((1.0, 1.0, 1.0, 1.0), 0.9, 0.0, 0.4),
        "point": ((0.0, 1.0, 1.0, 1.0), 0.8, 0.0, 0.5),
        "two": ((0.0, 0.0, 1.0, 1.0), 0.8, 0.6, 0.5),
        "pinch": ((0.55, 0.2, 0.15, 0.1), 0.5, 0.1, 1.0),
        "grasp": ((0.6, 0.6, 0.6, 0.6), 0.45, 0.0, 0.8),
        "hook": ((0.3, 0.3, 0.3, 0.3), 0.1, 0.0, 0.2),
    }

    def sample_wide(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Independent poses (n, 20) from a wider prior than :meth:`sample`: one of the
        :attr:`ARCHETYPES` (grasps, pinches, pointing, spread, fist, ...) or, one time in four, every
        angle uniform within its limits, then per-angle variation; always within the joint limits."""
        lo, hi = JOINT_LIMITS[:, 0], JOINT_LIMITS[:, 1]
        names = list(self.ARCHETYPES)
        kind = rng.integers(0, len(names) + 2, n)  # the last two draws: uniform poses
        out = np.zeros((n, NUM_DOFS))
        for k in range(n):
            if kind[k] >= len(names):
                out[k] = rng.uniform(lo, hi)
                continue
            curls, thumb, spread, oppose = self.ARCHETYPES[names[kind[k]]]
            c = np.clip(np.asarray(curls) + rng.normal(0, 0.12, 4), 0, 1)
            s = np.clip(spread + rng.normal(0, 0.2), -1, 1)
            for fi in range(4):
                b = 4 * fi
                hook = names[kind[k]] == "hook"  # MCP straight, PIP and DIP bent
                out[k, b] = (0.1 if hook else 1.45) * c[fi] + rng.normal(0, 0.08)
                out[k, b + 1] = s * (fi - 1.5) / 1.5 * 0.28 + rng.normal(0, 0.04)
                out[k, b + 2] = (1.7 if not hook else 2.0) * c[fi] + rng.normal(0, 0.08)
                out[k, b + 3] = 1.1 * c[fi] * rng.uniform(0.7, 1.1)
            t = np.clip(thumb + rng.normal(0, 0.1), 0, 1)
            o = np.clip(oppose + rng.normal(0, 0.12), 0, 1)
            out[k, 16:] = (0.9 * o - 0.2 + rng.normal(0, 0.06), 0.8 * o + rng.normal(0, 0.06),
                           0.9 * t + rng.normal(0, 0.06), 1.2 * t + rng.normal(0, 0.06))
        return self.clip(out)
