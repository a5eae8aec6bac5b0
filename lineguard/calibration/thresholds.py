"""Threshold rules and score normalisation, written into the manifest (never into the graph).

- ``myriad``: the highest normal score over k folds (Myriad, §4): the expert is refitted on
  k−1 folds of the normal images and scores the held-out fold; a model never scores images
  from its own memory, so the maxima are those of unseen normal parts.
- ``f1``: the score that maximises F1 on labelled defect images (image and pixel level).
- ``manual``: the user's number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lineguard.calibration.metrics import f1_max
from lineguard.progress import bar
from lineguard.runtime.errors import InputError

# fit on normal frames → a scorer: frames → (image scores [N], per-frame maps)
Refit = Callable[[Sequence[np.ndarray]], Callable[[Sequence[np.ndarray]], tuple[np.ndarray, list[np.ndarray]]]]


def folds(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    """k disjoint, shuffled, nearly equal index folds of range(n)."""
    if k < 2:
        raise InputError(f"--folds {k}: need at least 2 folds")
    if n < k:
        raise InputError(f"{n} normal images are too few for {k} folds (need at least {k})")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(f) for f in np.array_split(order, k)]


def myriad_kfold(frames: Sequence[np.ndarray], refit: Refit, k: int = 3, seed: int = 0,
                 progress: bool = True) -> dict[str, Any]:
    """Held-out normal scores over k folds; thresholds are their maxima (image and pixel)."""
    held_scores = np.empty(len(frames))
    pixel_max = np.empty(len(frames))
    for fold in bar(folds(len(frames), k, seed), desc="k-fold", unit="fold", progress=progress):
        held = np.zeros(len(frames), bool)
        held[fold] = True
        scorer = refit([f for f, h in zip(frames, held) if not h])
        scores, maps = scorer([frames[j] for j in fold])
        held_scores[fold] = scores
        pixel_max[fold] = [float(m.max()) for m in maps]
    return {
        "rule": "myriad",
        "folds": k,
        "images": len(frames),
        "image": float(held_scores.max()),
        "pixel": float(pixel_max.max()),
        "normal_scores": held_scores.tolist(),
    }


def f1_thresholds(labels: np.ndarray, scores: np.ndarray, pixel_labels: np.ndarray | None = None,
                  pixel_scores: np.ndarray | None = None) -> dict[str, Any]:
    """F1-optimal image threshold (and pixel threshold where masks are given)."""
    f1, t = f1_max(labels, scores)
    out: dict[str, Any] = {"rule": "f1", "images": int(len(labels)), "image": float(t), "image_f1": float(f1)}
    if pixel_labels is not None and pixel_scores is not None and pixel_labels.any():
        pf1, pt = f1_max(pixel_labels, pixel_scores)
        out |= {"pixel": float(pt), "pixel_f1": float(pf1)}
    return out


def min_max(threshold: float, scores: Sequence[float]) -> dict[str, Any]:
    """anomalib's normalisation: (s − t)/(max − min) + 0.5, so the threshold maps to 0.5."""
    s = np.asarray(scores, np.float64)
    lo, hi = float(min(s.min(), threshold)), float(max(s.max(), threshold))
    return {"method": "min_max", "threshold": float(threshold), "min": lo, "max": hi}
