"""Reading an MVTec-AD-layout category: test images with labels and ground-truth masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import InputError
from runtime.imageio import list_images, read_image


@dataclass
class Sample:
    path: Path
    defect: str  # "good" or the defect folder's name
    mask_path: Path | None

    @property
    def label(self) -> int:
        return int(self.defect != "good")


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
                mask = root / "ground_truth" / folder.name / f"{img.stem}_mask.png"
                if not mask.is_file():
                    raise InputError(f"{mask}: missing mask for {img}")
            out.append(Sample(img, folder.name, mask))
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
