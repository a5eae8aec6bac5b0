"""The rules that turn one ground-truth mask into DDQA answers (no generative model involved).

- AD (anomaly discrimination): "yes" for an image in a defect folder, "no" for ``good``.
- RDL (rough defect localisation): the 3×3 cell holding the largest share of the mask (ties: the
  first in reading order), asked as multiple choice with the right cell and three other cells.
- DFM (defect fine mapping): the box of the mask's largest 8-connected component (or of the
  whole mask with ``components="all"``), normalised to x0, y0, x1, y1 in [0, 1], x1/y1 exclusive.
  An answer is right when its IoU with the true box is at least 0.5.
- DC (defect classification): the defect folder's name, asked with every defect type as options.
"""

from __future__ import annotations

import cv2
import numpy as np

from lineguard.runtime.stages.findings import CELLS, grid_cell

TASKS = ("AD", "RDL", "DFM", "DC")
IOU_HIT = 0.5
RDL_OPTIONS = 4


def rough_cell(mask: np.ndarray) -> str:
    return grid_cell(mask)


def cell_options(answer: str, rng: np.random.Generator, n: int = RDL_OPTIONS) -> list[str]:
    """The right cell and ``n - 1`` other cells, in a seeded random order."""
    others = [c for c in CELLS if c != answer]
    picks = [answer] + [others[i] for i in rng.choice(len(others), n - 1, replace=False)]
    return [picks[i] for i in rng.permutation(n)]


def largest_component(mask: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == k


def norm_box(mask: np.ndarray, components: str = "largest") -> list[float] | None:
    """The mask's box as fractions of the image, x1/y1 exclusive; None for an empty mask."""
    m = largest_component(mask) if components == "largest" else mask > 0
    ys, xs = np.nonzero(m)
    if not len(xs):
        return None
    h, w = mask.shape
    return [round(float(v), 4) for v in (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)]


def box_iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def best_option(shares: dict[str, float], options: list[str]) -> str | None:
    """The option holding the largest share of a predicted mask (ties: the first option); None
    when no option holds any of it (no free guess)."""
    best = max(options, key=lambda c: shares.get(c, 0.0))
    return best if shares.get(best, 0.0) > 0 else None
