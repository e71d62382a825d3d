"""Inference with a trained HaMuCo network: load a checkpoint, run view groups, fuse the views.

* :func:`load_model` rebuilds the network a checkpoint was trained as (backbone, crop size, hand
  model) and refuses a checkpoint that does not match, naming what differs.
* :func:`initial_network` rebuilds the network a training run started from (same seed, same
  bits): the untrained reference every evaluation reports beside the trained network.
* :func:`infer` runs one group of crops (any number of views, 1 to many) and returns a
  :class:`HandPrediction`: with extrinsics the 3D joints are in the world frame (root-relative,
  the average of the views rotated into the world, seed B.5); without them in a chosen reference
  view's camera frame (every view aligned onto it by a similarity transform, then averaged).
  Crops of left hands are given mirrored (``flipped``) and the results are mirrored back.

Images in, arrays out: detection and cropping of new data live in ``pipeline.infer``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .errors import HamucoError
from .evaluation import fuse_reference, fuse_world, unflip
from .hamuco import HaMuCo
from .hand_model import HandModel
from .rotations import matrix_to_axis_angle
from .precision import PrecisionChoice, run_in
from .single_view import BBOX_3D_SIZE
from .trainer import load_checkpoint

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def load_model(checkpoint: str | os.PathLike, hand_model: Optional[str | os.PathLike] = None) -> tuple[HaMuCo, dict]:
    """The network of a training checkpoint, in eval mode, and the checkpoint's architecture/provenance.

    ``hand_model``: the converted MANO ``.npz`` the run was trained with (default: the path recorded
    in the checkpoint, else the procedural hand); its sha256 must match the checkpoint's.
    """
    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    arch = ckpt.get("architecture")
    if not isinstance(arch, dict) or arch.get("model") != "HaMuCo" or "model" not in ckpt:
        raise HamucoError(f"{path}: not a HaMuCo training checkpoint (architecture {arch!r})")
    if hand_model is None:
        hand_model = _recorded_hand_model((ckpt.get("provenance") or {}).get("params", {}))
    hm = HandModel(hand_model)
    if arch.get("hand_model") and hm.sha256 != arch["hand_model"]:
        raise HamucoError(f"{path}: the checkpoint was trained with hand model sha256 {arch['hand_model'][:12]}…, "
                          f"but {hm.source} has sha256 {hm.sha256[:12]}…; pass the hand model it was trained with")
    articulation, components = articulation_of(arch)
    model = HaMuCo(backbone_name=arch["backbone"], backbone_weights="none", hand_model=hm,
                   image_size=int(arch["image_size"]), articulation=articulation, pca_components=components,
                   single_view_input=arch.get("single_view_input", "gap"))
    missing, unexpected = _state_dict_difference(model.state_dict(), ckpt["model"])
    if missing or unexpected:
        raise HamucoError(f"{path}: checkpoint does not match the {arch['backbone']} HaMuCo model: "
                          f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:3]
        raise HamucoError(f"{path}: checkpoint does not match the model: {' '.join(s.strip() for s in first)}") from None
    model.eval()
    return model, {"architecture": arch, "provenance": ckpt.get("provenance", {}),
                   "step": (ckpt.get("state") or {}).get("step"), "precision": ckpt.get("precision")}


def articulation_name(articulation: str = "full", pca_components: int = 12) -> Optional[str]:
    """What a checkpoint's architecture records of the articulation: nothing for "full" (checkpoints
    from before the option), ``"pca-K"`` for K principal components."""
    return None if articulation == "full" else f"pca-{int(pca_components)}"


def articulation_of(architecture: dict) -> tuple[str, int]:
    """(articulation, components) of a checkpoint's architecture record."""
    rec = architecture.get("articulation")
    if rec is None:
        return "full", 12
    kind, _, k = str(rec).partition("-")
    return kind, int(k)


def initial_network(backbone: str, image_size: int, seed: int, backbone_weights: str = "none",
                    hand_model: Optional[str | os.PathLike | HandModel] = None,
                    initial_orientation: str = "identity", articulation: str = "full",
                    pca_components: int = 12, single_view_input: str = "gap",
                    keypoint_head_weights: Optional[str] = None) -> HaMuCo:
    """The network as a training run with ``seed`` starts it (``TrainModel`` builds its network
    here), in eval mode: the untrained reference of that run."""
    torch.manual_seed(int(seed))
    hm = hand_model if isinstance(hand_model, HandModel) else HandModel(hand_model)
    return HaMuCo(backbone_name=backbone, backbone_weights=backbone_weights, hand_model=hm,
                  image_size=int(image_size), initial_orientation=initial_orientation, articulation=articulation,
                  pca_components=pca_components, single_view_input=single_view_input,
                  keypoint_head_weights=keypoint_head_weights).eval()


def initial_network_of(info: dict, hand_model: Optional[str | os.PathLike] = None) -> HaMuCo:
    """:func:`initial_network` of the run a checkpoint comes from (``info`` from :func:`load_model`)."""
    arch, params = info["architecture"], (info.get("provenance") or {}).get("params", {})
    if "seed" not in params:
        raise HamucoError("the checkpoint records no training seed; its untrained network cannot be rebuilt")
    if hand_model is None:
        hand_model = _recorded_hand_model(params)
    return initial_network(arch["backbone"], int(arch["image_size"]), int(params["seed"]),
                           params.get("backbone_weights", "none"), hand_model,
                           params.get("initial_orientation", "identity"), *articulation_of(arch),
                           arch.get("single_view_input", "gap"), params.get("keypoint_head_weights", "none"))


