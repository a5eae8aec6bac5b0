"""An MVTec-layout dataset read for DDQA, tolerantly: a missing, unreadable or empty mask costs only
the questions that need it (localisation and box), and each problem is reported with its file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lineguard.runtime.errors import InputError
from lineguard.runtime.imageio import list_images, mask_path, read_image


@dataclass
class Item:
    image: Path  # relative to the dataset root
    defect: str  # "good" or the defect folder's name
    size: tuple[int, int]  # width, height
    mask: np.ndarray | None = None  # bool [H, W]; None where there is no usable mask


@dataclass
class Problem:
    file: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"


def walk(root: str | Path) -> tuple[list[Item], list[Problem]]:
    """Every readable test image with its mask where usable, and every problem met on the way."""
    root = Path(root)
    test = root / "test"
    if not test.is_dir():
        raise InputError(f"{test}: no such folder (expected an MVTec-layout category: test/<type>/, ground_truth/)")
    items: list[Item] = []
    problems: list[Problem] = []
    for folder in sorted(p for p in test.iterdir() if p.is_dir()):
        files = list_images(folder)
        if not files:
            problems.append(Problem(str(folder), "no images in this folder"))
            continue
        for img in files:
            try:
                h, w = read_image(img).shape[:2]
            except Exception as e:  # one bad image costs its own questions only
                problems.append(Problem(str(img), f"unreadable image ({e})"))
                continue
            item = Item(img.relative_to(root), folder.name, (w, h))
            if folder.name != "good":
                item.mask = _mask(mask_path(img), (h, w), problems)
            items.append(item)
    if not items:
        raise InputError(f"{test}: no readable test images")
    return items, problems


def _mask(path: Path, hw: tuple[int, int], problems: list[Problem]) -> np.ndarray | None:
    if not path.is_file():
        problems.append(Problem(str(path), "missing mask: localisation and box questions skipped"))
        return None
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        problems.append(Problem(str(path), "unreadable mask: localisation and box questions skipped"))
        return None
    if m.shape != hw:
        problems.append(Problem(str(path), f"mask is {m.shape[1]}x{m.shape[0]} but its image is {hw[1]}x{hw[0]}: "
                                           "localisation and box questions skipped"))
        return None
    if not (m > 0).any():
        problems.append(Problem(str(path), "empty mask: localisation and box questions skipped"))
        return None
    return m > 0
