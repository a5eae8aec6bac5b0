"""Progress bars for long work: shown on a terminal only, never under ``--quiet``.

tqdm's ``disable=None`` turns a bar off when stderr is not a TTY, so a station's log file or a
pipe gets no carriage-return lines; ``--quiet`` turns them off on a terminal too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Process-wide: the CLI's ``--quiet``."""
    global _quiet
    _quiet = quiet


def bar(iterable: Iterable[Any], desc: str, unit: str, progress: bool = True, **kw: Any) -> tqdm:
    """``tqdm(iterable)`` that shows only where a person is watching."""
    return tqdm(iterable, desc=desc, unit=unit, disable=True if _quiet or not progress else None, **kw)
