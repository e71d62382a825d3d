"""OpenPose hand keypoints as 2D pseudo labels (the published pytorch-openpose hand network).

The network (:class:`OpenPoseHandNet`) is the CMU hand detector as ported by pytorch-openpose:
a VGG-19-style stage 1 (conv1_1 … conv5_3_CPM, conv6_1_CPM, conv6_2_CPM) followed by five
refinement stages (Mconv1_stageK … Mconv7_stageK, K = 2 … 6), stride 8, 22 output maps
(21 joints in OpenPose order + background). Its ``state_dict`` keys are exactly the flat keys of
the published ``hand_pose_model.pth`` (see ``openpose_hand_layout.json`` next to this file), so the
file loads with ``strict=True`` and no renaming.

Weights
-------
:func:`load_openpose_weights` returns ``(state_dict, sha256_hex)``: the tensors and the SHA-256 of
the weights *file* (for provenance). Without a local ``path`` the file is fetched once with
``torch.hub.load_state_dict_from_url`` into ``model_dir`` (default ``torch.hub.get_dir()/checkpoints``,
i.e. ``$TORCH_HOME/hub/checkpoints``); a file already there is used without any download. Every
problem (no file and no network, wrong hash, wrong keys or shapes, unreadable file) is a
:class:`WeightsError` saying what to do.

Inference (the published algorithm, ``Hand.__call__`` of pytorch-openpose)
-------------------------------------------------------------------------
For a BGR uint8 crop of H×W pixels and each scale ``s`` in ``scales`` (default 0.5, 1, 1.5, 2):
``f = s * box_size / H`` (box_size 368); ``cv2.resize(crop, (0, 0), fx=f, fy=f, INTER_CUBIC)``; pad
bottom/right to a multiple of 8 with pixel value 128; input ``= pixels / 256 - 0.5``; run the network;
upsample the 22 maps ×8 (INTER_CUBIC); drop the padding; resize to W×H (INTER_CUBIC); average over
scales (float64). Per joint (first 21 maps):

* smooth with a Gaussian, σ = 3 (``scipy.ndimage.gaussian_filter``, reflect border);
* threshold the *smoothed* map at 0.05; no pixel above → keypoint (0, 0), confidence 0;
* label the connected components of the thresholded map with 8-connectivity (the published code
  uses ``skimage.measure.label(connectivity=ndim)``) and keep the component whose **sum of the
  unsmoothed averaged heatmap** is largest (that is the published meaning of "largest": heat mass,
  not pixel count, so a broad blob beats a slightly higher but tiny one, and a tall compact peak can
  beat a wide faint plateau);
* the keypoint is the argmax of the *unsmoothed* averaged map inside that component (first in
  row-major order on ties), as integer pixel (x, y); its confidence is the unsmoothed averaged
  heatmap value there. (The published code zeroes the map outside the component and takes the
  global argmax; that differs only if every value in the component is ≤ 0, which it reports as a
  zero pixel outside the component.)

API
---
* ``label_crop_plain(net, crop, scales=SCALES) -> (keypoints (21, 2) float32, confidence (21,))``:
  the one-crop-at-a-time reference (``heatmaps_plain`` + ``peaks_plain``).
* ``OpenPoseLabeler(weights_path=None, weights_url=DEFAULT_URL, sha256=None, model_dir=None, …)``:
  loads the weights in its constructor; ``label(crops (N, H, W, 3) uint8, batch_size=None,
  progress=None) -> (keypoints (N, 21, 2) float32, confidence (N, 21) float32)``; ``name``,
  ``params`` (scales, box size, threshold, sigma, …) and ``weights_sha256`` for provenance.
  Per batch and scale all crops share the resize/pad geometry and are stacked into one network
  input (on a CPU split into calls of at most ``2·368²`` input pixels); the Gaussian, component
  selection and argmax run over all crops × joints at once (``peaks_batched``).

Same peaks as the plain version: the post-processing is the same arithmetic in the same order
(bit-identical heatmaps in → identical peaks out), and with ``channels_last`` (the default) the
CPU convolutions give bit-identical outputs for any batch size, so keypoints and confidences are
identical. With ``channels_last=False`` batched convolutions round differently (~1e-7), which can
at most move a peak between two near-equal neighbouring pixels.

Speed: the network (36.8 M parameters, ~206 GFLOP per 368² pass) is ≥ 97 % of the time; a 256²
crop at the 4 default scales is 7.5 × a 368² pass, ~3.4 s on 2 CPU cores, batched or not.
"""
from __future__ import annotations

