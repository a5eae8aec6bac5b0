"""Defect masks against the truth, as the runtime makes them: the expert's thresholded map alone
vs SAM prompted by it (``roi`` or ``frame`` mode). IoU and F1 are over every pixel of the
defective images (so a large defect weighs more); ``mean_iou`` is per image, then averaged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from lineguard.calibration.dataset import Sample, read_mask
from lineguard.progress import bar
from lineguard.runtime.bundle import Bundle
from lineguard.runtime.imageio import read_image
from lineguard.runtime.inspection import union_mask
from lineguard.runtime.stages.defects import find_defects
from lineguard.runtime.stages.expert import Expert
from lineguard.runtime.stages.sam import SamStage

ARMS = {"expert": (False, "frame"), "sam_roi": (True, "roi"), "sam_frame": (True, "frame")}


def overlap_scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    return {"iou": tp / max(tp + fp + fn, 1), "f1": 2 * tp / max(2 * tp + fp + fn, 1)}


def compare_masks(bundle: Bundle, samples: Sequence[Sample], arms: Sequence[str] = ("expert", "sam_roi"),
                  progress: bool = True) -> dict[str, Any]:
    """Per arm: pixel IoU/F1 over the defective ``samples``, mean per-image IoU, ms per image."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"arms {unknown}: use {list(ARMS)}")
    expert = Expert(bundle)
    sam = SamStage(bundle) if any(ARMS[a][0] for a in arms) else None
    picks = [s for s in samples if s.label]
    counts = {a: np.zeros(3, np.int64) for a in arms}
    per_image: dict[str, list[float]] = {a: [] for a in arms}
    seconds = dict.fromkeys(arms, 0.0)
    for s in bar(picks, desc="masks", unit="img", progress=progress, leave=False):
        frame = read_image(s.path)
        gt = read_mask(s, frame.shape[:2])
        amap = expert([frame])[0].anomaly_map
        for a in arms:
            use_sam, mode = ARMS[a]
            t0 = time.perf_counter()
            found = find_defects(frame, amap, bundle.thresholds, sam if use_sam else None, 3, mode)
            seconds[a] += time.perf_counter() - t0
            pred = union_mask(found, gt.shape)
            c = np.array([(pred & gt).sum(), (pred & ~gt).sum(), (~pred & gt).sum()], np.int64)
            counts[a] += c
            per_image[a].append(overlap_scores(*map(int, c))["iou"])
    n = max(len(picks), 1)
    return {"images": len(picks),
            "arms": {a: overlap_scores(*map(int, counts[a])) | {"mean_iou": float(np.mean(per_image[a] or [0.0])),
                                                              "ms_per_image": 1000 * seconds[a] / n}
                     for a in arms}}
