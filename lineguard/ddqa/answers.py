"""Reading a language model's free-text answer to a DDQA question."""

from __future__ import annotations

import re

_NUM = re.compile(r"(?<![A-Za-z0-9.])-?\d+(?:\.\d+)?")  # not the 0 of "x0" nor digits inside words
_YES = re.compile(r"\b(?:yes|defective|has an? (?:defect|flaw)|there is an? (?:defect|flaw)|anomal\w*)\b")
_NO = re.compile(r"\b(?:no|not (?:defective|anomalous)|normal|defect free|without (?:any )?defects?|"
                 r"(?:don't|do not|cannot|can't) see any (?:defect|anomal\w*|flaw))\b")
_LETTER = re.compile(r"^\s*(?:\(([a-z])\)|([a-z])(?:[.):]|\s*$))")  # "(c) ...", "c.", "c)", "c:" or "c" alone


def _norm(text: str) -> str:
    return re.sub(r"[\s_-]+", " ", text.lower())


def yes_no(text: str) -> str | None:
    """"yes" or "no", whichever the answer says first; None if neither."""
    t = _norm(text)
    y, n = _YES.search(t), _NO.search(t)
    if y and (not n or y.start() < n.start()):
        return "yes"
    return "no" if n else None


def option(text: str, options: list[str]) -> str | None:
    """The option the answer names first: by a letter standing alone ("(C)", "c.") as the options
    were listed, else by name."""
    t = _norm(text)
    m = _LETTER.match(t)
    if m:
        k = ord(m.group(1) or m.group(2)) - 97
        if k < len(options):
            return options[k]
    hits = [(m.start(), -len(o), o) for o in options for m in re.finditer(rf"\b{re.escape(_norm(o))}\b", t)]
    return min(hits)[2] if hits else None


def box(text: str) -> list[float] | None:
    """The first four numbers as x0, y0, x1, y1 in [0, 1] (percentages are divided by 100)."""
    nums = [float(x) for x in _NUM.findall(text)[:4]]
    if len(nums) < 4:
        return None
    if max(nums) > 1.0 and max(nums) <= 100.0:
        nums = [v / 100 for v in nums]
    x0, y0, x1, y1 = (min(1.0, max(0.0, v)) for v in nums)
    return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
