"""Heat-map overlays of anomaly maps on frames, for people to look at."""

from __future__ import annotations

import cv2
import numpy as np

from lineguard.runtime.stages.preprocess import convert_color


def heat_overlay(frame: np.ndarray, amap: np.ndarray, vmin: float | None = None, vmax: float | None = None,
                 boxes: list[list[int]] | None = None, alpha: float = 0.45) -> np.ndarray:
    """BGR image: ``frame`` with ``amap`` (any size) as a JET heat map; boxes drawn in white.

    ``vmin``/``vmax`` fix the colour scale (e.g. around a calibrated threshold) so overlays of
    different frames compare; by default each map is stretched to its own range.
    """
    bgr = convert_color(frame, "BGR")
    h, w = bgr.shape[:2]
    m = cv2.resize(amap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    lo = float(m.min()) if vmin is None else vmin
    hi = float(m.max()) if vmax is None else vmax
    scaled = np.clip((m - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(bgr, 1.0 - alpha, heat, alpha, 0.0)
    for x0, y0, x1, y1 in boxes or []:
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), (255, 255, 255), max(1, min(h, w) // 200))
    return out


def map_range(pixel_t: float | None) -> tuple[float | None, float | None]:
    """The colour scale of a map overlay: 0 to twice the pixel threshold (the threshold mid-scale),
    or the map's own range where the bundle has none."""
    return (0.0, 2.0 * pixel_t) if pixel_t is not None else (None, None)
