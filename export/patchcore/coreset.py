"""Greedy k-center coreset selection (PatchCore §3.2) on a random projection of the features."""

from __future__ import annotations

import torch
from tqdm import tqdm


def greedy_coreset(features: torch.Tensor, k: int, proj_dim: int = 128, seed: int = 0,
                   progress: bool = True) -> torch.Tensor:
    """Indices of ``k`` rows of ``features`` [T, C] chosen by greedy farthest-point selection.

    Distances are measured after a Gaussian random projection to ``proj_dim`` dimensions
    (Johnson–Lindenstrauss), which preserves them well enough to pick centres and makes each
    step a single matrix–vector product over the pool.
    """
    t = features.shape[0]
    if k >= t:
        return torch.arange(t)
    g = torch.Generator().manual_seed(seed)
    if features.shape[1] > proj_dim:
        proj = torch.randn(features.shape[1], proj_dim, generator=g) / proj_dim**0.5
        z = features @ proj
    else:
        z = features.clone()
    z_sq = (z * z).sum(1)
    selected = torch.empty(k, dtype=torch.long)
    idx = int(torch.randint(t, (1,), generator=g))
    min_d = torch.full((t,), float("inf"))
    for i in tqdm(range(k), desc="coreset", unit="pt", disable=not progress, mininterval=1.0, leave=False):
        selected[i] = idx
        d = z_sq - 2.0 * (z @ z[idx]) + z_sq[idx]
        torch.minimum(min_d, d, out=min_d)
        idx = int(torch.argmax(min_d))
    return selected
