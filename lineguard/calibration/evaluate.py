"""Scoring a bundle's expert on labelled frames, and the metrics of `lineguard evaluate`.

Pixel metrics are computed at each frame's own size (the map is resized up bilinearly, as
the overlay a user sees is), so thin defects are not lost by shrinking their masks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lineguard.calibration.dataset import Labelled, load_labelled
from lineguard.calibration.metrics import evaluate as metrics
from lineguard.progress import bar
from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.errors import InputError
from lineguard.runtime.stages.expert import Expert


@dataclass
class Scored:
    scores: np.ndarray  # [N] raw image scores
    maps: list[np.ndarray]  # per frame, float32 at the frame's own size
    seconds: float  # wall time of the expert calls alone

    @property
    def fps(self) -> float:
        return len(self.scores) / self.seconds if self.seconds > 0 else float("nan")


def score_frames(expert: Expert, frames: Sequence[np.ndarray], batch: int = 1, desc: str = "score",
                 progress: bool = True) -> Scored:
    """Run the expert over frames (``batch`` at a time); maps come back at each frame's size."""
    scores, maps, busy = [], [], 0.0
    for i in bar(range(0, len(frames), batch), desc=desc, unit="batch", progress=progress, leave=False):
        chunk = frames[i : i + batch]
        t0 = time.perf_counter()
        results = expert(chunk)
        busy += time.perf_counter() - t0
        for f, r in zip(chunk, results):
            scores.append(r.score)
            h, w = f.shape[:2]
            amap = r.anomaly_map
            maps.append(amap if amap.shape == (h, w) else cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR))
    return Scored(np.asarray(scores, np.float64), maps, busy)


def flat_pixels(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps])


def evaluate_scored(data: Labelled, scored: Scored) -> dict[str, Any]:
    """All metrics for scored test frames (pixel ones only where some frame has a defect mask)."""
    has_masks = any(m.any() for m in data.masks)
    return metrics(data.labels, scored.scores, data.masks if has_masks else None, scored.maps if has_masks else None)


def evaluate_bundle(bundle: Bundle, data: Labelled, precision: str = "fp32", opts: EngineOptions | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Metrics and frames/s (batch 1, the line's case) of one variant on a labelled set."""
    expert = Expert(bundle, precision, opts)
    scored = score_frames(expert, data.frames, desc=f"evaluate {precision}", progress=progress)
    out = evaluate_scored(data, scored)
    out |= {"precision": precision, "provider": expert.engine.provider, "images": len(data.frames),
            "defective": int(data.labels.sum()), "frames_per_s": round(scored.fps, 2)}
    return out


def evaluate_all(bundle_path: str | Path, dataset: str | Path, precisions: str | None = None, every: int = 1,
                 opts: EngineOptions | None = None, progress: bool = True) -> dict[str, Any]:
    """Each variant on the same test frames, in one run (so frames/s are comparable)."""
    bundle = Bundle.load(bundle_path)
    have = list(bundle.stage("expert")["variants"])
    wanted = [p.strip() for p in precisions.split(",")] if precisions else [p for p in have if p != "trt"]
    for p in wanted:
        if p not in have:
            raise InputError(f"{bundle.root}: the expert has no {p} variant (has: {', '.join(have)})")
    data = load_labelled(dataset, every=every, progress=progress)
    runs = {p: evaluate_bundle(bundle, data, p, opts, progress) for p in wanted}
    if "fp32" in runs:
        base = runs["fp32"]["frames_per_s"]
        for r in runs.values():
            r["speedup_vs_fp32"] = round(r["frames_per_s"] / base, 2) if base else None
    return {"bundle": str(bundle.root), "dataset": str(dataset), "every": every,
            "thresholds": bundle.thresholds, "variants": runs}


COLUMNS = ("image_auroc", "pixel_auroc", "image_f1_max", "pixel_f1_max", "image_ap", "pixel_ap", "aupro")


def describe(results: dict[str, Any]) -> str:
    """One row per variant: the metrics, frames/s and the speed-up over fp32."""
    rows = [("variant", *(c.replace("_max", "") for c in COLUMNS), "frames/s", "vs fp32", "provider")]
    for p, r in results["variants"].items():
        vals = ["-" if r.get(c) is None else f"{r[c]:.3f}" for c in COLUMNS]
        rows.append((p, *vals, f"{r['frames_per_s']:.1f}", f"{r.get('speedup_vs_fp32') or '-'}",
                     r["provider"].removesuffix("ExecutionProvider")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    first = next(iter(results["variants"].values()))
    head = f"{first['images']} test images ({first['defective']} defective) from {results['dataset']}"
    return head + "\n" + "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
