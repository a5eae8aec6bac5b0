"""Does an explanation say what the findings say? Positions, defect types and the verdict.

An explanation that names the wrong place is worse than none, so a contradiction is reported
(``consistent: false`` with the reason) rather than hidden. A position is accepted when it
touches a cell any region's box covers (a box spanning cells may be described by any of them);
a vague one ("top", "left") when it overlaps such a cell.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from lineguard.runtime.stages.findings import GRID

ROWS = {"top": 0, "upper": 0, "middle": 1, "center": 1, "centre": 1, "bottom": 2, "lower": 2}
COLS = {"left": 0, "center": 1, "centre": 1, "middle": 1, "right": 2}
# Longest phrases first, so "top-left" is not also read as "top" and "left".
_PHRASES: list[tuple[str, set[tuple[int, int]]]] = []
for r_word, r in ROWS.items():
    for c_word, c in COLS.items():
        if r_word != c_word:
            _PHRASES.append((f"{r_word}[- ]{c_word}", {(r, c)}))
_PHRASES += [("top[- ]cent(?:er|re)|upper[- ]middle", {(0, 1)}), ("bottom[- ]cent(?:er|re)|lower[- ]middle", {(2, 1)})]
_PHRASES += [(w, {(r, c) for c in range(3)}) for w, r in (("top", 0), ("upper", 0), ("bottom", 2), ("lower", 2))]
_PHRASES += [(w, {(r, c) for r in range(3)}) for w, c in (("left", 0), ("right", 2))]
_PHRASES += [("cent(?:er|re)|middle", {(1, 1)})]
_PATTERNS = [(re.compile(rf"\b(?:{p})\b"), cells) for p, cells in _PHRASES]
# all of them in one pass (grounded decoding checks a text at nearly every token): alternatives in
# the same order, so at each place the most specific phrase wins, as the pattern-by-pattern reading did
_ANY_POSITION = re.compile("|".join(rf"\b(?:{p})\b" for p, _ in _PHRASES))
GENERIC_CLASSES = ("scratch", "crack", "hole", "blowhole", "stain", "chip", "dent", "break", "fray",
                   "contamination", "uneven", "bubble", "burr", "missing")
# the last words of the phrases below: grounded decoding checks a text only when one of them arrives
NEGATION_ENDS = frozenset({"defect", "defects", "anomaly", "anomalies", "damage", "normal", "good", "fine", "ok",
                           "okay", "free", "wrong"})
_NEGATIONS = re.compile(r"\b(?:no (?:defects?|anomal(?:y|ies)|damage)|(?:is|looks|seems) (?:normal|good|fine|ok(?:ay)?)"
                        r"|defect[- ]free|without (?:any )?defects?|nothing wrong)\b")


def cells_of_box(box: list[float], size: tuple[int, int]) -> set[tuple[int, int]]:
    w, h = size
    x0, y0, x1, y1 = box
    cols = range(min(int(3 * x0 / w), 2), min(int(3 * max(x1 - 1, x0) / w), 2) + 1)
    rows = range(min(int(3 * y0 / h), 2), min(int(3 * max(y1 - 1, y0) / h), 2) + 1)
    return {(r, c) for r in rows for c in cols}


@lru_cache(maxsize=256)
def _cells(phrase: str) -> frozenset[tuple[int, int]]:
    return frozenset(next(cells for pat, cells in _PATTERNS if pat.fullmatch(phrase)))


def named_positions(text: str) -> list[tuple[str, set[tuple[int, int]]]]:
    return [(m.group(0), set(_cells(m.group(0)))) for m in _ANY_POSITION.finditer(text.lower())]


@lru_cache(maxsize=64)
def _class_pattern(vocabulary: tuple[str, ...]) -> re.Pattern[str]:
    words = sorted((re.escape(c.lower().replace("_", " ")) for c in vocabulary), key=len, reverse=True)
    return re.compile(rf"\b({'|'.join(words)})s?\b")


def named_classes(text: str, vocabulary: list[str]) -> list[str]:
    if not vocabulary:
        return []
    t = text.lower().replace("_", " ")
    # one search for all names, unless a name is a word of another ("crack", "hairline crack"): then
    # one per name, so both are found, as they always were
    said = {m.group(1) for c in vocabulary for m in [_class_pattern((c,)).search(t)] if m} \
        if len(vocabulary) > 1 and _overlapping(tuple(vocabulary)) else set(_class_pattern(tuple(vocabulary)).findall(t))
    return [c for c in vocabulary if c.lower().replace("_", " ") in said]


@lru_cache(maxsize=64)
def _overlapping(vocabulary: tuple[str, ...]) -> bool:
    names = [c.lower().replace("_", " ") for c in vocabulary]
    return any(a != b and re.search(rf"\b{re.escape(a)}\b", b) for a in names for b in names)


class Rules:
    """What one frame's findings allow and require, prepared once: grounded decoding asks at
    nearly every token, the grounding check once per explanation."""

    def __init__(self, findings: dict[str, Any], classes: list[str] | None = None) -> None:
        size = tuple(findings.get("size") or (1, 1))
        self.regions = findings.get("regions", [])
        self.verdict = findings.get("verdict")
        self.allowed = set().union(*(cells_of_box(r["box"], size) for r in self.regions)) if self.regions else set()
        self.main = sorted({r["cell"] for r in self.regions})
        self.known = sorted({r["class"] for r in self.regions if r.get("class") and r["class"] != "unknown"})
        self.vocab = sorted(set(GENERIC_CLASSES) | set(classes or []) | set(self.known), key=len, reverse=True)
        main = self.regions[0] if self.regions else {}
        self.main_cell = next(((r, c) for r, row in enumerate(GRID) for c, name in enumerate(row)
                               if name == main.get("cell")), None)
        self.main_class = main.get("class") if main.get("class") not in (None, "unknown") else None

    def _wrong_class(self, c: str) -> bool:
        return bool(self.known) and c not in self.known and not any(c in k or k in c for k in self.known)

    def check(self, text: str) -> dict[str, Any]:
        """Compare ``text`` with the findings: what it names, and every reason it is inconsistent."""
        reasons, unverified = [], []
        positions = named_positions(text)
        for phrase, cells in positions:
            if self.allowed and not cells & self.allowed:
                reasons.append(f"names the {phrase} but the defect is in the {', '.join(self.main)}")
        named = named_classes(text, self.vocab)
        for c in named:
            if self._wrong_class(c):
                reasons.append(f"calls it {c} but the findings say {', '.join(self.known)}")
            elif not self.known:
                unverified.append(c)
        says_normal = bool(_NEGATIONS.search(text.lower()))
        if self.verdict == "defect" and says_normal:
            reasons.append("says the part is normal but the verdict is defect")
        if self.verdict == "normal" and (positions or named) and not says_normal:
            reasons.append("describes a defect but the verdict is normal")
        return {"consistent": not reasons, "reason": "; ".join(reasons) or None,
                "positions": [p for p, _ in positions], "classes": named, "unverified": unverified}

    def consistent(self, text: str) -> bool:
        """``check(text)["consistent"]``, without building the reasons."""
        if self.verdict != "defect":
            return self.check(text)["consistent"]
        if _NEGATIONS.search(text.lower()):
            return False
        if self.allowed and any(not cells & self.allowed for _, cells in named_positions(text)):
            return False
        return not any(self._wrong_class(c) for c in named_classes(text, self.vocab))

    def complete(self, text: str) -> bool:
        """Does ``text`` say what it must? For a flagged frame: the main finding's position (a
        phrase covering its cell) and its type, when the findings know it. Else nothing is owed."""
        if self.verdict != "defect" or not self.regions:
            return True
        if self.main_cell is not None and not any(self.main_cell in cells for _, cells in named_positions(text)):
            return False
        return self.main_class is None or bool(named_classes(text, [self.main_class]))


def check(text: str, findings: dict[str, Any], classes: list[str] | None = None) -> dict[str, Any]:
    """Compare ``text`` with ``findings`` (as ``prompting.findings_for_prompt`` builds them)."""
    return Rules(findings, classes).check(text)


def complete(text: str, findings: dict[str, Any]) -> bool:
    return Rules(findings).complete(text)


__all__ = ["GENERIC_CLASSES", "GRID", "Rules", "check", "cells_of_box", "complete", "named_classes", "named_positions"]