import contextlib
import os
import urllib.error
from pathlib import Path
from typing import Iterable, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from tqdm import tqdm

from model.errors import HamucoError
from model.safe_load import describe_load_error

from ..provenance import sha256_file

DEFAULT_URL = "https://huggingface.co/lllyasviel/Annotators/resolve/main/hand_pose_model.pth"
DEFAULT_FILE_NAME = "hand_pose_model.pth"
LAYOUT_PATH = Path(__file__).with_name("openpose_hand_layout.json")

NUM_JOINTS = 21
NUM_MAPS = 22  # 21 joints + background
STRIDE = 8
PAD_VALUE = 128
BOX_SIZE = 368
SCALES = (0.5, 1.0, 1.5, 2.0)
THRESHOLD = 0.05
SIGMA = 3.0
PRECISIONS = ("auto", "fp32", "fast")  # what a user asks for; resolve_implementation() says what runs
# What runs (recorded in the shard's labeler params; each but fp32 has its own label version):
#   fp32    the published algorithm, oneDNN direct convolutions
#   bf16    bf16 autocast + channels_last, on a CPU with native bf16 (AVX512_BF16/AMX): ~5x fp32
#   fp16    fp16 autocast on a CUDA device
#   nnpack  fp32 through NNPACK's Winograd (3x3) and FFT (7x7) convolutions, on a CPU without native
#           bf16 (AVX2): ~1.9x fp32 on a 2-core AVX2 EPYC, peaks the same to ~1e-6 relative
IMPLEMENTATIONS = ("fp32", "bf16", "fp16", "nnpack")
LABEL_VERSION_TAG = {"fp32": None, "bf16": "fast", "fp16": "fast-fp16", "nnpack": "fast-nnpack"}
CPU_MAX_PIXELS_PER_CALL = 2 * 368 * 368  # network input pixels per call on a CPU (see OpenPoseLabeler)

# 8-connectivity, as skimage.measure.label(connectivity=2) in the published code.
_STRUCT_2D = np.ones((3, 3), dtype=bool)
# The same for a stack of independent maps: no connection along the stacking axis.
_STRUCT_STACK = np.zeros((3, 3, 3), dtype=bool)
_STRUCT_STACK[1] = True


class WeightsError(HamucoError):
    """The OpenPose hand weights are missing, unreachable, corrupted or of the wrong layout."""


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------

# (name, in_channels, out_channels, kernel) of stage 1, in order; "pool" = 2×2 max-pool, stride 2.
_STAGE1 = (
    ("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), "pool",
    ("conv2_1", 64, 128, 3), ("conv2_2", 128, 128, 3), "pool",
    ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3), "pool",
    ("conv4_1", 256, 512, 3), ("conv4_2", 512, 512, 3), ("conv4_3", 512, 512, 3), ("conv4_4", 512, 512, 3),
    ("conv5_1", 512, 512, 3), ("conv5_2", 512, 512, 3), ("conv5_3_CPM", 512, 128, 3),
)
_STAGE1_HEAD = (("conv6_1_CPM", 128, 512, 1), ("conv6_2_CPM", 512, NUM_MAPS, 1))
_FEATURES = 128
_REFINE_STAGES = (2, 3, 4, 5, 6)


def nnpack_available() -> bool:
    """Whether torch's NNPACK convolutions run here (the call also initialises NNPACK)."""
    try:
        return bool(torch.backends.nnpack.is_available())
    except Exception:
        return False


