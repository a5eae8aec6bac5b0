"""Defect masks and findings for a flagged frame: the expert's map prompts SAM (or stands in for it).

Prompts are the map's connected regions above the pixel threshold, hottest first, top K: per
region a padded box and its peak point (EIAD's use of SAM, prompted by what the vision expert
found). ``roi`` mode encodes only a crop around the prompts, so small defects get more of the
encoder's pixels and a large frame costs one small encoding; the crop's origin is an integer
offset, so masks map back to frame pixels exactly. Without SAM in the bundle, the mask is the
thresholded map itself, and each finding says ``mask_source: "expert"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from lineguard.runtime.stages.classify import DefectClassifier, describe_region
from lineguard.runtime.stages.findings import Region, default_level, region_from_mask, regions
from lineguard.runtime.stages.sam import SamStage, map_prompt

MODES = ("frame", "roi")


@dataclass
class Defect:
    region: Region
    mask: np.ndarray = field(repr=False)  # bool [H, W], frame pixels
    mask_source: str  # "sam" or "expert"
    sam_iou: float | None = None  # SAM's own quality estimate for its mask
    cls: str | None = None  # defect type from the bundle's classifier ("unknown" when none is near)
    class_distance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        extra = {"class": self.cls, "class_distance": round(self.class_distance, 3)} if self.cls else {}
        return self.region.to_dict() | {"mask_source": self.mask_source, "sam_iou": self.sam_iou} | extra


def prompts(amap: np.ndarray, frame_hw: tuple[int, int], level: float, top_k: int = 3,
            pad: float = 0.15) -> list[tuple[np.ndarray, np.ndarray, Region]]:
    """(box, peak point, region) per region of ``amap >= level``, hottest first; boxes padded by
    ``pad`` of their size on each side (at least 4 px) and clipped to the frame."""
    h, w = frame_hw
    out = []
    for r in regions(amap, frame_hw, level, top_k):
        x0, y0, x1, y1 = r.box
        px, py = max(4.0, pad * (x1 - x0)), max(4.0, pad * (y1 - y0))
        box = np.array([max(0, x0 - px), max(0, y0 - py), min(w, x1 + px), min(h, y1 + py)], np.float32)
        out.append((box, np.array([r.peak_xy], np.float32), r))
    return out


def expert_prompts(amap: np.ndarray, frame_hw: tuple[int, int], thresholds: dict[str, Any], top_k: int = 3,
                   pad: float = 0.15, flagged: bool = True) -> tuple[list[tuple[np.ndarray, np.ndarray, Region]], float]:
    """The prompts SAM gets for a frame and the map level they were cut at: regions above the
    pixel threshold, or, for a flagged frame where none passes, around the map's peak."""
    level = default_level(amap, thresholds.get("pixel"))
    found = prompts(amap, frame_hw, level, top_k, pad)
    if not found and flagged and "pixel" in thresholds:
        level = default_level(amap, None)
        found = prompts(amap, frame_hw, level, top_k, pad)
    return found, level


def roi_crop(boxes: list[np.ndarray], frame_hw: tuple[int, int], min_side: int) -> tuple[int, int, int, int]:
    """An integer crop holding every box, grown around its centre to at least ``min_side`` (SAM
    needs context around a defect) and kept inside the frame."""
    h, w = frame_hw
    b = np.stack(boxes)
    # whole pixels first (floor the start, ceil the end), so growing never cuts a padded box
    x0, y0 = float(np.floor(b[:, 0].min())), float(np.floor(b[:, 1].min()))
    x1, y1 = float(np.ceil(b[:, 2].max())), float(np.ceil(b[:, 3].max()))
    side_w, side_h = min(w, max(x1 - x0, min_side)), min(h, max(y1 - y0, min_side))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    cx0 = int(np.clip(np.floor(cx - side_w / 2), 0, w - side_w))
    cy0 = int(np.clip(np.floor(cy - side_h / 2), 0, h - side_h))
    return cx0, cy0, int(min(w, np.ceil(cx0 + side_w))), int(min(h, np.ceil(cy0 + side_h)))


