"""What the PCA articulation can represent at best: the error of the closest K-component pose.

For poses drawn from the synthetic generator's priors (the poses the ladder's captures hold), the
45 axis-angle numbers are projected onto the hand model's first K articulation components
(``HandModel.articulation_basis``, as ``--articulation pca`` uses) and the joints of the projected
pose are compared with the joints of the original one (PA-MPJPE, mm). No network is involved: this
is the floor under any PCA-K run's error on perfectly fitted frames. The mean pose (K = 0) is the
reference. Last line: JSON.

Usage: python bench/pca_floor.py [--poses N] [--components 6,12,20,30] [--seed S] [--hand-model MANO.npz]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.hand_model import HandModel  # noqa: E402
from model.hand_pose import HandPoseSpace  # noqa: E402
from model.metrics import pa_mpjpe  # noqa: E402


def pca_floor(hand: HandModel, basis: tuple[torch.Tensor, torch.Tensor], poses: torch.Tensor, k: int) -> float:
    """Mean PA-MPJPE (mm) between the joints of ``poses`` (N, 45) and of their projection on the first K
    components of ``basis`` (``HandModel.articulation_basis``: mean, components)."""
    mean, comps = basis[0], basis[1][:k]
    rec = mean + ((poses - mean) @ comps.T) @ comps
    zeros = torch.zeros(len(poses), 3, dtype=poses.dtype)
    betas = torch.zeros(len(poses), hand.num_betas, dtype=poses.dtype)
    with torch.no_grad():
        gt = hand(zeros, poses, betas).joints.numpy()
        pred = hand(zeros, rec, betas).joints.numpy()
    return float(1000 * np.mean(pa_mpjpe(pred, gt)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--poses", type=int, default=500, help="poses drawn from each prior")
    ap.add_argument("--components", default="0,6,12,20,30", help="comma-separated K (0: the mean pose)")
    ap.add_argument("--seed", type=int, default=123, help="seed of the drawn poses (the basis has its own)")
    ap.add_argument("--hand-model", default=None, help="converted MANO .npz (default: the procedural hand)")
    args = ap.parse_args(argv)
    hand = HandModel(args.hand_model).double()
    space = HandPoseSpace(hand.rest_joints().numpy())
    rng = np.random.default_rng(args.seed)
    ks = [int(k) for k in args.components.split(",")]
    basis = hand.articulation_basis(max(max(ks), 1))
    out: dict = {"poses_per_prior": args.poses, "seed": args.seed, "pa_mpjpe_mm": {}}
    for prior in ("default", "wide"):
        dofs = space.sample(rng, args.poses) if prior == "default" else space.sample_wide(rng, args.poses)
        poses = torch.as_tensor(space.to_hand_pose(dofs))
        out["pa_mpjpe_mm"][prior] = {str(k): round(pca_floor(hand, basis, poses, k), 2) for k in ks}
        print(f"{prior:>8} prior: " + "  ".join(f"K={k}: {v} mm" for k, v in out["pa_mpjpe_mm"][prior].items()))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
