"""What an anomaly map says in words a person and a language model can use.

Regions come from the map by a level (the calibrated pixel threshold, or half-way from the
map's median to its peak before calibration); each region gets a box in frame pixels, its
area, and EIAD's rough-localisation cell on a 3×3 grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

GRID = (
    ("top-left", "top-center", "top-right"),
    ("middle-left", "center", "middle-right"),
    ("bottom-left", "bottom-center", "bottom-right"),
)
CELLS = tuple(name for row in GRID for name in row)


def _cell_counts(yy: np.ndarray, xx: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pixels (rows ``yy``, columns ``xx`` of an h×w mask) per 3×3 cell, in reading order."""
    return np.bincount(np.minimum(yy * 3 // h, 2) * 3 + np.minimum(xx * 3 // w, 2), minlength=9)


def cell_shares(mask: np.ndarray) -> dict[str, float]:
    """Share of the mask's pixels in each 3×3 cell, in reading order (zeros for an empty mask)."""
    yy, xx = np.nonzero(mask)
    counts = _cell_counts(yy, xx, *mask.shape)  # one pass over the mask's pixels
    total = max(1, len(yy))
    return {CELLS[i]: float(counts[i]) / total for i in range(9)}


def grid_cell(mask: np.ndarray) -> str:
    """The 3×3 cell holding the largest share of ``mask`` (ties: the first in reading order)."""
    return CELLS[int(np.argmax(_cell_counts(*np.nonzero(mask), *mask.shape)))]  # argmax keeps the first of equals


@dataclass
class Region:
    box: list[int]  # x0, y0, x1, y1 in frame pixels (x1, y1 exclusive)
    area_px: int  # in frame pixels
    area_frac: float
    centroid: list[float]  # x, y in frame pixels
    cell: str
    peak: float
    mean: float
    peak_xy: list[float] | None = None  # x, y of the map's peak inside the region, frame pixels

    def to_dict(self) -> dict[str, Any]:
        # what dataclasses.asdict gives (fresh lists), without its recursive deep copy: ~20 µs a verdict
        return {k: list(v) if isinstance(v, list) else v for k, v in vars(self).items()}


def quantiles(rows: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """``np.percentile(rows, 100 qs, axis=1).T`` (linear interpolation, its default) for a 2-D array,
    by one partition: numpy's percentile and median spend ~0.1 ms each in Python, more than a
    256×256 map's data takes (measured: benchmarks/station_ceiling.py). Returns [rows, len(qs)]."""
    n = rows.shape[1]
    pos = np.asarray(qs, np.float64) * (n - 1)
    lo = pos.astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    part = np.partition(rows, np.unique(np.concatenate([lo, hi])), axis=1)
    a, b = part[:, lo].astype(np.float64), part[:, hi].astype(np.float64)
    return a + (b - a) * (pos - lo)


def quantile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, 100 q)`` of any array (see ``quantiles``)."""
    return float(quantiles(values.reshape(1, -1), (q,))[0, 0])


@dataclass(frozen=True)
class MapSummary:
    """An anomaly map's statistics: the record's ``map`` and the median the default level needs."""

    min: float
    max: float
    mean: float
    p50: float
    p99: float

    def to_dict(self) -> dict[str, float]:
        return {"min": self.min, "max": self.max, "mean": self.mean, "p99": self.p99}


SMALL_MAP = 64 * 64  # pixels: maps up to this size are summarized together (see summarize)


def summarize(maps: Sequence[np.ndarray]) -> list[MapSummary]:
    """Each map's statistics. Small maps of one shape (a batch's) are summarized together, one NumPy
    call per statistic for the batch: per-frame calls on small maps were most of the station's
    verdict cost. Larger maps go one by one: stacked, a batch of 256×256 maps outgrows the cache
    and cost 0.84–0.97 ms a map against 0.65 alone (measured, benchmarks section of issue 23)."""
    out: list[MapSummary | None] = [None] * len(maps)
    groups: dict[Any, list[int]] = {}
    for i, m in enumerate(maps):
        groups.setdefault(m.shape if m.size <= SMALL_MAP else i, []).append(i)
    for idx in groups.values():
        rows = np.stack([maps[i] for i in idx]).reshape(len(idx), -1) if len(idx) > 1 else maps[idx[0]].reshape(1, -1)
        lo, hi, mean = rows.min(1), rows.max(1), rows.mean(1)
        q = quantiles(rows, (0.5, 0.99))
        for j, i in enumerate(idx):
            out[i] = MapSummary(float(lo[j]), float(hi[j]), float(mean[j]), float(q[j, 0]), float(q[j, 1]))
    return out  # type: ignore[return-value]  # every index was filled


def map_stats(amap: np.ndarray) -> dict[str, float]:
    return summarize([amap])[0].to_dict()


def default_level(amap: np.ndarray, pixel_threshold: float | None, summary: MapSummary | None = None) -> float:
    if pixel_threshold is not None:
        return float(pixel_threshold)
    s = summary or summarize([amap])[0]
    return s.p50 + 0.5 * (s.max - s.p50)


def regions(amap: np.ndarray, frame_hw: tuple[int, int], level: float, top_k: int = 5) -> list[Region]:
    """Connected regions of ``amap >= level``, hottest first, measured in frame pixels."""
    fh, fw = frame_hw
    mh, mw = amap.shape
    mask = np.greater_equal(amap, level).view(np.uint8)  # bool and uint8 share a layout: no copy
    # labels only: the statistics pass costs 6× the labelling on a 256×256 map, and only the few
    # measured components need their box and area (from their pixels, below)
    n, labels = cv2.connectedComponents(mask, connectivity=8)
    sx, sy = fw / mw, fh / mh
    # measure only the top_k hottest components: a noisy map can have hundreds above the level
    peak = amap.max()
    if top_k == 1 and n > 1 and peak >= level:  # the hottest holds the map's peak (ties: the lowest label, as
        hottest = [int(labels[amap == peak].min())]  # below); np.maximum.at costs ~1 ms on a 256×256 map
    else:
        peaks = np.full(n, -np.inf, np.float64)
        np.maximum.at(peaks, labels.ravel(), amap.ravel().astype(np.float64))
        hottest = [int(k) for k in np.argsort(-peaks[1:], kind="stable")[:top_k] + 1]
    out = []
    # Python's math on the few scalars, sums for means: NumPy's scalar functions and ``mean`` cost
    # microseconds each in Python, and a station measures a region per frame (same values: tested)
    for lab in hottest:
        yy, xx = np.nonzero(labels == lab)
        x, y, area = int(xx.min()), int(yy.min()), len(yy)
        x1, y1 = int(xx.max()) + 1, int(yy.max()) + 1
        vals = amap[yy, xx]
        top = int(np.argmax(vals))
        out.append(Region(
            box=[math.floor(x * sx), math.floor(y * sy), math.ceil(x1 * sx), math.ceil(y1 * sy)],
            area_px=int(round(area * sx * sy)),
            area_frac=float(area / (mh * mw)),
            centroid=[(int(xx.sum()) / area + 0.5) * sx, (int(yy.sum()) / area + 0.5) * sy],
            cell=CELLS[int(np.argmax(_cell_counts(yy, xx, mh, mw)))],
            peak=float(vals[top]),
            mean=float(vals.sum() / area),  # what ``vals.mean()`` computes: the sum in the map's dtype, divided
            peak_xy=[(int(xx[top]) + 0.5) * sx, (int(yy[top]) + 0.5) * sy],
        ))
    out.sort(key=lambda r: -r.peak)
    return out[:top_k]


def region_from_mask(mask: np.ndarray, amap_frame: np.ndarray) -> Region | None:
    """Measure a frame-sized defect mask against the anomaly map resized to the frame."""
    if not mask.any():
        return None
    yy, xx = np.nonzero(mask)
    vals = amap_frame[mask]
    top = int(np.argmax(vals))
    h, w = mask.shape
    return Region(box=[int(xx.min()), int(yy.min()), int(xx.max()) + 1, int(yy.max()) + 1], area_px=int(mask.sum()),
                  area_frac=float(mask.sum() / (h * w)), centroid=[float(xx.mean() + 0.5), float(yy.mean() + 0.5)],
                  cell=grid_cell(mask), peak=float(vals.max()), mean=float(vals.mean()),
                  peak_xy=[float(xx[top] + 0.5), float(yy[top] + 0.5)])


def hottest_region(amap: np.ndarray, frame_hw: tuple[int, int], pixel_threshold: float | None = None,
                   summary: MapSummary | None = None) -> Region:
    """The region around the map's peak, there is always one (``summary``: the map's, where known).

    Cut at the pixel threshold where the peak passes it; otherwise (a good part, or a defect the
    threshold misses) at the relative level, so the box still shows where the map looks.
    """
    peak = summary.max if summary else float(amap.max())
    passes = pixel_threshold is not None and peak >= pixel_threshold
    level = default_level(amap, pixel_threshold if passes else None, summary)
    return regions(amap, frame_hw, level, top_k=1)[0]
