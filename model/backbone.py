"""ResNet backbone returning the four feature levels H1..H4 of HaMuCo (supplementary Table A).

H1 = stem (conv, BN, ReLU, max-pool) + layer1, H2 = layer2, H3 = layer3, H4 = layer4.
For a 256×256 input, ResNet-50 gives (256, 64, 64), (512, 32, 32), (1024, 16, 16),
(2048, 8, 8); ResNet-18/34 give 64/128/256/512 channels at the same resolutions.

Weights are loaded in the constructor (``"imagenet"``, ``"none"`` or a local file);
``forward`` is pure tensor math.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from .errors import HamucoError
from .safe_load import describe_load_error, safe_torch_load

BACKBONES = {
    # name: (constructor, ImageNet weight enum, channels of H1..H4)
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
                 (64, 128, 256, 512)),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
                 (64, 128, 256, 512)),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
                 (256, 512, 1024, 2048)),
}
NO_WEIGHTS = ("none", "")
IMAGENET = "imagenet"


class BackboneWeightsError(HamucoError):
    """Backbone weights could not be obtained or do not fit the network."""


def imagenet_weights_file(name: str) -> tuple[str, Path]:
    """(download URL, hub cache path) of the torchvision ImageNet weights of ``name``."""
    url = BACKBONES[name][1].url
    filename = os.path.basename(urlparse(url).path)
    return url, Path(torch.hub.get_dir()) / "checkpoints" / filename


def _imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    weights = BACKBONES[name][1]
    url, cache = imagenet_weights_file(name)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # no network, proxy refused, corrupt partial file, ...
        raise BackboneWeightsError(
            f"Could not obtain the ImageNet weights of {name} ({cache.name}): {describe_load_error(exc)}\n"
            f"Provide the file in one of three ways:\n"
            f"  1. download {url} on a machine with network and pass the local file:"
            f" backbone_weights=PATH\n"
            f"  2. make the URL reachable (network / proxy) so torchvision can download it to {cache}\n"
            f"  3. copy the file to the torch hub cache: {cache}  (torch.hub.get_dir()/checkpoints/{cache.name};"
            f" set TORCH_HOME to move it)\n"
            f"Or train from scratch with backbone_weights=none."
        ) from exc


def _file_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneWeightsError(
            f"Backbone weights file not found: {path}. Pass an existing .pth file, "
            f"backbone_weights=imagenet or backbone_weights=none.")
    state = safe_torch_load(path, "backbone weights", BackboneWeightsError)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneWeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


class Backbone(nn.Module):
    """A torchvision ResNet without its classifier, returning ``(H1, H2, H3, H4)``.

    ``weights``: ``"imagenet"`` (torchvision's weights, downloaded into the torch hub cache on
    first use), ``"none"``/``None`` (random initialisation) or a path to a ResNet state dict
    (torchvision key names; the ``fc.*`` classifier may be present or absent).
    """

    def __init__(self, name: str = "resnet50", weights: Optional[str | os.PathLike] = IMAGENET) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise HamucoError(f"Unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
        build, _, channels = BACKBONES[name]
        self.name = name
        self.channels: tuple[int, int, int, int] = channels
        net = build(weights=None)
        if weights is None or (isinstance(weights, str) and weights.lower() in NO_WEIGHTS):
            self.weights_source = "none"
        else:
            if isinstance(weights, str) and weights.lower() == IMAGENET:
                state, source = _imagenet_state_dict(name), IMAGENET
            else:
                state, source = _file_state_dict(Path(weights)), str(weights)
            self._load(net, state, source)
            self.weights_source = source
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    @staticmethod
    def _load(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
        expected = set(net.state_dict())
        given = set(state)
        missing = sorted(k for k in expected - given if not k.startswith("fc."))
        unexpected = sorted(given - expected)
        if missing or unexpected:
            raise BackboneWeightsError(
                f"Backbone weights {source} do not fit the network: "
                f"missing keys {missing[:20]}{' …' if len(missing) > 20 else ''} "
                f"({len(missing)}), unexpected keys {unexpected[:20]}"
                f"{' …' if len(unexpected) > 20 else ''} ({len(unexpected)})")
        if not any(k.startswith("fc.") for k in given):
            state = {**state, **{k: v for k, v in net.state_dict().items() if k.startswith("fc.")}}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # shape mismatches
            raise BackboneWeightsError(f"Backbone weights {source} do not fit the network: {exc}") from exc

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (N, 3, H, W) → H1 (N, c1, H/4, W/4), H2 (/8), H3 (/16), H4 (/32)."""
        h = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        h1 = self.layer1(h)
        h2 = self.layer2(h1)
        h3 = self.layer3(h2)
        h4 = self.layer4(h3)
        return h1, h2, h3, h4
