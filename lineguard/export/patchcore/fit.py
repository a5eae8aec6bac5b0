"""Fitting PatchCore: embed the normal images, subsample the memory bank, build the model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lineguard.export.patchcore.backbone import load_backbone
from lineguard.export.patchcore.coreset import greedy_coreset
from lineguard.export.patchcore.model import IMAGENET_MEAN, IMAGENET_STD, PatchCore
from lineguard.progress import bar
from lineguard.runtime.bundle.manifest import InputSpec
from lineguard.runtime.errors import LineguardError
from lineguard.runtime.stages.preprocess import to_batch


@dataclass
class PatchCoreConfig:
    backbone: str = "resnet18"
    weights: str | None = None
    size: int = 256
    coreset: float = 0.1  # share of all training patches kept in the memory bank
    max_bank_mb: float = 512.0  # cap on bank bytes, whatever the coreset ratio asks
    coreset_dim: int = 128
    score_mode: str = "reweight"
    num_neighbors: int = 9
    sigma: float = 4.0
    batch: int = 8
    seed: int = 0


def input_spec(size: int) -> InputSpec:
    return InputSpec(name="image", height=size, width=size, layout="NHWC", dtype="uint8", color="BGR",
                     normalize="in_graph", mean=IMAGENET_MEAN, std=IMAGENET_STD)


def bank_size(n_patches: int, dim: int, cfg: PatchCoreConfig) -> int:
    by_ratio = max(1, int(round(n_patches * cfg.coreset)))
    by_bytes = max(1, int(cfg.max_bank_mb * 2**20 // (dim * 4)))
    return min(by_ratio, by_bytes, n_patches)


@torch.no_grad()
def fit_patchcore(images: Sequence[np.ndarray], cfg: PatchCoreConfig,
                  progress: bool = True) -> tuple[PatchCore, dict[str, Any]]:
    """Fit on normal frames (any size, gray or colour). Returns the model and a fit record."""
    if not images:
        raise LineguardError("no training images")
    if not 0.0 < cfg.coreset <= 1.0:
        raise LineguardError(f"--coreset {cfg.coreset}: must be in (0, 1]")
    torch.manual_seed(cfg.seed)
    backbone, prov = load_backbone(cfg.backbone, cfg.weights, cfg.seed)
    model = PatchCore(backbone, (cfg.size, cfg.size), score_mode=cfg.score_mode,
                      num_neighbors=cfg.num_neighbors, sigma=cfg.sigma).eval()
    spec = input_spec(cfg.size)
    chunks = []
    for i in bar(range(0, len(images), cfg.batch), desc="embed", unit="batch", progress=progress, leave=False):
        x = torch.from_numpy(to_batch(images[i : i + cfg.batch], spec))
        f = model.embed(x)
        chunks.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
    feats = torch.cat(chunks)
    k = bank_size(feats.shape[0], feats.shape[1], cfg)
    idx = greedy_coreset(feats, k, cfg.coreset_dim, cfg.seed, progress)
    model.set_bank(feats[idx])
    record = {
        "backbone": prov,
        "train_images": len(images),
        "train_patches": int(feats.shape[0]),
        "bank_size": int(k),
        "bank_dim": int(feats.shape[1]),
        "bank_mb": round(k * feats.shape[1] * 4 / 2**20, 2),
        "coreset": cfg.coreset,
        "coreset_capped": k < round(feats.shape[0] * cfg.coreset),
    }
    return model, record
