"""Procedurally generated parts with pixel-exact defects, in the MVTec AD layout.

Seeded and deterministic. The demo and the tests use it so that nothing needs a download.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

DEFECTS = ("blob", "scratch")


def textured_part(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A brushed-metal-like tile: lighting gradient plus band-limited noise, BGR uint8."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    light = 120 + 25 * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(-10, 10)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 1.5)
    streak = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), sigmaX=8, sigmaY=0.8)
    gray = light + 10 * grain / (grain.std() + 1e-6) + 6 * streak / (streak.std() + 1e-6)
    tint = np.array([1.0, 0.97, 0.93], np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    return np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8)


def add_defect(img: np.ndarray, rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Draw a defect of ``kind`` and return (image, mask uint8 0/255)."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    if kind == "blob":
        c = (int(rng.integers(w // 6, 5 * w // 6)), int(rng.integers(h // 6, 5 * h // 6)))
        axes = (int(rng.integers(w // 40 + 2, w // 12 + 3)), int(rng.integers(h // 40 + 2, h // 12 + 3)))
        cv2.ellipse(mask, c, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        delta = -rng.uniform(60, 90)
    elif kind == "scratch":
        p0 = rng.integers(w // 8, 7 * w // 8, 2)
        d = rng.normal(0, 1, 2)
        p1 = np.clip(p0 + (d / np.linalg.norm(d) * rng.uniform(0.2, 0.4) * w).astype(int), 0, w - 1)
        cv2.line(mask, tuple(int(v) for v in p0), tuple(int(v) for v in p1), 255, max(2, w // 90))
        delta = rng.choice([-1, 1]) * rng.uniform(60, 90)
    else:
        raise ValueError(f"unknown defect {kind!r}: use one of {DEFECTS}")
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), 1.0)[..., None]
    out = np.clip(img.astype(np.float32) + delta * soft, 0, 255).astype(np.uint8)
    return out, mask


def make_dataset(root: str | Path, product: str = "tile", n_train: int = 30, n_good: int = 8,
                 n_defect: int = 8, size: int = 256, seed: int = 0) -> Path:
    """Write ``root/product/{train/good,test/good,test/<defect>,ground_truth/<defect>}``."""
    rng = np.random.default_rng(seed)
    base = Path(root) / product
    for sub, n in (("train/good", n_train), ("test/good", n_good)):
        (base / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(base / sub / f"{i:03d}.png"), textured_part(rng, size))
    for kind in DEFECTS:
        (base / "test" / kind).mkdir(parents=True, exist_ok=True)
        (base / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n_defect // len(DEFECTS)):
            img, mask = add_defect(textured_part(rng, size), rng, kind)
            cv2.imwrite(str(base / "test" / kind / f"{i:03d}.png"), img)
            cv2.imwrite(str(base / "ground_truth" / kind / f"{i:03d}_mask.png"), mask)
    return base
