"""PatchCore (Roth et al., 2022) as a lineguard anomaly expert: fit in PyTorch, export to ONNX."""

from lineguard.export.patchcore.backbone import ARCHS, Backbone, load_backbone
from lineguard.export.patchcore.model import PatchCore

__all__ = ["ARCHS", "Backbone", "PatchCore", "load_backbone"]
