"""Defect painters. Each draws one defect on a part and returns its pixel mask; sizes run from a
few pixels up (``scale``: the defect's extent as a share of the image side)."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np


def _point_on(part: np.ndarray, rng: np.random.Generator, margin: int) -> tuple[int, int]:
    """A random pixel of the part at least ``margin`` from the image border."""
    h, w = part.shape
    inner = np.zeros_like(part)
    inner[margin:h - margin, margin:w - margin] = part[margin:h - margin, margin:w - margin]
    ys, xs = np.nonzero(inner if inner.any() else part)
    k = int(rng.integers(len(xs)))
    return int(xs[k]), int(ys[k])


def _shade(img: np.ndarray, mask: np.ndarray, delta: np.ndarray | float, soft: float = 0.8) -> np.ndarray:
    a = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), soft)[..., None] if soft else mask[..., None]
    return np.clip(img.astype(np.float32) + a * delta, 0, 255).astype(np.uint8)


def scratch(img: np.ndarray, part: np.ndarray, rng: np.random.Generator, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A thin, slightly curved line, lighter or darker than the surface."""
    h, w = part.shape
    x, y = _point_on(part, rng, 4)
    a = rng.uniform(0, np.pi)
    length = max(4.0, scale * w)
    t = np.linspace(-0.5, 0.5, 12)
    bend = rng.uniform(-0.15, 0.15) * length
    pts = np.stack([x + np.cos(a) * t * length - np.sin(a) * bend * (1 - 4 * t ** 2),
                    y + np.sin(a) * t * length + np.cos(a) * bend * (1 - 4 * t ** 2)], 1)
    m = np.zeros((h, w), np.uint8)
    cv2.polylines(m, [pts.round().astype(np.int32)], False, 1, max(1, int(round(w / 160))))
    m = m.astype(bool) & part
    return _shade(img, m, float(rng.choice([-1, 1]) * rng.uniform(55, 85))), m


def crack(img: np.ndarray, part: np.ndarray, rng: np.random.Generator, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A dark, jagged random walk with a branch: how a brittle part breaks."""
    h, w = part.shape
    m = np.zeros((h, w), np.uint8)
    start = np.array(_point_on(part, rng, 4), np.float64)
    steps = max(3, int(scale * w / 3))
    for branch in range(2):
        p, a = start.copy(), rng.uniform(0, 2 * np.pi)
        pts = [p.copy()]
        for _ in range(steps if branch == 0 else steps // 2):
            a += rng.normal(0, 0.5)
            p = p + 3 * np.array([np.cos(a), np.sin(a)])
            pts.append(p.copy())
        cv2.polylines(m, [np.array(pts).round().astype(np.int32)], False, 1, 1)
        start = pts[len(pts) // 2]
    m = m.astype(bool) & part
    return _shade(img, m, -rng.uniform(70, 100), soft=0.5), m


def hole(img: np.ndarray, part: np.ndarray, rng: np.random.Generator, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A blowhole: a dark round pit with a lighter rim."""
    h, w = part.shape
    x, y = _point_on(part, rng, 6)
    r = max(1, int(scale * w / 4))
    m = np.zeros((h, w), np.uint8)
    cv2.circle(m, (x, y), r, 1, -1)
    m = m.astype(bool) & part
    rim = cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~m & part
    out = _shade(img, rim, 35.0, soft=0)
    return _shade(out, m, -rng.uniform(80, 110), soft=0.6), m


def stain(img: np.ndarray, part: np.ndarray, rng: np.random.Generator, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A soft, tinted blot (oil, coolant): the mask is where it visibly changes the surface."""
    h, w = part.shape
    x, y = _point_on(part, rng, 6)
    axes = (max(2, int(scale * w / 2)), max(2, int(scale * w / 2 * rng.uniform(0.4, 1.0))))
    blot = np.zeros((h, w), np.float32)
    cv2.ellipse(blot, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(blot, (0, 0), max(1.0, axes[1] / 3)) * part
    tint = np.array(rng.uniform([-60, -40, -20], [-30, -10, 10]), np.float32)  # towards brown/dark
    out = np.clip(img.astype(np.float32) + alpha[..., None] * tint, 0, 255).astype(np.uint8)
    return out, (alpha > 0.35) & part


def chip(img: np.ndarray, part: np.ndarray, rng: np.random.Generator, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A piece missing from the part's edge, showing what lies behind it (or a dark void)."""
    h, w = part.shape
    edge = part & ~cv2.erode(part.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    border = np.zeros_like(part)
    border[[0, -1], :] = border[:, [0, -1]] = True
    edge = edge if (edge & ~border).any() else part & border  # a tile fills the view: chip its border
    ys, xs = np.nonzero(edge)
    k = int(rng.integers(len(xs)))
    r = max(2, int(scale * w / 3))
    m = np.zeros((h, w), np.uint8)
    cv2.circle(m, (int(xs[k]), int(ys[k])), r, 1, -1)
    m = m.astype(bool) & part
    out = img.copy()
    out[m] = np.clip(rng.normal(30, 4, (int(m.sum()), 3)), 0, 255).astype(np.uint8)
    return out, m


DEFECTS: dict[str, Callable[[np.ndarray, np.ndarray, np.random.Generator, float], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": scratch, "crack": crack, "hole": hole, "stain": stain, "chip": chip}