def _recorded_hand_model(params: dict) -> Optional[str]:
    """The hand-model path a run's parameters record (None: the procedural hand)."""
    recorded = params.get("hand_model")
    return recorded if recorded not in (None, "None", "") else None


def _state_dict_difference(model_sd: dict, ckpt_sd: dict) -> tuple[list[str], list[str]]:
    return sorted(set(model_sd) - set(ckpt_sd)), sorted(set(ckpt_sd) - set(model_sd))


def normalize_crops(crops: np.ndarray) -> torch.Tensor:
    """uint8 RGB crops (V, S, S, 3) → the network's input (V, 3, S, S), ImageNet-normalised."""
    x = (np.asarray(crops, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


@dataclass
class HandPrediction:
    """One hand seen by V views. Lengths in metres; 2D in crop pixels."""

    joints: np.ndarray  # (21, 3) root-relative, world frame (``coordinate_frame == "world"``) or the reference camera's
    coordinate_frame: str  # "world" or "camera:<reference view index>"
    view_joints: np.ndarray  # (V, 21, 3) interaction output per view, that view's camera frame
    single_view_joints: np.ndarray  # (V, 21, 3) single-view output per view, camera frame
    joints_2d: np.ndarray  # (V, 21, 2) interaction output projected into each crop
    pose: np.ndarray  # (V, 16, 3) axis-angle hand-model pose per view (global rotation first)
    shape: np.ndarray  # (V, 10) hand-model shape β
    camera: np.ndarray  # (V, 3) weak-perspective (s, tx, ty)
    view_mask: np.ndarray  # (V,) bool
    vertices: Optional[np.ndarray] = None  # (N, 3) in ``coordinate_frame``, with ``vertices=True``

    def to_json(self) -> dict:
        d = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}
        if self.vertices is None:
            d.pop("vertices")
        return d


@torch.no_grad()
def infer(model: HaMuCo, crops: np.ndarray | torch.Tensor, view_mask: Optional[np.ndarray] = None,
          flipped: Optional[np.ndarray] = None, extrinsics: Optional[np.ndarray] = None,
          reference_view: Optional[int] = None, vertices: bool = False,
          precision: Optional[PrecisionChoice] = None) -> HandPrediction:
    """Run one group of crops (V, S, S, 3) uint8 (or a normalised (V, 3, S, S) tensor).

    ``extrinsics`` (V, 3, 4) world → camera of every view, or None: then the result is in the
    camera frame of ``reference_view`` (default: the first valid view). ``precision``: the forward
    in bf16 autocast when that choice is bf16 (None: fp32).
    """
    x = crops if torch.is_tensor(crops) else normalize_crops(crops)
    V = x.shape[0]
    if x.shape[-2:] != (model.image_size, model.image_size):
        raise HamucoError(f"crops are {x.shape[-1]}×{x.shape[-2]}, the network takes {model.image_size}² crops")
    mask = torch.ones(V, dtype=torch.bool) if view_mask is None else torch.as_tensor(np.asarray(view_mask, bool))
    if not bool(mask.any()):
        raise HamucoError("no valid view to run the network on")
    flip = torch.zeros(V, dtype=torch.bool) if flipped is None else torch.as_tensor(np.asarray(flipped, bool))
    out = run_in(precision, model, x[None].float(), mask[None])
    inter = unflip(out.fused.joints_metres().float(), flip)  # (V, 21, 3)
    single = unflip(out.single.joints_metres().float(), flip)
    verts = unflip(out.fused.vertices.float() * (BBOX_3D_SIZE / 2), flip) if vertices else None
    if extrinsics is not None:
        R = torch.as_tensor(np.asarray(extrinsics, np.float32)[:, :, :3])
        if R.shape != (V, 3, 3):
            raise HamucoError(f"extrinsics must be (V, 3, 4) for V={V} views, got {tuple(np.shape(extrinsics))}")
        joints = fuse_world(inter[None], R[None], mask[None])[0]
        fused_verts = fuse_world(verts[None], R[None], mask[None])[0] if vertices else None
        frame = "world"
    else:
        ref = int(mask.to(torch.int64).argmax()) if reference_view is None else int(reference_view)
        if not (0 <= ref < V) or not bool(mask[ref]):
            raise HamucoError(f"reference view {ref} is not one of the valid views {mask.nonzero().flatten().tolist()}")
        joints = fuse_reference(inter[None], mask[None], ref)[0]
        fused_verts = verts[ref] if vertices else None
        frame = f"camera:{ref}"
    return HandPrediction(
        joints=joints.numpy(), coordinate_frame=frame, view_joints=inter.numpy(), single_view_joints=single.numpy(),
        joints_2d=out.fused.joints_2d_pixels(model.image_size).float().numpy(),
        pose=matrix_to_axis_angle(out.fused.rotmats.float()).numpy(), shape=out.fused.betas.float().numpy(),
        camera=out.fused.cam.float().numpy(), view_mask=mask.numpy(),
        vertices=None if fused_verts is None else fused_verts.numpy())
