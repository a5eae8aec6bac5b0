"""Where a frame's results go: artefacts on disk, then the store, then the PUB socket (and the web
view's live feed, where one is open; the line's outputs take what the PUB socket sends), then the
counters.

Every result of the station leaves through here, so the order (stored before published) and
the message bodies are written once. Each message carries the station's ``seq`` beside the
sender's ``frame_id``: updates and explanations of a frame share its ``seq``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lineguard.runtime.inspection import Inspection, mask_png
from lineguard.runtime.station.artifacts import Artifacts
from lineguard.runtime.station.protocol import Frame
from lineguard.runtime.station.stats import Stats
from lineguard.runtime.station.store import ResultStore

Publish = Callable[[str, dict[str, Any], bytes | None], None]


def body(f: Frame) -> dict[str, Any]:
    return {"seq": f.seq, "frame_id": f.frame_id, "camera": f.camera, "ts_sent": f.ts_sent}


class Outbox:
    def __init__(self, publish: Publish, stats: Stats, store: ResultStore | None = None,
                 artifacts: Artifacts | None = None, pixel_t: float | None = None, live: Any = None) -> None:
        self._publish, self.stats, self.store, self.artifacts, self.pixel_t = publish, stats, store, artifacts, pixel_t
        self.live = live  # the web view's LiveFeed: O(1) notes, folded in on the web server's own thread

    def publish(self, topic: str, body: dict[str, Any], png: bytes | None) -> None:
        self._publish(topic, body, png)
        if self.live is not None:
            self.live.note(topic, body, png)

    def verdicts(self, items: list[tuple[Frame, Inspection, str | None]]) -> None:
        """An expert batch's verdicts: stored in one transaction, then each published. Each item's
        ``late``: the frame's deadline passed first — "failsafe" (its fail-safe verdict was the
        decision: this one follows as ``"update": "verdict"``) or "missed" (no fail-safe: marked)."""
        repeats = self.store.verdicts([(f.seq, f.frame_id, f.camera,
                                        ins.record | {"findings": {"hottest": ins.record["hottest"]}}, f.ts,
                                        late is not None) for f, ins, late in items]) \
            if self.store else [False] * len(items)
        for (f, ins, late), repeat in zip(items, repeats):
            rec = ins.record
            if repeat:  # the sender used this id before: both frames are kept, and it is said
                self.stats.inc("repeated_ids")
            f.ts["verdict"] = time.time()
            if self.live is not None:
                self.live.frame(f.camera, f.seq, f.image, rec["verdict"] == "defect")
            extra = ({"repeat": True} if repeat else {}) | ({"deadline_missed": True} if late else {}) \
                | ({"update": "verdict"} if late == "failsafe" else {})
            self.publish("verdict", body(f) | rec | {"ts": dict(f.ts)} | extra, None)
            self.stats.inc("verdicts")
            with self.stats.lock:
                self.stats.verdicts[str(rec["verdict"])] += 1
                self.stats.cameras[f.camera]["frames"] += 1
                self.stats.cameras[f.camera]["defects"] += rec["verdict"] == "defect"
            self.stats.observe("verdict", f.ts["verdict"] - f.ts["received"])

    def failsafe(self, seq: int, fid: str | None, cam: str | None, verdict: str | None, received: float,
                 deadline_ms: float) -> None:
        """A frame with no verdict at its deadline: the fail-safe verdict (``None``: only counted and
        marked, as ``--on-deadline none`` asks), stored and published before anything later of it."""
        self.stats.inc("deadline_missed")
        self.stats.camera(cam, "deadline_missed")
        if verdict is None:
            return
        ts = {"received": received, "deadline": time.time()}
        if self.store:
            self.store.failsafe(seq, fid, cam, verdict, ts)
        self.publish("verdict", {"seq": seq, "frame_id": fid, "camera": cam, "verdict": verdict, "score": None,
                                 "reason": "deadline", "deadline_ms": deadline_ms, "ts": ts}, None)

    def files(self, f: Frame, ins: Inspection) -> tuple[bytes | None, dict[str, str]]:
        """(the union mask as PNG, the artefacts' paths): encoding and disk writes, run by the caller's
        thread (the station's background defect stage), before ``masks`` stores and publishes them."""
        png = mask_png(ins.defects)
        return png, (self.artifacts.save(f, ins.result, ins.defects, png, self.pixel_t) if self.artifacts else {})

    def masks(self, f: Frame, ins: Inspection, png: bytes | None, paths: dict[str, str]) -> None:
        """The second verdict message of a flagged frame: its defects and their union mask."""
        rec = ins.record
        if self.store:
            self.store.update(f.seq, f.ts, findings={"hottest": rec["hottest"], "defects": rec["defects"]},
                              mask_path=paths.get("mask"))
        self.publish("verdict", body(f) | rec | {"update": "masks", "ts": dict(f.ts), "has_mask": png is not None},
                     png)
        self.stats.observe("masks", f.ts["masks"] - f.ts["received"])

    def explanation(self, f: Frame, e: dict[str, Any]) -> None:
        if self.store:
            self.store.update(f.seq, f.ts, explanation=e)
        self.publish("explanation", body(f) | {"explanation": e, "ts": dict(f.ts)}, None)
        self.stats.inc("explanations")
        self.stats.observe("explanation", f.ts["explained"] - f.ts["received"])

    def error(self, seq: int, fid: str | None, cam: str | None, reason: str, code: str, ts: dict[str, float],
              status: str = "error") -> None:
        """A frame that got no verdict: stored as an error (or a drop), then published."""
        if status != "dropped":
            self.stats.inc("errors")
            self.stats.camera(cam, "errors")
        if self.store and self.store.error(seq, fid, cam, reason, code, ts, status):
            self.stats.inc("repeated_ids")
        self.publish("error", {"seq": seq, "frame_id": fid, "camera": cam, "code": code, "reason": reason,
                               "ts": dict(ts)}, None)

    def late_error(self, f: Frame, reason: str, code: str = "stage_failed") -> None:
        """A failure after the verdict was out (masks or explanation): the row keeps its verdict."""
        self.stats.inc("errors")
        self.stats.camera(f.camera, "errors")
        if self.store:
            self.store.update(f.seq, f.ts, error=reason, error_code=code)
        self.publish("error", body(f) | {"code": code, "reason": reason, "ts": dict(f.ts)}, None)

    def dropped(self, f: Frame, stage: str, reason: str) -> None:
        """Masks or an explanation shed under load (counted): the verdict was already published."""
        self.stats.drop(f.camera, stage)
        if self.store:
            self.store.update(f.seq, f.ts, error=reason, error_code=f"dropped_{stage}")
        self.publish("error", body(f) | {"code": f"dropped_{stage}", "reason": reason, "ts": dict(f.ts),
                                         "verdict_published": True}, None)
