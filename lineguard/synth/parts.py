"""Part renderers. Each returns (BGR uint8 image, bool mask of the part's own pixels): defects are
placed on the part, and a chip is cut from its edge. Pose, lighting and texture vary per seed."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np


def _noise(rng: np.random.Generator, size: int, sigma: float, sigma_y: float | None = None) -> np.ndarray:
    n = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), sigmaX=sigma,
                         sigmaY=sigma_y if sigma_y is not None else sigma)
    return n / (n.std() + 1e-6)


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth light field around 1.0: a tilt plus a soft spot, as under a ring light slightly off axis."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    a = rng.uniform(0, 2 * np.pi)
    cx, cy = rng.uniform(0.3, 0.7, 2)
    spot = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.15)
    return (0.9 + 0.12 * (np.cos(a) * xx + np.sin(a) * yy) + 0.08 * spot).astype(np.float32)


def tile(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A sintered tile filling the view: grain and brushing streaks under uneven light."""
    gray = 125 + rng.uniform(-8, 8) + 9 * _noise(rng, size, 1.5) + 5 * _noise(rng, size, 8, 0.8)
    tint = np.array([1.0, 0.97, 0.93], np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    img = gray[..., None] * _lighting(rng, size)[..., None] * tint
    return np.clip(img, 0, 255).astype(np.uint8), np.ones((size, size), bool)


def disc(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A machined disc on a dark fixture: turning rings, a bore, a locating notch (shows rotation)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2 + rng.uniform(-0.04, 0.04, 2) * size
    r_out, r_bore = size * rng.uniform(0.40, 0.44), size * rng.uniform(0.10, 0.13)
    rr = np.hypot(xx - c[0], yy - c[1])
    part = (rr <= r_out) & (rr >= r_bore)
    notch_a = rng.uniform(0, 2 * np.pi)
    notch = np.hypot(xx - (c[0] + np.cos(notch_a) * r_out), yy - (c[1] + np.sin(notch_a) * r_out)) < size * 0.035
    part &= ~notch
    rings = np.sin(rr * rng.uniform(1.2, 1.6)) * 6 + 4 * _noise(rng, size, 1.0)
    metal = 150 + rings + 10 * np.cos(np.arctan2(yy - c[1], xx - c[0]) * 2 + rng.uniform(0, 6))  # anisotropic sheen
    fixture = 35 + 6 * _noise(rng, size, 3.0)
    gray = np.where(part, metal, fixture) * _lighting(rng, size)
    img = np.repeat(np.clip(gray, 0, 255)[..., None], 3, axis=2)
    return img.astype(np.uint8), part


def label(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A printed label on a coloured carton: text lines and a barcode, slightly rotated."""
    bg = np.array(rng.uniform([40, 80, 120], [90, 140, 190]), np.float32)  # carton brown, BGR
    img = np.ones((size, size, 3), np.float32) * bg + 5 * _noise(rng, size, 2.0)[..., None]
    lab = np.zeros((size, size), np.uint8)
    x0, y0, x1, y1 = (int(v * size) for v in (0.15, 0.2, 0.85, 0.8))
    cv2.rectangle(lab, (x0, y0), (x1, y1), 255, -1)
    sheet = np.full((size, size, 3), 235, np.float32)
    ink = np.zeros((size, size), np.uint8)
    scale = size / 256
    for i in range(3):
        text = "".join(rng.choice(list("ABCDEFGHJKLMNPRSTUVWXYZ0123456789"), 8))
        cv2.putText(ink, text, (x0 + int(8 * scale), y0 + int((22 + 18 * i) * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5 * scale, 255, max(1, int(round(scale))), cv2.LINE_AA)
    bx = x0 + int(10 * scale)
    while bx < x1 - int(12 * scale):  # barcode bars of random widths
        bw = int(rng.integers(1, 4) * max(1, scale))
        cv2.rectangle(ink, (bx, y1 - int(60 * scale)), (bx + bw - 1, y1 - int(12 * scale)), 255, -1)
        bx += bw + int(rng.integers(1, 4) * max(1, scale))
    sheet -= (ink.astype(np.float32) / 255)[..., None] * 210
    rot = cv2.getRotationMatrix2D((size / 2, size / 2), float(rng.uniform(-6, 6)), 1.0)
    rot[:, 2] += rng.uniform(-0.03, 0.03, 2) * size
    lab = cv2.warpAffine(lab, rot, (size, size), flags=cv2.INTER_NEAREST)
    sheet = cv2.warpAffine(sheet, rot, (size, size), flags=cv2.INTER_LINEAR, borderValue=(235, 235, 235))
    part = lab > 0
    img[part] = sheet[part]
    img *= _lighting(rng, size)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8), part


PARTS: dict[str, Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]] = {
    "tile": tile, "disc": disc, "label": label}
