"""ONNX Runtime's quantizers log advice on the root logger: hide it while they run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_root_logger() -> Iterator[None]:
    """ORT's quantizer logs advice on the root logger; hide it while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
