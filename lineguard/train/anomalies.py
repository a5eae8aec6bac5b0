"""Generic synthetic anomalies for self-supervised training (the approach of DRAEM, NSA and
CutPaste): irregular blobs, thin strokes and patches, filled with shifted intensity, a colour
cast, foreign texture, noise, blur or a dark void, pasted into a normal image with a random
opacity, crisp or fading out.

Nothing here knows the defect painters of ``synth``: the expert must learn "not normal", not
the generator's defects. The label is the pasted region where the image visibly changed.
"""

from __future__ import annotations

import cv2
import numpy as np

VISIBLE = 20.0  # largest channel change (0-255) below which a pasted pixel is not labelled
MIN_AREA = 6  # pixels: smaller blobs are indistinguishable from surface grain


def blob_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Thresholded smooth noise (Perlin-like): one to a few irregular blobs, from tiny to large."""
    # noise grid step 4 px (pits) to 32 px (broad patches); no 2-px speckles: they look like the
    # grain of a normal surface, and labelling grain as defect taught false alarms on texture
    cell = int(2 ** rng.integers(2, 6))
    low = rng.normal(0, 1, (h // cell + 2, w // cell + 2)).astype(np.float32)
    field = cv2.resize(low, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)[cell:cell + h, cell:cell + w]
    m = field > np.quantile(field, rng.uniform(0.9, 0.99))
    n, lab = cv2.connectedComponents(m.astype(np.uint8))
    if n > 2:  # keep one to three components so most samples hold few, distinct regions
        keep = rng.choice(np.arange(1, n), size=min(n - 1, int(rng.integers(1, 4))), replace=False)
        m = np.isin(lab, keep)
    return m if m.sum() >= MIN_AREA else np.zeros_like(m)


def stroke_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A thin random-walk polyline, 1-3 px wide (CutPaste's scar, but bent)."""
    m = np.zeros((h, w), np.uint8)
    p = rng.uniform([0, 0], [w, h])
    a = rng.uniform(0, 2 * np.pi)
    pts = [p.copy()]
    step = rng.uniform(2, 8)
    for _ in range(int(rng.integers(2, 14))):
        a += rng.normal(0, rng.uniform(0.05, 0.8))
        p = p + step * np.array([np.cos(a), np.sin(a)])
        pts.append(p.copy())
    cv2.polylines(m, [np.array(pts).round().astype(np.int32)], False, 1, int(rng.integers(1, 4)))
    return m.astype(bool)


def patch_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A rotated ellipse or rectangle (NSA's patch), 2 px to a third of the side."""
    m = np.zeros((h, w), np.uint8)
    c = (int(rng.integers(w)), int(rng.integers(h)))
    ax = np.exp(rng.uniform(np.log(1.5), np.log(min(h, w) / 6), 2)).astype(int) + 1
    ang = float(rng.uniform(0, 180))
    if rng.random() < 0.5:
        cv2.ellipse(m, c, (int(ax[0]), int(ax[1])), ang, 0, 360, 1, -1)
    else:
        box = cv2.boxPoints((c, (2 * float(ax[0]), 2 * float(ax[1])), ang))
        cv2.fillPoly(m, [box.round().astype(np.int32)], 1)
    return m.astype(bool)


SHAPES = (blob_mask, stroke_mask, patch_mask)


def fill(img: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What the anomaly looks like, as a full image to blend in (float32)."""
    f = img.astype(np.float32)
    kind = int(rng.integers(6))
    if kind == 5:  # discoloured: each channel shifted its own way (oil, rust, burn marks)
        return f + rng.uniform(-70, 40, 3).astype(np.float32)
    if kind == 0:  # brighter or darker, slightly tinted
        return f + rng.choice([-1, 1]) * rng.uniform(40, 110) * rng.uniform(0.8, 1.2, 3).astype(np.float32)
    if kind == 1:  # another normal image's texture, shifted and contrast-changed (NSA)
        dy, dx = rng.integers(0, other.shape[0]), rng.integers(0, other.shape[1])
        src = np.roll(other, (int(dy), int(dx)), axis=(0, 1)).astype(np.float32)
        return (src - src.mean()) * rng.uniform(0.5, 2.0) + src.mean() + rng.uniform(-40, 40)
    if kind == 2:  # grainy noise around the local mean
        return cv2.GaussianBlur(f, (0, 0), 3) + rng.normal(0, rng.uniform(30, 60), f.shape).astype(np.float32)
    if kind == 3:  # texture wiped out: heavy blur, then shifted so it is visible on flat surfaces too
        return cv2.GaussianBlur(f, (0, 0), rng.uniform(3, 8)) + rng.uniform(-50, 50)
    return np.full_like(f, rng.uniform(0, 60)) + rng.normal(0, 4, f.shape).astype(np.float32)  # a void


def paste_anomaly(img: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``img`` with one synthetic anomaly (uint8) and its label (bool), which may be empty."""
    h, w = img.shape[:2]
    mask = SHAPES[int(rng.integers(len(SHAPES)))](rng, h, w)
    # mostly crisp edges; a quarter fade out over several pixels, as soaked-in stains do
    soft = rng.uniform(2, 6) if rng.random() < 0.25 else rng.uniform(0, 1.5)
    a = mask.astype(np.float32)
    if soft > 0.3:
        a = cv2.GaussianBlur(a, (0, 0), soft)
        a = a / max(float(a.max()), 1e-6)
        mask = a > 0.35
    a = (a * rng.uniform(0.75, 1.0))[..., None]
    out = np.clip(img * (1 - a) + fill(img, other, rng) * a, 0, 255).astype(np.uint8)
    changed = np.abs(out.astype(np.float32) - img).max(axis=2) > VISIBLE  # a colour cast counts
    return out, mask & changed
