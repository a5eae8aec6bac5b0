"""Does an explanation say what the findings say? Positions, defect types and the verdict.

An explanation that names the wrong place is worse than none, so a contradiction is reported
(``consistent: false`` with the reason) rather than hidden. A position is accepted when it
touches a cell any region's box covers (a box spanning cells may be described by any of them);
a vague one ("top", "left") when it overlaps such a cell.
"""

from __future__ import annotations

import re
from typing import Any

from lineguard.runtime.stages.findings import GRID

_ROWS = {"top": 0, "upper": 0, "middle": 1, "center": 1, "centre": 1, "bottom": 2, "lower": 2}
_COLS = {"left": 0, "center": 1, "centre": 1, "middle": 1, "right": 2}
# Longest phrases first, so "top-left" is not also read as "top" and "left".
_PHRASES: list[tuple[str, set[tuple[int, int]]]] = []
for r_word, r in _ROWS.items():
    for c_word, c in _COLS.items():
        if r_word != c_word:
            _PHRASES.append((f"{r_word}[- ]{c_word}", {(r, c)}))
_PHRASES += [("top[- ]cent(?:er|re)|upper[- ]middle", {(0, 1)}), ("bottom[- ]cent(?:er|re)|lower[- ]middle", {(2, 1)})]
_PHRASES += [(w, {(r, c) for c in range(3)}) for w, r in (("top", 0), ("upper", 0), ("bottom", 2), ("lower", 2))]
_PHRASES += [(w, {(r, c) for r in range(3)}) for w, c in (("left", 0), ("right", 2))]
_PHRASES += [("cent(?:er|re)|middle", {(1, 1)})]
_PATTERNS = [(re.compile(rf"\b(?:{p})\b"), cells) for p, cells in _PHRASES]
GENERIC_CLASSES = ("scratch", "crack", "hole", "blowhole", "stain", "chip", "dent", "break", "fray",
                   "contamination", "uneven", "bubble", "burr", "missing")
_NEGATIONS = re.compile(r"\b(?:no (?:defects?|anomal(?:y|ies))|(?:is|looks) normal|defect[- ]free|without (?:any )?defects?)\b")


def cells_of_box(box: list[float], size: tuple[int, int]) -> set[tuple[int, int]]:
    w, h = size
    x0, y0, x1, y1 = box
    cols = range(min(int(3 * x0 / w), 2), min(int(3 * max(x1 - 1, x0) / w), 2) + 1)
    rows = range(min(int(3 * y0 / h), 2), min(int(3 * max(y1 - 1, y0) / h), 2) + 1)
    return {(r, c) for r in rows for c in cols}


def named_positions(text: str) -> list[tuple[str, set[tuple[int, int]]]]:
    t = text.lower()
    found = []
    for pat, cells in _PATTERNS:
        for m in pat.finditer(t):
            found.append((m.group(0), cells))
        t = pat.sub(" ", t)
    return found


def named_classes(text: str, vocabulary: list[str]) -> list[str]:
    t = text.lower().replace("_", " ")
    return [c for c in vocabulary if re.search(rf"\b{re.escape(c.lower().replace('_', ' '))}s?\b", t)]


def check(text: str, findings: dict[str, Any], classes: list[str] | None = None) -> dict[str, Any]:
    """Compare ``text`` with ``findings`` (as ``prompting.findings_for_prompt`` builds them)."""
    size = tuple(findings.get("size") or (1, 1))
    regions = findings.get("regions", [])
    allowed = set().union(*(cells_of_box(r["box"], size) for r in regions)) if regions else set()
    main = {r["cell"] for r in regions}
    reasons, unverified = [], []
    positions = named_positions(text)
    for phrase, cells in positions:
        if allowed and not cells & allowed:
            reasons.append(f"names the {phrase} but the defect is in the {', '.join(sorted(main))}")
    known = sorted({r["class"] for r in regions if r.get("class") and r["class"] != "unknown"})
    vocab = sorted(set(GENERIC_CLASSES) | set(classes or []) | set(known), key=len, reverse=True)
    named = named_classes(text, vocab)
    for c in named:
        if known and c not in known and not any(c in k or k in c for k in known):
            reasons.append(f"calls it {c} but the findings say {', '.join(known)}")
        elif not known:
            unverified.append(c)
    says_normal = bool(_NEGATIONS.search(text.lower()))
    if findings.get("verdict") == "defect" and says_normal:
        reasons.append("says the part is normal but the verdict is defect")
    if findings.get("verdict") == "normal" and (positions or named) and not says_normal:
        reasons.append("describes a defect but the verdict is normal")
    return {"consistent": not reasons, "reason": "; ".join(reasons) or None,
            "positions": [p for p, _ in positions], "classes": named, "unverified": unverified}


__all__ = ["GENERIC_CLASSES", "GRID", "check", "cells_of_box", "named_classes", "named_positions"]