def resolve_implementation(precision: str = "auto", device: str | torch.device = "cpu") -> tuple[str, str]:
    """What ``precision`` runs on ``device``, and why: ``fp32`` is the published fp32 algorithm;
    ``fast`` (and ``auto``, the default) the fastest path of this device: bf16 where the CPU computes
    bf16 natively, fp16 on CUDA, NNPACK fp32 on a CPU without native bf16 (emulated bf16 would be
    many times slower than fp32 there), else fp32."""
    from model.precision import cpu_has_native_bf16, describe_device

    if precision not in PRECISIONS:
        raise HamucoError(f"OpenPose precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    device = torch.device(device)
    if precision == "fp32":
        return "fp32", "as asked (the published fp32 algorithm)"
    if device.type == "cuda":
        return "fp16", "fp16 autocast on the GPU"
    where = describe_device(device)
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16", f"{where} computes bf16 natively"
    if device.type == "cpu" and nnpack_available():
        return "nnpack", f"{where} has no native bf16: fp32 through NNPACK's Winograd/FFT convolutions"
    return "fp32", f"{where} has no native bf16 and no NNPACK: the plain fp32 path"


class _NNPackConv2d(nn.Module):
    """A Conv2d (stride 1, no dilation or groups, kernel > 1) run by NNPACK's fp32 convolution (Winograd for
    3×3, FFT for larger kernels; inference only), with the same parameters."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight, self.bias, self.padding = conv.weight, conv.bias, [int(p) for p in conv.padding]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch._nnpack_spatial_convolution(x.contiguous(), self.weight, self.bias, self.padding)


def nnpack_network(net: "OpenPoseHandNet") -> "OpenPoseHandNet":
    """A copy of ``net`` (sharing its parameters) whose spatial convolutions run through NNPACK; 1×1
    convolutions stay with oneDNN (a plain matrix product: no faster algorithm to gain)."""
    import copy

    fast = copy.copy(net)  # the modules dict is copied below; parameters are shared
    fast._modules = dict(net._modules)
    for name, m in net.named_children():
        if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) and m.stride == (1, 1) \
                and m.dilation == (1, 1) and m.groups == 1:
            fast._modules[name] = _NNPackConv2d(m)
    return fast


def _refine_layers(stage: int) -> tuple[tuple[str, int, int, int], ...]:
    c_in = NUM_MAPS + _FEATURES  # 150: previous maps ++ conv5_3_CPM features
    return (
        (f"Mconv1_stage{stage}", c_in, 128, 7),
        *((f"Mconv{i}_stage{stage}", 128, 128, 7) for i in range(2, 6)),
        (f"Mconv6_stage{stage}", 128, 128, 1),
        (f"Mconv7_stage{stage}", 128, NUM_MAPS, 1),
    )


class OpenPoseHandNet(nn.Module):
    """pytorch-openpose hand network: (B, 3, H, W) normalised BGR → (B, 22, H/8, W/8) heatmaps.

    Layers are attributes named like the published weight keys (``conv1_1``, …, ``Mconv7_stage6``),
    so ``state_dict()`` has exactly the 104 keys of ``hand_pose_model.pth``. H and W should be
    multiples of 8 (the labeler pads to that). ReLU follows every conv except the last of each
    stage (conv6_2_CPM, Mconv7_stageK).
    """

    def __init__(self) -> None:
        super().__init__()
        self._stage1: list[str] = []
        for item in _STAGE1:
            if item == "pool":
                self._stage1.append("pool")
            else:
                self._add_conv(*item)
                self._stage1.append(item[0])
        self._head1 = [self._add_conv(*spec) for spec in _STAGE1_HEAD]
        self._stages = [[self._add_conv(*spec) for spec in _refine_layers(k)] for k in _REFINE_STAGES]

    def _add_conv(self, name: str, c_in: int, c_out: int, k: int) -> str:
        setattr(self, name, nn.Conv2d(c_in, c_out, kernel_size=k, stride=1, padding=k // 2))
        return name

    def _run(self, names: Sequence[str], x: torch.Tensor) -> torch.Tensor:
        last = len(names) - 1
        for i, name in enumerate(names):
            x = getattr(self, name)(x)
            if i < last:
                x = F.relu(x, inplace=True)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """conv5_3_CPM features (ReLU'd), 128 channels at stride 8."""
        for name in self._stage1:
            if name == "pool":
                x = F.max_pool2d(x, kernel_size=2, stride=2)
            else:
                x = F.relu(getattr(self, name)(x), inplace=True)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        out = self._run(self._head1, feats)
        for names in self._stages:
            out = self._run(names, torch.cat([out, feats], dim=1))
        return out


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------

def _cache_path(file_name: str, model_dir: Optional[str | os.PathLike]) -> Path:
    base = Path(model_dir) if model_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    return base / file_name


def _check_sha256(file: Path, expected: Optional[str]) -> str:
    actual = sha256_file(file)
    if expected is not None and actual.lower() != expected.strip().lower():
        raise WeightsError(
            f"OpenPose hand weights {file} have the wrong SHA-256: expected {expected.strip().lower()}, "
            f"got {actual}. The file is corrupted or a different model; replace it with the published "
            f"{DEFAULT_FILE_NAME} (or give the matching sha256).")
    return actual


def _torch_load(file: Path) -> object:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"cannot read OpenPose hand weights {file}: {describe_load_error(e)}. "
                           f"Expected a PyTorch state dict such as the published {DEFAULT_FILE_NAME}.") from None


def _download_error(url: str, file_name: str, cache: Path, err: BaseException) -> WeightsError:
    return WeightsError(
        f"OpenPose hand weights '{file_name}' are missing: not found at {cache} and the download from "
        f"{url} failed ({type(err).__name__}: {err}).\n"
        f"Provide the file in one of three ways:\n"
        f"  1. a local path: set weights_path (luigi.cfg section [OpenPoseLabeler], e.g. "
        f"'weights_path = /data/{file_name}', or --weights /data/{file_name} on the command line);\n"
        f"  2. a reachable URL: set weights_url (luigi.cfg [OpenPoseLabeler] weights_url = ...);\n"
        f"  3. copy the file into the cache directory, exactly as {cache}\n"
        f"The published file is {DEFAULT_URL}")


def check_state_dict(state: object, source: str = "the weights") -> None:
    """Raise :class:`WeightsError` unless ``state`` has exactly the keys and shapes of OpenPoseHandNet."""
    if not isinstance(state, dict):
        raise WeightsError(f"{source} do not hold a state dict (found {type(state).__name__}); "
                           f"expected the published {DEFAULT_FILE_NAME}.")
    expected = {k: tuple(v.shape) for k, v in _reference_shapes().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    bad_shape = []
    for k, shape in expected.items():
        if k in state:
            v = state[k]
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            if got != shape:
                bad_shape.append(f"{k}: expected {list(shape)}, got {list(got) if isinstance(got, tuple) else got}")
    if missing or unexpected or bad_shape:
        lines = [f"{source} do not match the OpenPose hand network layout (104 tensors):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(map(str, unexpected))}")
        if bad_shape:
            lines.append(f"  shape mismatches ({len(bad_shape)}): {'; '.join(bad_shape)}")
        lines.append(f"Use the published {DEFAULT_FILE_NAME} ({DEFAULT_URL}).")
        raise WeightsError("\n".join(lines))


_SHAPES: Optional[dict[str, torch.Size]] = None


def _reference_shapes() -> dict[str, torch.Size]:
    global _SHAPES
    if _SHAPES is None:
        with torch.device("meta"):
            net = OpenPoseHandNet()
        _SHAPES = {k: v for k, v in net.state_dict().items()}
    return _SHAPES


def load_openpose_weights(path: Optional[str | os.PathLike] = None, url: str = DEFAULT_URL,
                          file_name: str = DEFAULT_FILE_NAME, sha256: Optional[str] = None,
                          model_dir: Optional[str | os.PathLike] = None,
                          progress: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """Load and check the hand weights; returns ``(state_dict, sha256_hex_of_the_file)``.

    ``path`` — a local ``.pth`` file (``torch.load(..., weights_only=True)``). Without it, ``url`` is
    fetched with ``torch.hub.load_state_dict_from_url`` into ``model_dir/file_name`` (default
    ``torch.hub.get_dir()/checkpoints/file_name``); an existing file there is used as is.
    ``sha256`` — if given, the file must have this hash. The state dict is checked against the
    network layout (missing/unexpected keys, shapes) before anyone calls ``load_state_dict``.
    """
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise WeightsError(f"OpenPose hand weights file {file} does not exist (weights_path). "
                               f"Download {DEFAULT_URL} there, or unset weights_path to use the cache "
                               f"{_cache_path(file_name, model_dir)}.")
        digest = _check_sha256(file, sha256)
        state = _torch_load(file)
    else:
        cache = _cache_path(file_name, model_dir)
        digest = _check_sha256(cache, sha256) if cache.is_file() else None  # before unpickling anything
        try:
            state = torch.hub.load_state_dict_from_url(
                url, model_dir=None if model_dir is None else str(model_dir), file_name=file_name,
                map_location="cpu", weights_only=True, progress=progress)
        except (urllib.error.URLError, OSError, ValueError) as e:  # HTTPError ⊂ URLError ⊂ OSError
            if cache.is_file():  # the file was there (or arrived) but is unreadable
                raise WeightsError(f"cannot read OpenPose hand weights {cache}: {describe_load_error(e)}") from None
            raise _download_error(url, file_name, cache, e) from e
        except Exception as e:
            raise WeightsError(f"cannot read OpenPose hand weights {cache}: {describe_load_error(e)}. Delete the "
                               f"file to download it again, or provide weights_path.") from None
        if not cache.is_file():  # should not happen: torch.hub writes exactly there
            raise WeightsError(f"OpenPose hand weights were loaded from {url} but {cache} is not there.")
        if digest is None:  # downloaded just now
            digest = _check_sha256(cache, sha256)
        file = cache
    check_state_dict(state, f"OpenPose hand weights {file}")
    return state, digest


def build_openpose_hand(path: Optional[str | os.PathLike] = None, url: str = DEFAULT_URL,
                        file_name: str = DEFAULT_FILE_NAME, sha256: Optional[str] = None,
                        model_dir: Optional[str | os.PathLike] = None,
                        progress: bool = True) -> OpenPoseHandNet:
    """An :class:`OpenPoseHandNet` in eval mode with the weights loaded (``strict=True``).

    The file's SHA-256 is on the returned module as ``net.weights_sha256``.
    """
    state, digest = load_openpose_weights(path, url=url, file_name=file_name, sha256=sha256,
                                          model_dir=model_dir, progress=progress)
    net = OpenPoseHandNet()
    net.load_state_dict(state, strict=True)
    net.eval()
    net.weights_sha256 = digest
    return net


def random_hand_net(seed: int, calibration_crop: np.ndarray, scale: float = 1.0,
                    joints_on: int = NUM_JOINTS) -> OpenPoseHandNet:
    """A randomly initialised network (published layout) whose heatmaps depend on the image and pass
    the peak threshold: for tests and benchmarks where the published weights are not at hand.

    He-normal initialisation keeps the signal alive through the 40 layers (PyTorch's default
    initialisation shrinks it until the maps no longer depend on the image). The last convolution
    is then rescaled so that on ``calibration_crop`` (resized by ``scale`` × 368 / its height, as
    the labeler does) every map has mean 0 and standard deviation 0.1; maps from ``joints_on`` on
    (and the background) are shifted by −1 so they never reach the threshold. Its labels mean
    nothing; its cost and its numerical behaviour are the real network's.
    """
    torch.manual_seed(seed)
    net = OpenPoseHandNet().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.bias.zero_()
        padded, _ = _resize_pad(calibration_crop, scale * BOX_SIZE / calibration_crop.shape[0])
        out = net(_to_input(padded))[0]
        mean, std = out.mean((1, 2)), out.std((1, 2))
        gain = 0.1 / std
        offset = torch.zeros(NUM_MAPS)
        offset[joints_on:] = -1.0
        net.Mconv7_stage6.weight.mul_(gain[:, None, None, None])
        net.Mconv7_stage6.bias.copy_(-mean * gain + offset)
    return net


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------

def _scale_factors(height: int, scales: Iterable[float], box_size: int) -> list[float]:
    return [float(s) * box_size / height for s in scales]


def _resize_pad(crop: np.ndarray, f: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Published pre-processing of one crop at one scale: cubic resize (``fx = fy = f``), then pad
    bottom/right to a multiple of 8 with pixel value 128. Returns (padded image, resized (h, w))."""
    img = cv2.resize(crop, (0, 0), fx=f, fy=f, interpolation=cv2.INTER_CUBIC)
    h, w = img.shape[:2]
    hp, wp = -(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE
    if (hp, wp) == (h, w):
        return img, (h, w)
    out = np.full((hp, wp, 3), PAD_VALUE, dtype=img.dtype)
    out[:h, :w] = img
    return out, (h, w)


def _to_input(padded: np.ndarray) -> torch.Tensor:
    """(…, H, W, 3) uint8 → (B, 3, H, W) float32 ``pixels / 256 - 0.5``."""
    x = torch.from_numpy(np.ascontiguousarray(padded))
    if x.ndim == 3:
        x = x[None]
    return x.permute(0, 3, 1, 2).float() / 256 - 0.5


def _heatmap_to_crop(maps: np.ndarray, resized_hw: tuple[int, int], crop_hw: tuple[int, int]) -> np.ndarray:
    """(h/8, w/8, 22) float32 network maps → (H, W, 22) crop-sized maps (published steps)."""
    up = cv2.resize(maps, (0, 0), fx=STRIDE, fy=STRIDE, interpolation=cv2.INTER_CUBIC)
    up = up[:resized_hw[0], :resized_hw[1]]
    return cv2.resize(up, (crop_hw[1], crop_hw[0]), interpolation=cv2.INTER_CUBIC)


def _check_crops(crops: np.ndarray, batched: bool) -> np.ndarray:
    crops = np.asarray(crops)
    nd = 4 if batched else 3
    if crops.ndim != nd or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        want = "(N, H, W, 3)" if batched else "(H, W, 3)"
        raise ValueError(f"crops must be {want} uint8 BGR images, got {crops.shape} {crops.dtype}")
    return crops


def heatmaps_plain(net: nn.Module, crop: np.ndarray, scales: Sequence[float] = SCALES,
                   box_size: int = BOX_SIZE) -> np.ndarray:
    """Scale-averaged heatmaps (H, W, 22) float64 of one crop, one network call per scale."""
    crop = _check_crops(crop, batched=False)
    h, w = crop.shape[:2]
    factors = _scale_factors(h, scales, box_size)
    avg = np.zeros((h, w, NUM_MAPS), dtype=np.float64)
    device = next(net.parameters()).device
    for f in factors:
        padded, resized_hw = _resize_pad(crop, f)
        with torch.inference_mode():
            out = net(_to_input(padded).to(device)).float().cpu().numpy()
        maps = np.ascontiguousarray(out[0].transpose(1, 2, 0))
        avg += _heatmap_to_crop(maps, resized_hw, (h, w)) / len(factors)
    return avg


def peaks_plain(heatmap: np.ndarray, threshold: float = THRESHOLD,
                sigma: float = SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """Published per-joint peak rule on one (H, W, ≥21) averaged heatmap → (21, 2) xy, (21,) conf."""
    kp = np.zeros((NUM_JOINTS, 2), np.float32)
    conf = np.zeros(NUM_JOINTS, np.float32)
    for j in range(NUM_JOINTS):
        raw = np.ascontiguousarray(heatmap[:, :, j], dtype=np.float64)
        smooth = ndimage.gaussian_filter(raw, sigma=sigma)
        binary = smooth > threshold
        if not binary.any():
            continue
        labels, n = ndimage.label(binary, structure=_STRUCT_2D)
        sums = ndimage.sum_labels(raw, labels, index=np.arange(1, n + 1))
        best = int(np.argmax(sums)) + 1
        inside = np.where(labels == best, raw, -np.inf)
        y, x = np.unravel_index(int(np.argmax(inside)), inside.shape)
        kp[j] = (x, y)
        conf[j] = raw[y, x]
    return kp, conf


def label_crop_plain(net: nn.Module, crop: np.ndarray, scales: Sequence[float] = SCALES,
                     box_size: int = BOX_SIZE, threshold: float = THRESHOLD,
                     sigma: float = SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """Reference: one BGR uint8 crop (H, W, 3) → keypoints (21, 2) xy pixels, confidence (21,)."""
    return peaks_plain(heatmaps_plain(net, crop, scales, box_size), threshold, sigma)


def peaks_batched(heatmaps: np.ndarray, threshold: float = THRESHOLD,
                  sigma: float = SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """:func:`peaks_plain` for (N, H, W, ≥21) heatmaps at once; identical results.

    * Maps that cannot reach the threshold are skipped without smoothing: the normalised Gaussian
      is a convex combination, so ``smoothed ≤ max(raw)`` (up to rounding, covered by a 1e-9
      relative margin); such joints are (0, 0) with confidence 0 in the plain version too.
    * The Gaussian runs on the remaining maps stacked as (K, H, W) with σ = 0 on the stacking axis:
      scipy applies the same 1-D passes in the same order as on each 2-D map, bit for bit.
    * Components are labelled in one call with a structure that connects nothing across maps;
      component sums use ``bincount`` in raster order, as ``ndimage.sum_labels`` does per map;
      ties go to the lowest label (raster order within a map), as ``np.argmax`` in the plain code.
    """
    n, h, w = heatmaps.shape[:3]
    kp = np.zeros((n, NUM_JOINTS, 2), np.float32)
    conf = np.zeros((n, NUM_JOINTS), np.float32)
    if n == 0 or h == 0 or w == 0:
        return kp, conf
    maps = np.ascontiguousarray(np.moveaxis(heatmaps[..., :NUM_JOINTS], -1, 1), dtype=np.float64)
    maps = maps.reshape(n * NUM_JOINTS, h, w)  # (crops × joints, H, W)
    cand = np.ones(len(maps), bool)
    if threshold > 0:
        cand = maps.reshape(len(maps), -1).max(axis=1) * (1 + 1e-9) > threshold
        if not cand.all():
            maps = maps[cand]
    ci, cj = np.divmod(np.nonzero(cand)[0], NUM_JOINTS)
    if len(maps) == 0:
        return kp, conf
    k = len(maps)
    smooth = ndimage.gaussian_filter(maps, sigma=(0, sigma, sigma))
    binary = smooth > threshold
    labels, count = ndimage.label(binary, structure=_STRUCT_STACK)
    if count == 0:
        return kp, conf
    # Only labelled pixels matter: their flat positions (sorted, map-major), labels and values.
    pos = np.flatnonzero(labels)
    lab = labels.ravel()[pos]
    val = maps.ravel()[pos]
    own = pos // (h * w)  # map of each pixel
    # Component sums, accumulated in raster order like ndimage.sum_labels on each map.
    sums = np.bincount(lab, weights=val, minlength=count + 1)
    owner = np.empty(count + 1, np.int64)
    owner[lab] = own
    comp = np.arange(1, count + 1)
    best_sum = np.full(k, -np.inf)
    np.maximum.at(best_sum, owner[comp], sums[comp])
    winners = comp[sums[comp] == best_sum[owner[comp]]]
    none = np.iinfo(np.int64).max
    chosen = np.full(k, none)
    np.minimum.at(chosen, owner[winners], winners)  # lowest label on a tie, like np.argmax
    # Argmax of the raw map inside the chosen component; first in raster order on ties.
    inside = lab == chosen[own]
    pos, val, own = pos[inside], val[inside], own[inside]
    peak = np.full(k, -np.inf)
    np.maximum.at(peak, own, val)
    at_peak = val == peak[own]
    first = np.full(k, none)
    np.minimum.at(first, own[at_peak], pos[at_peak])
    sel = np.nonzero(first != none)[0]
    ys, xs = np.divmod(first[sel] - sel * (h * w), w)
    kp[ci[sel], cj[sel], 0] = xs
    kp[ci[sel], cj[sel], 1] = ys
    conf[ci[sel], cj[sel]] = peak[sel]
    return kp, conf


class OpenPoseLabeler:
    """OpenPose hand keypoints for batches of crops.

    The constructor loads the weights (``weights_path``, else ``weights_url`` cached in
    ``model_dir`` / ``torch.hub.get_dir()/checkpoints``; optional ``sha256``), as smplx loads its
    model; :meth:`label` runs crops through the network one batch per scale.

    ``scales``, ``box_size``, ``threshold``, ``sigma``: the published inference parameters.
    ``device``: "cpu" or e.g. "cuda". ``channels_last``: NHWC convolutions (faster on CPU, and
    batch-size invariant). ``batch_size``: crops per progress step (heatmaps ~12 MB per 256² crop; network memory
    is set by ``max_pixels_per_call``, ~2 GB peak on a CPU).
    ``max_pixels_per_call``: network input pixels per call within a batch and scale; "auto" =
    2·368² on a CPU (larger inputs one crop at a time: no gain from batching them, more cache
    misses), unbounded on a GPU; ``None`` = unbounded. ``progress``: tqdm bar over batches.
    ``precision``: ``auto`` (default) and ``fast`` run this device's fastest path, ``fp32`` the published
    algorithm (:func:`resolve_implementation`); ``implementation`` forces one path (benchmarks).
    """

    name = "openpose"

    def __init__(self, weights_path: Optional[str | os.PathLike] = None, weights_url: str = DEFAULT_URL,
                 sha256: Optional[str] = None, model_dir: Optional[str | os.PathLike] = None,
                 file_name: str = DEFAULT_FILE_NAME,
                 scales: Sequence[float] = SCALES, box_size: int = BOX_SIZE, threshold: float = THRESHOLD,
                 sigma: float = SIGMA, device: str | torch.device = "cpu", channels_last: bool = True,
                 batch_size: int = 4, max_pixels_per_call: Optional[int] | str = "auto",
                 progress: bool = True, precision: str = "auto", implementation: Optional[str] = None) -> None:
        self.net = build_openpose_hand(weights_path, url=weights_url, file_name=file_name, sha256=sha256,
                                       model_dir=model_dir, progress=progress)
        self.weights_sha256: str = self.net.weights_sha256
        self.device = torch.device(device)
        self.precision = precision
        self.implementation, self.implementation_reason = resolve_implementation(precision, self.device)
        if implementation is not None:  # benchmarks: one path measured on any machine
            if implementation not in IMPLEMENTATIONS:
                raise HamucoError(f"OpenPose implementation must be one of {', '.join(IMPLEMENTATIONS)}, "
                                  f"not {implementation!r}")
            self.implementation, self.implementation_reason = implementation, "forced (benchmark)"
        # NNPACK takes contiguous NCHW tensors
        self.channels_last = channels_last and self.implementation != "nnpack"
        self.net.to(self.device)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self._forward = nnpack_network(self.net) if self.implementation == "nnpack" else self.net
        self.scales = tuple(float(s) for s in scales)
        self.box_size = int(box_size)
        self.threshold = float(threshold)
        self.sigma = float(sigma)
        self.batch_size = int(batch_size)
        if max_pixels_per_call == "auto":  # bounded on the CPU, whole batches on a GPU
            max_pixels_per_call = CPU_MAX_PIXELS_PER_CALL if self.device.type == "cpu" else None
        self.max_pixels_per_call = max_pixels_per_call
        self.progress = progress
        self.params = {
            "precision": precision, "implementation": self.implementation,
            "implementation_reason": self.implementation_reason,
            "scales": list(self.scales), "box_size": self.box_size, "threshold": self.threshold,
            "sigma": self.sigma, "stride": STRIDE, "pad_value": PAD_VALUE,
            "components": "8-connected; keep the one with the largest sum of the averaged heatmap",
            "confidence": "averaged (unsmoothed) heatmap at the peak; 0 with keypoint (0, 0) below threshold",
        }

    def _run_net(self, padded: np.ndarray) -> torch.Tensor:
        """(N, h, w, 3) uint8 padded crops → (N, 22, h/8, w/8) float32 on the CPU.

        The crops go through the network together, in chunks of at most ``max_pixels_per_call``
        input pixels (at least one crop): on a CPU a batch of several 736² inputs gains nothing
        over one at a time and its larger activations spill out of the caches.
        """
        n, h, w = padded.shape[:3]
        per_call = n if self.max_pixels_per_call is None else max(1, self.max_pixels_per_call // (h * w))
        outs = []
        for s in range(0, n, per_call):
            x = _to_input(padded[s:s + per_call]).to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), self._autocast():
                outs.append(self._forward(x).float().cpu())
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _autocast(self):
        """bf16 autocast (CPU with native bf16) or fp16 (GPU); fp32 and NNPACK compute in fp32."""
        if self.implementation not in ("bf16", "fp16"):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.implementation == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def heatmaps(self, crops: np.ndarray) -> np.ndarray:
        """Scale-averaged heatmaps (N, H, W, 22) float64 of same-sized crops, stacked per scale."""
        crops = _check_crops(crops, batched=True)
        n, h, w = crops.shape[:3]
        factors = _scale_factors(h, self.scales, self.box_size)
        avg = np.zeros((n, h, w, NUM_MAPS), dtype=np.float64)
        if n == 0:
            return avg
        for f in factors:
            # All crops share the size, hence the resized size and padding.
            resized = [_resize_pad(c, f) for c in crops]
            padded = np.stack([r[0] for r in resized])
            resized_hw = resized[0][1]
            out = self._run_net(padded).permute(0, 2, 3, 1).contiguous().numpy()  # (N, h/8, w/8, 22)
            for i in range(n):
                avg[i] += _heatmap_to_crop(out[i], resized_hw, (h, w)) / len(factors)
        return avg

    def label(self, crops: np.ndarray, batch_size: Optional[int] = None,
              progress: Optional[bool] = None) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W, 3) BGR uint8 crops → keypoints (N, 21, 2) float32 xy pixels, confidence (N, 21) float32."""
        crops = _check_crops(crops, batched=True)
        n = len(crops)
        bs = max(1, int(batch_size or self.batch_size))
        show = self.progress if progress is None else progress
        kp = np.zeros((n, NUM_JOINTS, 2), np.float32)
        conf = np.zeros((n, NUM_JOINTS), np.float32)
        starts = range(0, n, bs)
        with torch.inference_mode():
            for s in tqdm(starts, desc="openpose labels", unit="batch", disable=not show):
                heat = self.heatmaps(crops[s:s + bs])
                kp[s:s + bs], conf[s:s + bs] = peaks_batched(heat, self.threshold, self.sigma)
        return kp, conf

    def close(self) -> None:
        """Nothing to release (API parity with the MediaPipe labeler)."""