def find_defects(frame: np.ndarray, amap: np.ndarray, thresholds: dict[str, Any], sam: SamStage | None = None,
                 top_k: int = 3, mode: str = "frame", pad: float = 0.15, min_roi: int = 128,
                 flagged: bool = True, classifier: DefectClassifier | None = None) -> list[Defect]:
    """Defects of one frame, hottest first. ``amap`` is the expert's map at its own size.

    ``flagged``: the frame's image score passed the threshold. Then, if no pixel passes the
    pixel threshold, the region around the map's peak (relative level) is still reported: the
    best place to look. Unflagged frames get defects only where pixels pass. With a
    ``classifier`` each defect gets its type (``class``).
    """
    out, amap_frame = _find(frame, amap, thresholds, sam, top_k, mode, pad, min_roi, flagged)
    if classifier is not None and amap_frame is not None:
        for d in out:
            if d.mask.any():
                d.cls, d.class_distance = classifier.predict(
                    describe_region(frame, d.mask, amap_frame, thresholds.get("pixel")))
    return out


def _find(frame: np.ndarray, amap: np.ndarray, thresholds: dict[str, Any], sam: SamStage | None, top_k: int,
          mode: str, pad: float, min_roi: int, flagged: bool) -> tuple[list[Defect], np.ndarray | None]:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: use one of {MODES}")
    h, w = frame.shape[:2]
    if float(amap.max()) <= float(amap.min()):  # a flat map points nowhere
        return [], None
    found, level = expert_prompts(amap, (h, w), thresholds, top_k, pad, flagged)
    if not found:
        return [], None
    amap_frame = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
    components: list[np.ndarray] = []  # frame-sized labels, computed only when an expert mask is needed

    def expert_defect(r: Region) -> Defect:
        if not components:
            components.append(cv2.connectedComponents((amap_frame >= level).astype(np.uint8), connectivity=8)[1])
        labels = components[0]
        x, y = (min(int(v), s - 1) for v, s in zip(r.peak_xy, (w, h)))
        lab = labels[y, x] if labels[y, x] else _nearest_label(labels, r)
        mask = labels == lab if lab else np.zeros((h, w), bool)
        return Defect(region_from_mask(mask, amap_frame) or r, mask, "expert")

    if sam is None:
        out, seen = [], set()
        for _, _, r in found:
            d = expert_defect(r)
            key = (tuple(d.region.box), d.region.area_px)  # two map regions can merge at frame size
            if key not in seen:
                seen.add(key)
                out.append(d)
        return out, amap_frame
    x0, y0, x1, y1 = roi_crop([b for b, _, _ in found], (h, w), min_roi) if mode == "roi" else (0, 0, w, h)
    emb = sam.encode(frame[y0:y1, x0:x1])
    shift = np.array([x0, y0], np.float32)
    dense = (map_prompt(amap_frame[y0:y1, x0:x1], level, emb.input_hw, sam.size, sam.mask_size)
             if sam.mask_prompt == "expert_map" else None)
    out = []
    for box, point, r in found:
        m = sam.segment(emb, point - shift, np.ones(1, np.float32), box - np.tile(shift, 2), mask_input=dense)
        mask = np.zeros((h, w), bool)
        mask[y0:y1, x0:x1] = m.mask
        region = region_from_mask(mask, amap_frame)
        if region is None:  # SAM found nothing under this prompt: the expert's own mask stands
            d = expert_defect(r)
            d.sam_iou = m.iou
            out.append(d)
        else:
            out.append(Defect(region, mask, "sam", m.iou))
    return out, amap_frame


def _nearest_label(labels: np.ndarray, r: Region) -> int:
    """The component under a region's box (a region found at map size can land between frame pixels)."""
    x0, y0, x1, y1 = r.box
    window = labels[y0:y1, x0:x1]
    vals = window[window > 0]
    return int(np.bincount(vals).argmax()) if len(vals) else 0
