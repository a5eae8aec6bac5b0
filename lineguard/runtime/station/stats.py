"""The station's counters and latency histograms, read by the health endpoint and the metrics."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from typing import Any

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds, per-stage latency


class Stats:
    """Counters the health endpoint and the metrics read; one lock, cheap increments."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.dropped: dict[str, Counter[str]] = defaultdict(Counter)  # camera → stage → n
        self.cameras: dict[str, Counter[str]] = defaultdict(Counter)  # camera → frames | defects | errors → n
        self.verdicts: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)  # stage → recent seconds (bounded)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))  # histogram counts
        self.latency_sum: Counter[str] = Counter()
        self.batches: list[int] = []

    def inc(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def camera(self, camera: str | None, key: str) -> None:
        with self.lock:
            self.cameras[camera or "unknown"][key] += 1

    def drop(self, camera: str, stage: str) -> None:
        with self.lock:
            self.dropped[camera][stage] += 1
            self.counts["dropped"] += 1

    def observe(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.buckets[stage][next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))] += 1
            self.latency_sum[stage] += seconds
            lst = self.latency[stage]
            lst.append(seconds)
            if len(lst) > 4096:
                del lst[:2048]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"counts": dict(self.counts), "errors": dict(self.errors), "verdicts": dict(self.verdicts),
                    "dropped": {c: dict(v) for c, v in self.dropped.items()},
                    "cameras": {c: dict(v) | {"dropped": sum(self.dropped.get(c, {}).values())}
                                for c, v in self.cameras.items()},
                    "mean_batch": (sum(self.batches[-1000:]) / len(self.batches[-1000:])) if self.batches else None}
