"""Greedy k-center coreset selection (PatchCore §3.2) on a random projection of the features."""

from __future__ import annotations

import torch

from lineguard.progress import bar


def greedy_coreset(features: torch.Tensor, k: int, proj_dim: int = 128, seed: int = 0,
                   progress: bool = True) -> torch.Tensor:
    """Indices of ``k`` rows of ``features`` [T, C] chosen by greedy farthest-point selection.

    Distances are measured after a Gaussian random projection to ``proj_dim`` dimensions
    (Johnson–Lindenstrauss), which preserves them well enough to pick centres.

    Each step only measures the points the new centre can possibly win: a point whose own
    centre is at distance ``D`` from the new one, and which lies ``r`` from its centre, is at
    least ``D - r`` from the new centre, so it cannot get closer unless ``D < 2r`` (triangle
    inequality). The selection is the plain greedy one; late steps touch few points.
    """
    t = features.shape[0]
    if k >= t:
        return torch.arange(t)
    g = torch.Generator().manual_seed(seed)
    if features.shape[1] > proj_dim:
        proj = torch.randn(features.shape[1], proj_dim, generator=g) / proj_dim**0.5
        z = features.float() @ proj
    else:
        z = features.float().clone()
    z_sq = (z * z).sum(1)
    selected = torch.empty(k, dtype=torch.long)
    centres = torch.empty(k, z.shape[1])
    min_d = torch.full((t,), float("inf"))  # squared distance to the nearest centre
    radius = torch.full((t,), float("inf"))  # its square root
    owner = torch.zeros(t, dtype=torch.long)  # which centre that is
    idx = int(torch.randint(t, (1,), generator=g))
    for i in bar(range(k), desc="coreset", unit="pt", progress=progress, mininterval=1.0, leave=False):
        selected[i] = idx
        c = z[idx]
        centres[i] = c
        if i == 0:
            cand = torch.arange(t)
        else:
            gap = (centres[:i] - c).pow(2).sum(1).sqrt()  # new centre ↔ each old centre
            # small slack so float rounding never prunes a point the exact test would keep
            cand = torch.nonzero(gap[owner] <= 2.0 * radius * (1 + 1e-5) + 1e-6).squeeze(1)
        d = (z_sq[cand] - 2.0 * (z[cand] @ c) + z_sq[idx]).clamp_min(0.0)
        better = d < min_d[cand]
        upd = cand[better]
        min_d[upd] = d[better]
        radius[upd] = d[better].sqrt()
        owner[upd] = i
        idx = int(torch.argmax(min_d))
    return selected
