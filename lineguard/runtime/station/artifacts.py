"""Defect artefacts on disk: a mask PNG and an overlay JPEG per flagged frame, with a retention limit."""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path
from typing import Any

import cv2

from lineguard.runtime.overlay import heat_overlay, map_range

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class Artifacts:
    def __init__(self, folder: str | Path, keep: int = 1000) -> None:
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        # Files left by an earlier run count toward the limit, oldest first.
        self.kept: deque[list[Path]] = deque([p] for p in sorted(self.dir.glob("*_mask.png"), key=lambda p: p.stat().st_mtime))

    def save(self, frame: Any, result: Any, defects: list[Any], png: bytes | None,
             pixel_t: float | None) -> dict[str, str]:
        """Write the frame's artefacts; returns their paths. Names are the sanitised camera and frame id
        after the station's seq, so a sender repeating an id never overwrites an earlier frame's files."""
        stem = _SAFE.sub("_", f"{frame.seq}_{frame.camera}_{frame.frame_id}")[:120]
        out: dict[str, str] = {}
        files = []
        if png is not None:
            mask = self.dir / f"{stem}_mask.png"
            mask.write_bytes(png)
            out["mask"], files = str(mask), [mask]
        vmin, vmax = map_range(pixel_t)
        overlay = self.dir / f"{stem}_overlay.jpg"
        cv2.imwrite(str(overlay), heat_overlay(frame.image if frame.image.ndim == 3 else
                                               cv2.cvtColor(frame.image, cv2.COLOR_GRAY2BGR),
                                               result.anomaly_map, vmin, vmax, [d.region.box for d in defects]),
                    [cv2.IMWRITE_JPEG_QUALITY, 85])
        out["overlay"] = str(overlay)
        files.append(overlay)
        self.kept.append(files)
        while len(self.kept) > self.keep:
            for old in self.kept.popleft():
                old.unlink(missing_ok=True)
                old.with_name(old.name.replace("_mask.png", "_overlay.jpg")).unlink(missing_ok=True)
        return out
