"""Grounded decoding: a per-frame guard that makes an explanation contradicting its findings impossible.

The decoder asks the guard about each candidate token before taking it. A candidate is refused
when the text it completes names a 3×3 position no finding covers, a defect type other than the
findings' (when they know it), or calls a flagged part normal; the decoder takes the next-best
candidate instead. Stopping is refused until the text also names the main finding's position and
type. The rules are ``grounding.check`` and ``grounding.complete``, applied to the text with its
last word taken as finished, except a middle-row word that may still become another position
(``middle`` → ``middle-left``), which waits for the next token. So it works for any tokenizer: words
split over several tokens, several words in one token, byte-level pieces.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from lineguard.runtime.stages.grounding import COLS, NEGATION_ENDS, ROWS, Rules

# a trailing partial word; a middle-row word that a column word may still follow ("middle" alone
# is the centre cell, "middle-left" is not). "top", "bottom" … alone already mean their whole row,
# and nothing after them can leave it, so they are judged at once.
_PARTIAL = re.compile(r"[A-Za-z]+$")
_STOPS = ".;!?\n"  # no position, type or negation phrase spans one of these
_WORDS = re.compile(r"[a-z]+")
ENDERS = frozenset(ROWS) | frozenset(COLS) | NEGATION_ENDS  # the last words of judged phrases
# ... but not as the column of a two-word position already begun ("top-center", "upper middle")
_OPEN_ROW = re.compile(r"(?<!top[- ])(?<!upper[- ])(?<!bottom[- ])(?<!lower[- ])\b(?:middle|center|centre)[- ]*$",
                       re.IGNORECASE)


def settled(text: str) -> str:
    """The part of a text still being generated that no next token can change the reading of."""
    m = _PARTIAL.search(text)
    head = text[: m.start()] if m else text
    m = _OPEN_ROW.search(head)
    return head[: m.start()] if m else head


class Guard:
    """The constraint for one frame. ``decode`` turns token ids into text (the bundle's tokenizer)."""

    def __init__(self, findings: dict[str, Any], classes: list[str], decode: Callable[[list[int]], str]) -> None:
        self.rules, self.decode = Rules(findings, classes), decode
        self._ok: set[str] = {""}  # settled prefixes already found consistent
        # for a flagged frame every rule is about one phrase (a wrong place, type, or "normal"), so
        # a text is consistent when each sentence is; a normal frame's rule is about the whole text
        self.local = findings.get("verdict") == "defect"
        self.refused = 0  # candidates refused, for the record
        self._last = (-1, "")  # (token count, text) of the last accepted step
        self._pending = False  # the last accepted step left a middle-row word waiting
        # words that can end a judged phrase: positions, the types it may name, "normal" and kin
        # (a type's last word as grounding reads it: "broken_large" ends in "large")
        self.enders = ENDERS | {w for c in self.rules.vocab for w in _WORDS.findall(c.lower())[-1:] for w in (w, w + "s")}
        # a pending middle-row word leads somewhere only if a finding touches the middle row
        self.middle_row_open = not self.rules.allowed or any(r == 1 for r, _ in self.rules.allowed)

    def _consistent(self, text: str) -> bool:
        if text in self._ok:
            return True
        ok = self.rules.consistent(text)
        if ok:
            self._ok.add(text)
        return ok

    def accepts(self, ids: list[int], token: int) -> bool:
        """May ``token`` follow ``ids``? Its last word is judged as if it ended here ("top-left" is
        refused as its "-left" is offered, not one token later when nothing can undo it); only a
        row word that a column word may still follow waits."""
        full = self.decode([*ids, token])
        pending = False
        if self.local and not self._pending and not self._names_anything(ids, full):
            ok = True  # no word near the new text can end a position, a type or a "normal"
        else:
            text = full + " "
            if self.local:  # only the sentence being written can have changed (no phrase spans a full stop)
                text = text[max(text.rfind(c) for c in _STOPS) + 1:]
            head = settled(text)
            # whatever comes after a pending middle-row word decides what it named: always checked
            pending = head != text
            ok = self._consistent(head) and (not pending or self.middle_row_open)
        if ok:
            self._last, self._pending = (len(ids) + 1, full), pending
        self.refused += not ok
        return ok

    def _names_anything(self, ids: list[int], full: str) -> bool:
        """Could the text gained with this token complete a phrase the rules judge? A phrase is
        judged when its last word arrives, so only the words this token writes or extends matter."""
        n, prev = self._last
        start = len(prev) if n == len(ids) else len(self.decode(ids))
        while start > 0 and full[start - 1].isalpha():  # back to the start of the word being extended
            start -= 1
        return any(w in self.enders for w in _WORDS.findall(full[start:].lower()))

    def may_stop(self, ids: list[int]) -> bool:
        """May the text end here: everything in it consistent, and all it owes said?"""
        text = self.decode(ids)
        ok = self.rules.consistent(text) and self.rules.complete(text)
        self.refused += not ok
        return ok
