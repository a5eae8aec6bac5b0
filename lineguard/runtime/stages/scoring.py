"""Raw expert scores → normalised scores and verdicts, from the manifest's calibration.

Thresholds live in the manifest (never in the graph) so a line engineer can move them
without re-exporting. Until calibration writes them there is no verdict, only a score.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def normalize(raw: float | np.ndarray, norm: dict[str, Any], threshold: float | None = None) -> float | np.ndarray | None:
    """Map a raw score so the image threshold lands on 0.5 (anomalib's min-max convention).

    ``norm``: ``{"method": "min_max", "threshold": t, "min": lo, "max": hi}``. ``threshold``: the
    manifest's current image threshold, which wins over the copy in ``norm`` so that a threshold
    edited by hand still sits at 0.5. Returns None when the bundle is not calibrated.
    """
    if not norm or norm.get("method") != "min_max":
        return None
    t = float(threshold if threshold is not None else norm["threshold"])
    lo, hi = float(norm["min"]), float(norm["max"])
    span = max(hi - lo, 1e-12)
    return np.clip((np.asarray(raw, dtype=np.float64) - t) / span + 0.5, 0.0, 1.0)


def verdict(raw: float, thresholds: dict[str, Any]) -> str | None:
    """"defect" or "good" by the image threshold, or None when there is none yet.

    A score at the threshold is a defect, unless ``strict`` (kept from a graph that decided with
    ``score > t``, as anomalib's do: a score equal to its threshold is good there, and here).
    """
    t = thresholds.get("image")
    if t is None:
        return None
    flagged = raw > float(t) if thresholds.get("strict") else raw >= float(t)
    return "defect" if flagged else "good"
