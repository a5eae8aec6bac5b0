"""The segmentation objective both trainers use: λ_bce·BCE + λ_dice·Dice (EIAD's mask loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_dice(logits: torch.Tensor, target: torch.Tensor, w_bce: float = 1.0, w_dice: float = 1.0,
             per_item: bool = False) -> torch.Tensor:
    """Defect pixels are rare: Dice keeps them from being ignored (DRAEM's focal loss learned
    the positives far slower here). ``per_item``: one Dice per mask along the first axis, then
    averaged (each prompt's mask counts alike), else one soft Dice over the whole batch."""
    p = torch.sigmoid(logits)
    dims = tuple(range(1, p.dim())) if per_item else tuple(range(p.dim()))
    dice = 1 - (2 * (p * target).sum(dims) + 1) / (p.sum(dims) + target.sum(dims) + 1)
    return w_bce * F.binary_cross_entropy_with_logits(logits, target) + w_dice * dice.mean()
