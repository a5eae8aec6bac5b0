"""Reading image files into the frames the runtime works on (uint8, BGR or grayscale)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from lineguard.runtime.errors import InputError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


def to_uint8(img: np.ndarray) -> np.ndarray:
    """16-bit and float images (machine-vision cameras write both) to 8 bits."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        hi = 1.0 if float(np.nanmax(img)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(img) * (255.0 / hi), 0, 255).astype(np.uint8)
    raise InputError(f"pixel type {img.dtype} is not supported")


def decode(buf: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, ...) to uint8 gray (H, W) or BGR (H, W, 3)."""
    arr = np.frombuffer(buf, dtype=np.uint8) if isinstance(buf, (bytes, bytearray, memoryview)) else buf
    img = cv2.imdecode(arr, cv2.IMREAD_UNCHANGED) if arr.size else None
    if img is None:
        raise InputError(f"{name}: not an image OpenCV can decode")
    img = to_uint8(img)
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    return img


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a file into a frame; raise InputError naming the file when it cannot be used."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, not an image")
    try:
        data = np.fromfile(p, dtype=np.uint8)  # np.fromfile + imdecode copes with non-ASCII paths
    except OSError as e:
        raise InputError(f"{p}: unreadable ({e.strerror})") from None
    return decode(data, str(p))


def mask_path(image: str | os.PathLike) -> Path:
    """MVTec layout: ``<cat>/test/<type>/<name>.png`` → ``<cat>/ground_truth/<type>/<name>_mask.png``."""
    p = Path(image)
    return p.parents[2] / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files in a folder by extension, sorted; hidden files skipped."""
    root = Path(folder)
    it = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))


def normal_images(folder: str | Path) -> list[Path]:
    """Image files of a folder of normal parts (or an MVTec category root: its ``train/good``)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    if (root / "train" / "good").is_dir():
        root = root / "train" / "good"
    files = list_images(root)
    if not files:
        raise InputError(f"{root}: no image files (.png, .jpg, .bmp, .tif, ...)")
    return files
