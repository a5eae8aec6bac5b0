"""Frames of any size and channel count → the batch tensor a stage's graph expects.

Export fits and checks models through these same functions, so the deployed path and
the training path cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from lineguard.runtime.bundle.manifest import InputSpec
from lineguard.runtime.errors import InputError


def convert_color(frame: np.ndarray, color: str) -> np.ndarray:
    """Gray (H,W), (H,W,1), BGR or BGRA uint8 → ``color`` ("BGR", "RGB" or "GRAY")."""
    if frame.dtype != np.uint8:
        raise InputError(f"frame dtype is {frame.dtype}, expected uint8")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 3 and frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim == 2:
        if color == "GRAY":
            return frame
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB if color == "RGB" else cv2.COLOR_GRAY2BGR)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise InputError(f"frame shape {tuple(frame.shape)} is not (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if color == "GRAY":
        return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    if color == "RGB":
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    return frame


def resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    if frame.shape[0] == height and frame.shape[1] == width:
        return frame
    shrinking = frame.shape[0] * frame.shape[1] > height * width
    # INTER_AREA averages when shrinking (no aliasing of fine scratches); linear when enlarging
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def prepare(frame: np.ndarray, spec: InputSpec, size: tuple[int, int] | None = None) -> np.ndarray:
    """One frame → (H, W, C) uint8 in the spec's colour order, at ``size`` (default: the spec's)."""
    if frame.ndim < 2 or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise InputError(f"frame shape {tuple(frame.shape)} has no pixels")
    img = resize(convert_color(frame, spec.color), *(size or (spec.height, spec.width)))
    return img[:, :, None] if img.ndim == 2 else img


def to_batch(frames: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Frames → one input tensor in the spec's layout, dtype and normalisation.

    A graph with a fixed batch (``spec.batch``) gets exactly that many: a short batch is padded
    with copies of its last frame, whose results the caller drops.
    """
    if spec.batch is not None and not 0 < len(frames) <= spec.batch:
        raise InputError(f"{len(frames)} frames for a graph with a fixed batch of {spec.batch}")
    sizes = {f.shape[:2] for f in frames}
    # a graph that resizes itself gets frames as they are, when the batch shares one size
    size = next(iter(sizes)) if spec.any_size and len(sizes) == 1 else None
    x = np.stack([prepare(f, spec, size) for f in frames])  # N,H,W,C uint8
    if spec.batch is not None and len(x) < spec.batch:
        x = np.concatenate([x, np.repeat(x[-1:], spec.batch - len(x), axis=0)])
    if spec.normalize == "runtime" or spec.dtype == "float32":
        x = x.astype(np.float32)
        if spec.normalize == "runtime":
            x *= spec.scale
            x -= np.asarray(spec.mean, np.float32)
            x /= np.asarray(spec.std, np.float32)
    if spec.layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x
