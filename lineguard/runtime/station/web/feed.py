"""The live line as the web view shows it: per camera the latest frame and the last defect, a strip
of recent verdicts, and latency and rate over the last minute.

The station's threads only *note* what they publish (a deque append and a dict assignment, no lock,
no encoding); the web server's loop folds the notes into this state at a capped rate (``tick``)
and encodes a frame's JPEG only when a browser asks for it, once per frame. A page open at 60
frames/s costs the verdict path nothing it would notice.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

STRIP = 40  # recent verdicts kept per camera
WINDOW_S = 60.0  # latency and rate are over the last minute
NOTES = 8192  # notes waiting for the next tick; past this the oldest go (the counters come from Stats)


@dataclass
class Shown:
    """A frame the page shows: its record so far, and its pixels until encoded."""
    seq: int
    image: np.ndarray | None
    record: dict[str, Any] = field(default_factory=dict)
    mask_png: bytes | None = None
    jpeg: bytes | None = None

    def encoded(self) -> bytes | None:
        if self.jpeg is None and self.image is not None:
            ok, buf = cv2.imencode(".jpg", self.image, [cv2.IMWRITE_JPEG_QUALITY, 85])
            self.jpeg, self.image = (buf.tobytes() if ok else None), None
        return self.jpeg


@dataclass
class Camera:
    latest: Shown | None = None
    defect: Shown | None = None
    strip: deque = field(default_factory=lambda: deque(maxlen=STRIP))
    verdicts: deque = field(default_factory=deque)  # (verdict time, latency s) over the window


class LiveFeed:
    def __init__(self) -> None:
        self.notes: deque[tuple[str, dict[str, Any], bytes | None]] = deque(maxlen=NOTES)
        self.frames: dict[str, tuple[int, np.ndarray]] = {}  # camera → (seq, pixels) of its newest verdict
        self.flagged: dict[str, tuple[int, np.ndarray]] = {}  # camera → the same of its newest defect
        self.cameras: dict[str, Camera] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=STRIP)  # all cameras, for the strip
        self.overflow = 0

    # ---- the station's side: called on its threads, O(1) ----------------------------------
    def frame(self, camera: str, seq: int, image: np.ndarray, flagged: bool) -> None:
        """The pixels of a frame whose verdict is being published (kept by reference, not copied)."""
        self.frames[camera] = (seq, image)
        if flagged:  # the last defect outlives newer good frames
            self.flagged[camera] = (seq, image)

    def note(self, topic: str, body: dict[str, Any], png: bytes | None) -> None:
        if len(self.notes) == NOTES:
            self.overflow += 1
        self.notes.append((topic, body, png))

    # ---- the web server's side: one thread (its event loop) ---------------------------------
    def tick(self, now: float | None = None) -> None:
        """Fold the notes in."""
        now = time.time() if now is None else now
        while self.notes:
            topic, body, png = self.notes.popleft()
            cam = self.cameras.setdefault(str(body.get("camera") or "unknown"), Camera())
            if topic == "verdict":
                self._verdict(cam, str(body.get("camera")), body, png)
            elif topic == "explanation" and cam.defect is not None and cam.defect.seq == body.get("seq"):
                cam.defect.record["explanation"] = body.get("explanation")
            elif topic == "error":
                item = {"seq": body.get("seq"), "frame_id": body.get("frame_id"), "verdict": "error",
                        "code": body.get("code"), "reason": body.get("reason")}
                if body.get("verdict_published"):
                    continue  # a shed explanation or mask: the frame's verdict is already in the strip
                cam.strip.append(item)
                self.recent.append(item | {"camera": body.get("camera")})
        for cam in self.cameras.values():
            while cam.verdicts and cam.verdicts[0][0] < now - WINDOW_S:
                cam.verdicts.popleft()

    def _verdict(self, cam: Camera, name: str, body: dict[str, Any], png: bytes | None) -> None:
        seq = body.get("seq")
        if body.get("update") == "masks":
            if cam.defect is not None and cam.defect.seq == seq:
                cam.defect.record |= {"defects": body.get("defects"), "ts": body.get("ts")}
                cam.defect.mask_png = png
            return
        keep = {k: body.get(k) for k in ("seq", "frame_id", "camera", "verdict", "score", "score_norm", "hottest",
                                         "ts", "repeat")}
        ts = body.get("ts") or {}
        if "verdict" in ts and "received" in ts:
            cam.verdicts.append((ts["verdict"], ts["verdict"] - ts["received"]))
        item = {k: keep[k] for k in ("seq", "frame_id", "verdict", "score")}
        cam.strip.append(item)
        self.recent.append(item | {"camera": name})
        seen = self.frames.get(name)
        cam.latest = Shown(seq, seen[1] if seen and seen[0] == seq else None, keep)
        if body.get("verdict") == "defect":
            flagged = self.flagged.get(name)
            cam.defect = Shown(seq, flagged[1] if flagged and flagged[0] == seq else None, dict(keep))

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """What the live page renders: JSON-ready, small (no pixels)."""
        now = time.time() if now is None else now
        out = {}
        for name, cam in sorted(self.cameras.items()):
            lat = np.array([v[1] for v in cam.verdicts]) * 1e3
            span = (now - cam.verdicts[0][0]) if cam.verdicts else 0.0
            out[name] = {
                "latest": _shown(cam.latest), "defect": _shown(cam.defect), "strip": list(cam.strip),
                "window": {"seconds": WINDOW_S, "verdicts": len(lat),
                           "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
                           "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
                           "fps": round(len(lat) / max(span, 1.0), 2) if len(lat) else 0.0}}
        return {"cameras": out, "recent": list(self.recent), "overflow": self.overflow}

    def shown(self, camera: str, which: str) -> Shown | None:
        cam = self.cameras.get(camera)
        return None if cam is None else cam.defect if which == "defect" else cam.latest


def _shown(s: Shown | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return s.record | {"has_image": s.image is not None or s.jpeg is not None, "has_mask": s.mask_png is not None}
