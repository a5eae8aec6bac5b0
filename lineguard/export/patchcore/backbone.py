"""torchvision ResNet trunks cut after layer3, loaded from local state dicts only."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from lineguard.export.state_dict import match_state_dict, read_state_dict
from lineguard.runtime.errors import LineguardError

# arch → (torchvision builder, channels of layer2, layer3)
ARCHS: dict[str, tuple[Any, tuple[int, int]]] = {
    "resnet18": (torchvision.models.resnet18, (128, 256)),
    "resnet50": (torchvision.models.resnet50, (512, 1024)),
    "wide_resnet50_2": (torchvision.models.wide_resnet50_2, (512, 1024)),
}


class Backbone(nn.Module):
    """A ResNet up to layer3; returns PatchCore's mid-level features (layer2, layer3)."""

    def __init__(self, resnet: nn.Module, channels: tuple[int, int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3
        self.channels = channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f2 = self.layer2(self.layer1(self.stem(x)))
        return f2, self.layer3(f2)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_backbone(arch: str, weights: str | Path | None = None, seed: int = 0) -> tuple[Backbone, dict[str, Any]]:
    """Build ``arch`` with weights from a local torchvision state dict, or seeded random init.

    Returns the backbone in eval mode and a provenance record for the manifest.
    """
    if arch not in ARCHS:
        raise LineguardError(f"unknown backbone {arch!r}: use one of {', '.join(ARCHS)}")
    build, channels = ARCHS[arch]
    if weights is None:
        torch.manual_seed(seed)
        model = build(weights=None)
        msg = (f"no --weights given: {arch} has random weights (seed {seed}); random features rarely "
               "separate real defects, pass a torchvision state dict for real accuracy")
        warnings.warn(msg, stacklevel=2)
        prov = {"arch": arch, "weights": None, "seed": seed, "warning": msg}
    else:
        path = Path(weights)
        state = read_state_dict(path, ("state_dict",))
        model = build(weights=None)
        match_state_dict(path, state, model.state_dict(), arch)
        model.load_state_dict(state)
        prov = {"arch": arch, "weights": str(path.resolve()), "sha256": _sha256(path)}
    return Backbone(model, channels).eval(), prov
