"""Where the command line's log lines go, and in what form.

lineguard's own informational lines (``serving: ...``, a gate's pass or fail) are INFO and
shown; other libraries speak from WARNING up. ``--quiet`` keeps warnings and errors only and
no progress bars; ``--log-format json`` writes one JSON object per line for a log collector.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from lineguard.progress import set_quiet

FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z", "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup(verbose: bool = False, quiet: bool = False, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("lineguard").setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    set_quiet(quiet)
