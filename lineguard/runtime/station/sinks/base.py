"""The sink interface: a bounded queue and a thread of its own."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from typing import Any

log = logging.getLogger("lineguard.sinks")


class Sink:
    """Subclasses implement ``send`` (on the sink's thread) and may extend ``state``."""

    kind = "sink"

    def __init__(self, name: str, queue_size: int = 1000) -> None:
        self.name = name
        self.q: queue.Queue[tuple[str, dict[str, Any], bytes | None] | None] = queue.Queue(queue_size)
        self.counts: Counter[str] = Counter()  # offered, sent, dropped, failed
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def offer(self, topic: str, body: dict[str, Any], png: bytes | None) -> None:
        """From the station's threads: queue it or count it dropped; never blocks."""
        try:
            self.q.put_nowait((topic, body, png))
            self.count("offered")
        except queue.Full:
            self.count("dropped")

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                item = self.q.get(timeout=0.2)
            except queue.Empty:
                self._idle()
                continue
            if item is None:
                self._idle()
                return
            try:
                self.send(*item)
            except Exception:  # one message's failure: counted, the sink goes on
                log.exception("%s: sending one message failed", self.name)
                self.count("failed")

    def send(self, topic: str, body: dict[str, Any], png: bytes | None) -> None:
        raise NotImplementedError

    def _idle(self) -> None:
        try:
            self.idle()
        except Exception:  # a failed backlog or handshake step: logged, the sink's thread goes on
            log.exception("%s: idle work failed", self.name)

    def idle(self) -> None:
        """Called on the sink's thread when nothing came for a moment (e.g. to send a backlog)."""

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (until ``timeout``), then stop."""
        end = time.monotonic() + timeout
        try:
            self.q.put(None, timeout=max(0.1, timeout))
        except queue.Full:
            pass
        self.thread.join(max(0.1, end - time.monotonic()))

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {"kind": self.kind, "queue": self.q.qsize(), **dict(self.counts)}
