"""Reading calibration and evaluation data: folders of normal images, MVTec-AD-layout categories.

Every problem names the file or folder: a calibration that silently skipped half its images
would set a threshold nobody can trust.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lineguard.progress import bar
from lineguard.runtime.errors import InputError
from lineguard.runtime.imageio import list_images, mask_path, read_image


@dataclass
class Sample:
    path: Path
    defect: str  # "good" or the defect folder's name
    mask_path: Path | None

    @property
    def label(self) -> int:
        return int(self.defect != "good")


@dataclass
class Labelled:
    """Test frames with labels and boolean masks at each frame's own size."""

    samples: list[Sample]
    frames: list[np.ndarray]
    masks: list[np.ndarray]

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)


def read_frames(paths: Sequence[Path], desc: str = "read", progress: bool = True) -> list[np.ndarray]:
    return [read_image(p) for p in bar(paths, desc=desc, unit="img", progress=progress, leave=False)]


def test_samples(category: str | Path) -> list[Sample]:
    """Every test image of ``category`` with its mask (None for good images)."""
    root = Path(category)
    test = root / "test"
    if not test.is_dir():
        raise InputError(f"{test}: no such folder (expected an MVTec-layout category)")
    out = []
    for folder in sorted(p for p in test.iterdir() if p.is_dir()):
        for img in list_images(folder):
            mask = None
            if folder.name != "good":
                mask = mask_path(img)
                if not mask.is_file():
                    raise InputError(f"{mask}: missing mask for {img}")
            out.append(Sample(img, folder.name, mask))
    if not out:
        raise InputError(f"{test}: no test images")
    return out


def read_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of ``shape`` (all False for good images); a mask of another size than its image is an error."""
    if sample.mask_path is None:
        return np.zeros(shape, bool)
    m = read_image(sample.mask_path)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != shape:
        raise InputError(f"{sample.mask_path}: mask is {m.shape[1]}x{m.shape[0]}, its image {shape[1]}x{shape[0]}")
    return m > 127


def load_labelled(category: str | Path, every: int = 1, progress: bool = True) -> Labelled:
    """Read the test split of a category (every ``every``-th image, for quick checks)."""
    samples = test_samples(category)[::every]
    frames, masks = [], []
    for s in bar(samples, desc="read test", unit="img", progress=progress, leave=False):
        f = read_image(s.path)
        frames.append(f)
        masks.append(read_mask(s, f.shape[:2]))
    return Labelled(samples, frames, masks)
