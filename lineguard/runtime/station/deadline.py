"""The verdict deadline: every frame gets a decision within ``deadline_ms`` of its arrival.

Frames are registered when they arrive (one dict insert) and claimed when their verdict is
published. A watchdog thread wakes a few times per deadline and, for each frame still unclaimed
past its deadline (a backlog, a stalled or failed stage, a dropped or undecodable frame), has the
outbox publish the fail-safe verdict (``reject`` → ``defect``, ``accept`` → ``good``) marked
``"reason": "deadline"``; the real verdict, if one comes, follows as an update. Whoever claims
a frame first decides, under one lock, so a frame never gets two first verdicts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("lineguard.serve")
FAILSAFE = {"reject": "defect", "accept": "good", "none": None}


class Deadline:
    def __init__(self, deadline_ms: float, on_deadline: str, fire: Callable[[int, float, Any], None]) -> None:
        """``fire(seq, received, ident)`` publishes the fail-safe of one frame (``ident``: what
        ``register`` was given to name it: the raw message, read only now)."""
        if on_deadline not in FAILSAFE:
            raise ValueError(f"on_deadline {on_deadline!r}: one of {', '.join(FAILSAFE)}")
        self.s = deadline_ms / 1e3
        self.verdict = FAILSAFE[on_deadline]
        self.fire = fire
        self.pending: dict[int, tuple[float, Any]] = {}  # seq → (received, ident), in arrival order
        self.missed: dict[int, threading.Event] = {}  # deadline passed: set once its fail-safe is out
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="deadline", daemon=True)

    def register(self, seq: int, received: float, ident: Any) -> None:
        with self.lock:
            self.pending[seq] = (received, ident)

    def claim(self, seq: int) -> bool:
        """The frame's verdict is being published: True if in time (it is the frame's decision),
        False if the deadline passed first (the fail-safe was the decision; this is the update, and
        it waits until the fail-safe is out, so no one sees them in the wrong order)."""
        with self.lock:
            if self.pending.pop(seq, None) is not None:
                return True
            out = self.missed.pop(seq, None)
        if out is None:
            return True  # not registered (a deadline set after it arrived): in time
        out.wait(1.0)
        return False

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(2)

    def _watch(self) -> None:
        tick = min(0.05, self.s / 4)
        while not self.stopping.wait(tick):
            now = time.time()
            due = []
            with self.lock:
                for seq, (received, ident) in list(self.pending.items()):
                    if received + self.s > now:
                        break  # arrival order: the rest are younger
                    del self.pending[seq]
                    self.missed[seq] = threading.Event()
                    due.append((seq, received, ident, self.missed[seq]))
                if len(self.missed) > 100_000:  # frames that never got a verdict (errors): forget the oldest
                    for old in list(self.missed)[:50_000]:
                        del self.missed[old]
            for seq, received, ident, out in due:
                try:
                    self.fire(seq, received, ident)
                except Exception:  # one frame's fail-safe failed: logged, the watchdog goes on
                    log.exception("the fail-safe verdict of frame %d failed", seq)
                finally:
                    out.set()
