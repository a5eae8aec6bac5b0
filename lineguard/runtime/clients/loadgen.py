"""The load generator of `lineguard bench`: an open-loop sender and a result collector.

Open loop: frame i leaves at t0 + i/rate whether or not results came back (a line does not
wait for the station). Frames are encoded once, up front, so the generator's own cost is a
send. Its lateness is measured: a rate this machine cannot produce is reported as such,
not as the station's shortfall.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import zmq

from lineguard.runtime.errors import LineguardError
from lineguard.runtime.imageio import list_images, read_image
from lineguard.runtime.station.protocol import encode_frame


def image_pools(folder: str | Path, limit: int = 64, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(normal, defect) frames: MVTec layout (``train/good``, ``test/good`` vs ``test/<defect>``) or a flat folder
    (all normal). At most ``limit`` of each, chosen with ``seed``."""
    root = Path(folder)
    if not root.is_dir():
        raise LineguardError(f"--images {root}: not a folder")
    rng = np.random.default_rng(seed)
    if (root / "test").is_dir():
        normal = list_images(root / "test" / "good") if (root / "test" / "good").is_dir() else []
        normal += list_images(root / "train" / "good") if (root / "train" / "good").is_dir() else []
        defect = [p for d in sorted((root / "test").iterdir()) if d.is_dir() and d.name != "good" for p in list_images(d)]
    else:
        normal, defect = list_images(root, recursive=True), []
    if not normal and not defect:
        raise LineguardError(f"--images {root}: no image files")

    def pick(paths: list[Path]) -> list[np.ndarray]:
        idx = rng.permutation(len(paths))[:limit]
        return [read_image(paths[i]) for i in sorted(idx)]

    return pick(normal), pick(defect)


@dataclass
class Sample:
    frame_id: str
    defect_sent: bool
    sent: float  # time.time() at send
    late: float  # seconds behind schedule at send
    verdict_at: float | None = None
    verdict: str | None = None
    masks_at: float | None = None
    explained_at: float | None = None
    error: str | None = None
    late_error: str | None = None  # after the verdict: masks or explanation dropped or failed
    server_ts: dict[str, float] = field(default_factory=dict)
    deadline_missed: bool = False  # the decision was the fail-safe (or the verdict came late)


class Collector(threading.Thread):
    """Subscribes before the first frame and records every result by frame id."""

    def __init__(self, ctx: zmq.Context, publish: str) -> None:
        super().__init__(name="collector", daemon=True)
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(publish)
        self.samples: dict[str, Sample] = {}
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.other = 0  # results for frames this run did not send

    def run(self) -> None:
        while not self.stop_flag.is_set():
            if not self.sock.poll(100):
                continue
            parts = self.sock.recv_multipart()
            now = time.time()
            topic, body = parts[0].decode(), json.loads(parts[1])
            with self.lock:
                s = self.samples.get(str(body.get("frame_id")))
                if s is None:
                    self.other += 1
                    continue
                if topic == "verdict" and body.get("deadline_missed"):
                    s.deadline_missed = True
                if topic == "verdict" and body.get("reason") == "deadline":  # the decision, at the deadline
                    s.verdict_at, s.verdict, s.deadline_missed = now, body.get("verdict"), True
                elif topic == "verdict" and (not body.get("update") or body.get("update") == "verdict"):
                    if s.verdict_at is None:
                        s.verdict_at = now
                    s.verdict, s.server_ts = body.get("verdict"), body.get("ts", {})
                elif topic == "verdict":
                    s.masks_at = now
                    s.server_ts = body.get("ts", s.server_ts)
                elif topic == "explanation":
                    s.explained_at = now
                    s.server_ts = body.get("ts", s.server_ts)
                elif topic == "error" and s.verdict_at is None:
                    s.error = body.get("code")
                elif topic == "error":
                    s.late_error = body.get("code")

    def close(self) -> None:
        self.stop_flag.set()
        self.join(2)
        self.sock.close(0)


def encoded(frames: list[np.ndarray], jpeg: int | None) -> list[list[Any]] | None:
    """Each frame as the wire carries it: raw pixels, or a JPEG at quality ``jpeg`` (as a camera sends it)."""
    if jpeg is None:
        return [encode_frame("x", "bench", image=f) for f in frames] or None
    return [encode_frame("x", "bench", jpeg=cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, jpeg])[1].tobytes())
            for f in frames] or None


def send_open_loop(ctx: zmq.Context, ingest: str, collector: Collector, normal: list[np.ndarray],
                   defect: list[np.ndarray], rate: float, duration: float, defect_rate: float, seed: int = 0,
                   prefix: str = "b", jpeg: int | None = None) -> dict[str, Any]:
    """Send ``rate × duration`` frames on schedule; returns the generator's own figures."""
    rng = np.random.default_rng(seed)
    pool_n, pool_d = encoded(normal, jpeg), encoded(defect, jpeg)
    sock = ctx.socket(zmq.PUSH)
    sock.sndhwm, sock.linger = 100_000, 5000  # linger: close() must not discard the last frames queued
    sock.connect(ingest)
    n = max(1, int(round(rate * duration)))
    period = 1.0 / rate
    failed = 0
    t0 = time.perf_counter() + 0.05
    wall0 = time.time() + 0.05
    lates = []
    for i in range(n):
        slot = t0 + i * period
        delay = slot - time.perf_counter()
        if delay > 0.0005:
            time.sleep(delay - 0.0003)  # Linux wakes within ~0.1 ms: spin only the last 0.3 ms (a spinning
            # sender would take a core's share from a station it shares the machine with)
        while time.perf_counter() < slot:
            pass
        is_defect = pool_d is not None and (pool_n is None or rng.random() < defect_rate)
        header, payload = (pool_d if is_defect else pool_n)[int(rng.integers(len(pool_d if is_defect else pool_n)))]
        fid = f"{prefix}{i}"
        h = json.loads(header)
        sent = time.time()
        h |= {"frame_id": fid, "camera": "bench", "ts": sent}
        late = time.perf_counter() - slot
        lates.append(late)
        with collector.lock:
            collector.samples[fid] = Sample(fid, is_defect, sent, late)
        try:
            sock.send_multipart([json.dumps(h).encode(), payload], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            failed += 1
            with collector.lock:
                collector.samples[fid].error = "send_failed"
    elapsed = time.perf_counter() - t0
    sock.close()
    lates_ms = np.array(lates) * 1e3
    return {"frames": n, "send_failed": failed, "offered_fps": rate, "generated_fps": round(n / elapsed, 2),
            "late_ms_p50": round(float(np.median(lates_ms)), 3), "late_ms_p99": round(float(np.percentile(lates_ms, 99)), 3),
            "started": wall0}
