"""Defect artefacts on disk, per flagged frame: the frame as JPEG, the union mask as PNG and an
overlay JPEG (heat map and boxes), with a retention limit. Written by the background defect stage,
never on the verdict thread; the web view serves them as they are."""

from __future__ import annotations

import re
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import cv2

from lineguard.runtime.overlay import heat_overlay, map_range

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
KINDS = {"frame": "_frame.jpg", "mask": "_mask.png", "overlay": "_overlay.jpg"}
JPEG = [cv2.IMWRITE_JPEG_QUALITY, 85]


def _seq_of(p: Path) -> int | None:
    head = p.name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


class Artifacts:
    def __init__(self, folder: str | Path, keep: int = 1000) -> None:
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        # Files left by an earlier run count toward the limit, oldest first (by the station's seq).
        old: dict[int, list[Path]] = defaultdict(list)
        for p in self.dir.iterdir():
            if (s := _seq_of(p)) is not None and p.name.endswith(tuple(KINDS.values())):
                old[s].append(p)
        self.kept: deque[list[Path]] = deque(old[s] for s in sorted(old))

    def save(self, frame: Any, result: Any, defects: list[Any], png: bytes | None,
             pixel_t: float | None) -> dict[str, str]:
        """Write the frame's artefacts; returns their paths. Names start with the station's seq, then
        the sanitised camera and frame id, so a sender repeating an id never overwrites a file."""
        stem = _SAFE.sub("_", f"{frame.seq}_{frame.camera}_{frame.frame_id}")[:120]
        image = frame.image if frame.image.ndim == 3 else cv2.cvtColor(frame.image, cv2.COLOR_GRAY2BGR)
        out: dict[str, str] = {}
        files = []
        cv2.imwrite(str(p := self.dir / f"{stem}{KINDS['frame']}"), image, JPEG)
        out["frame"] = str(p)
        files.append(p)
        if png is not None:
            (p := self.dir / f"{stem}{KINDS['mask']}").write_bytes(png)
            out["mask"] = str(p)
            files.append(p)
        vmin, vmax = map_range(pixel_t)
        cv2.imwrite(str(p := self.dir / f"{stem}{KINDS['overlay']}"),
                    heat_overlay(image, result.anomaly_map, vmin, vmax, [d.region.box for d in defects]), JPEG)
        out["overlay"] = str(p)
        files.append(p)
        self.kept.append(files)
        while len(self.kept) > self.keep:
            for old in self.kept.popleft():
                old.unlink(missing_ok=True)
        return out

    def find(self, seq: int, kind: str) -> Path | None:
        """A kept artefact of the frame with this seq (``kind``: frame, mask or overlay)."""
        return next((p for p in self.dir.glob(f"{seq}_*{KINDS[kind]}") if _seq_of(p) == seq), None)
