"""The run's steps: each timed; a step that raises is recorded (skipped or failed, one line), never
a crash."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from typing import Any


class Skip(Exception):
    """This step cannot run here; the message is the one-line reason."""


class Check:
    """Runs steps, each timed; a step that raises is recorded (skipped or failed, one line), never a crash."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.steps: list[dict[str, Any]] = []

    def say(self, msg: str) -> None:
        self.bar.write(msg, file=sys.stderr)

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        self.bar.set_description(name)
        t0 = time.perf_counter()
        out, status, reason = None, "ok", None
        try:
            out = fn()
        except Skip as e:
            status, reason = "skipped", str(e)
        except Exception as e:  # any failure of a step is a row of the report, not the end of the run
            status, reason = "failed", one_line(e)
            traceback.print_exc(file=sys.stderr)
        secs = round(time.perf_counter() - t0, 1)
        self.steps.append({"step": name, "status": status, "reason": reason, "seconds": secs})
        self.say(f"{name}: {status}" + (f" ({reason})" if reason else "") + f", {secs} s")
        self.bar.update(1)
        return out


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
