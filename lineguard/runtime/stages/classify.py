"""Defect classification: which of the user's defect types a found region is, or ``unknown``.

A region is described by a few numbers a person would also look at — its size and shape
(log area, elongation, extent, solidity), how it differs from the part around it (intensity
contrast and texture against a ring around the mask) and how anomalous the expert found it
(peak and mean of the map inside, relative to the pixel threshold). The descriptors are
standardised with the fit's statistics and compared with the labelled examples by k-nearest
neighbours. A region farther from every example than the examples are from each other
(``max_distance``, set at fit time) is ``unknown``: a new defect type is not forced into an old one.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lineguard.runtime.errors import BundleError

FEATURES = ("log_area", "elongation", "extent", "solidity", "contrast", "texture", "map_peak", "map_mean")
UNKNOWN = "unknown"


def describe_region(frame: np.ndarray, mask: np.ndarray, amap_frame: np.ndarray,
                    pixel_threshold: float | None = None) -> np.ndarray:
    """The descriptor vector (``FEATURES``) of one region; ``mask`` and ``amap_frame`` at frame size."""
    m = mask.astype(bool)
    h, w = m.shape
    area = max(1, int(m.sum()))
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    gray = gray.astype(np.float32)
    cnts, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    pts = np.concatenate(cnts) if cnts else np.zeros((1, 1, 2), np.int32)
    (_, _), (rw, rh), _ = cv2.minAreaRect(pts)
    elongation = max(rw, rh, 1.0) / max(min(rw, rh), 1.0)
    x, y, bw, bh = cv2.boundingRect(pts)
    hull_px = np.zeros_like(m, np.uint8)  # hull area in pixels, as the mask's own area is counted
    cv2.fillPoly(hull_px, [cv2.convexHull(pts)], 1)
    hull = int(hull_px.sum())
    r = max(3, int(round(0.02 * max(h, w))))  # the ring: a band around the mask, 2% of the frame wide
    ring = cv2.dilate(m.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0
    ring &= ~m
    inside, around = gray[m], gray[ring] if ring.any() else gray[~m] if (~m).any() else gray.ravel()
    spread = float(around.std()) + 1.0
    scale = pixel_threshold if pixel_threshold else max(float(amap_frame.max()), 1e-6)
    vals = amap_frame[m]
    return np.array([
        np.log(area / (h * w)),
        np.log(elongation),
        area / max(1, bw * bh),
        area / max(1.0, hull),
        (float(inside.mean()) - float(around.mean())) / spread,
        np.log((float(inside.std()) + 1.0) / spread),
        float(vals.max()) / scale,
        float(vals.mean()) / scale,
    ], np.float32)


@dataclass
class DefectClassifier:
    names: list[str]  # the defect types, sorted
    mean: np.ndarray  # descriptor standardisation
    std: np.ndarray
    examples: np.ndarray  # [N, F] standardised descriptors of the labelled regions
    labels: np.ndarray  # [N] index into names
    k: int = 3
    max_distance: float = float("inf")

    def predict(self, vec: np.ndarray) -> tuple[str, float]:
        """(type or ``unknown``, distance to the nearest example) for one descriptor vector."""
        z = (np.asarray(vec, np.float32) - self.mean) / self.std
        d = np.linalg.norm(self.examples - z, axis=1)
        order = np.argsort(d, kind="stable")[: self.k]
        nearest = float(d[order[0]])
        if nearest > self.max_distance:
            return UNKNOWN, nearest
        votes = Counter(int(self.labels[i]) for i in order)
        top = max(votes.values())
        # ties go to the class of the nearest example among the tied ones
        label = next(int(self.labels[i]) for i in order if votes[int(self.labels[i])] == top)
        return self.names[label], nearest

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "names": self.names, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "examples": self.examples.round(5).tolist(), "labels": self.labels.tolist(), "k": self.k,
                "max_distance": self.max_distance}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "classifier") -> DefectClassifier:
        try:
            if list(d["features"]) != list(FEATURES):
                raise ValueError(f"features {d['features']} are not this runtime's {list(FEATURES)}")
            c = cls(list(d["names"]), np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32),
                    np.asarray(d["examples"], np.float32).reshape(-1, len(FEATURES)),
                    np.asarray(d["labels"], np.int64), int(d["k"]), float(d["max_distance"]))
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{where}: not a usable defect classifier ({e})") from None
        if len(c.examples) != len(c.labels) or not len(c.labels) or c.labels.min() < 0 \
                or c.labels.max() >= len(c.names):
            raise BundleError(f"{where}: examples and labels do not match the names")
        if c.mean.shape != (len(FEATURES),) or c.std.shape != (len(FEATURES),) or not (c.std > 0).all():
            raise BundleError(f"{where}: mean and std must hold {len(FEATURES)} values, std above 0")
        if c.k < 1:
            raise BundleError(f"{where}: k must be at least 1")
        return c

    @classmethod
    def load(cls, path: str | Path) -> DefectClassifier:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise BundleError(f"{path}: unreadable defect classifier ({e})") from None
        return cls.from_dict(d, str(path))


def from_bundle(bundle: Any) -> DefectClassifier | None:
    """The bundle's classifier (``manifest.classes.file``), or None where it has none."""
    rel = (bundle.manifest.get("classes") or {}).get("file")
    return DefectClassifier.load(bundle.root / rel) if rel else None
