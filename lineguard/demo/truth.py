"""What the line video really shows, frame by frame (from ``line.csv``), and how a frame's
results score against it: verdict, pixel counts and the DDQA answers (AD, RDL, DFM, DC)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lineguard.ddqa.rules import IOU_HIT, box_iou, norm_box, rough_cell
from lineguard.runtime.imageio import mask_path


@dataclass
class FrameTruth:
    index: int
    item: int
    part: str
    defect: str  # "good" or the defect type
    source: Path
    centred: bool
    x: int  # the part's left edge in the frame (negative: partly out of view)

    def part_mask(self) -> np.ndarray | None:
        """The defect's pixels in the part's own image (None for a good part)."""
        return None if self.defect == "good" else cv2.imread(str(mask_path(self.source)), cv2.IMREAD_GRAYSCALE) > 0

    def mask(self, frame_hw: tuple[int, int], part: np.ndarray | None = None) -> np.ndarray:
        """The defect's pixels in frame coordinates (empty for a good part); ``part``: the
        part mask if already read."""
        h, w = frame_hw
        out = np.zeros((h, w), bool)
        if self.defect == "good":
            return out
        m = part if part is not None else self.part_mask()
        a, b = max(0, self.x), min(w, self.x + m.shape[1])
        if b > a:
            out[:m.shape[0], a:b] = m[:, a - self.x:b - self.x]
        return out


def read_truth(csv_path: Path) -> list[FrameTruth]:
    with open(csv_path, newline="") as f:
        return [FrameTruth(int(r["frame"]), int(r["item"]), r["part"], r["defect"], Path(r["source"]),
                           r["centred"] == "1", int(r["x"])) for r in csv.DictReader(f)]


def part_view(mask: np.ndarray, t: FrameTruth, size: int) -> np.ndarray:
    """The part's own square of a frame-sized mask: DDQA's cells and boxes are the part's."""
    return mask[:size, t.x:t.x + size]


def ddqa_answers(t: FrameTruth, flagged: bool, found: np.ndarray | None, cls: str | None,
                 size: int, gt: np.ndarray | None = None) -> dict[str, Any]:
    """Right/wrong per DDQA task for one centred frame, from the runtime's own answers (as
    ``lineguard ddqa eval`` scores them: a defect not found answers nothing, which is wrong)."""
    out: dict[str, Any] = {"AD": flagged == (t.defect != "good")}
    if t.defect == "good":
        return out
    gt = gt if gt is not None else t.part_mask()  # a centred part is all in view
    pred = part_view(found, t, size) if found is not None else None
    have = pred is not None and pred.any()
    out["RDL"] = have and rough_cell(pred) == rough_cell(gt)
    iou = box_iou(norm_box(pred), norm_box(gt)) if have else 0.0
    out["DFM"], out["DFM_iou"] = iou >= IOU_HIT, iou
    out["DC"] = cls == t.defect
    return out
