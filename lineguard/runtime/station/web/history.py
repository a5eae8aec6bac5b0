"""The result store read for the history page: filters, pages newest first, CSV.

A connection of its own, read-only: SQLite's WAL lets it read while the station writes, and a
slow query here never holds the writer's lock (a verdict is never kept waiting by a browser).
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

VERDICTS = ("good", "defect", "error", "dropped")  # error and dropped are rows without a verdict
MAX_LIMIT = 500
CSV_COLUMNS = ("seq", "frame_id", "camera", "status", "verdict", "score", "score_norm", "defect_type", "cell",
               "explanation", "explanation_source", "consistent", "received", "verdict_ms", "error_code", "error")


class QueryError(ValueError):
    """A filter the history cannot apply (the API answers 400 with it)."""


@dataclass
class Filters:
    camera: str | None = None
    verdict: str | None = None
    defect_type: str | None = None
    since: float | None = None  # epoch seconds, the frame's arrival
    until: float | None = None
    ungrounded: bool = False  # explanations that named something the findings contradict
    before: int | None = None  # seq: the page after one ending here
    limit: int = 50

    @classmethod
    def parse(cls, q: dict[str, str]) -> Filters:
        """From a query string; raises QueryError naming the parameter."""
        known = {"camera", "verdict", "defect_type", "since", "until", "ungrounded", "before", "limit", "token"}
        unknown = sorted(set(q) - known)
        if unknown:
            raise QueryError(f"unknown parameter {unknown[0]!r} (known: {', '.join(sorted(known - {'token'}))})")
        f = cls(camera=q.get("camera") or None, defect_type=q.get("defect_type") or None)
        if q.get("verdict"):
            if q["verdict"] not in VERDICTS:
                raise QueryError(f"verdict={q['verdict']!r}: one of {', '.join(VERDICTS)}")
            f.verdict = q["verdict"]
        f.since, f.until = _time(q, "since"), _time(q, "until")
        f.ungrounded = _flag(q, "ungrounded")
        f.before = _int(q, "before", 1) if q.get("before") else None
        f.limit = _int(q, "limit", 1, MAX_LIMIT) if q.get("limit") else 50
        return f

    def where(self) -> tuple[str, list[Any]]:
        sql, args = ["1=1"], []
        if self.camera:
            sql.append("camera = ?")
            args.append(self.camera)
        if self.verdict in ("good", "defect"):
            sql.append("status = 'verdict' AND verdict = ?")
            args.append(self.verdict)
        elif self.verdict:
            sql.append("status = ?")
            args.append(self.verdict)
        if self.defect_type:
            sql.append("EXISTS (SELECT 1 FROM json_each(findings, '$.defects') WHERE json_extract(value, '$.class') = ?)")
            args.append(self.defect_type)
        if self.since is not None:
            sql.append("json_extract(ts, '$.received') >= ?")
            args.append(self.since)
        if self.until is not None:
            sql.append("json_extract(ts, '$.received') < ?")
            args.append(self.until)
        if self.ungrounded:
            sql.append("json_extract(explanation, '$.consistent') = 0")
        if self.before is not None:
            sql.append("seq < ?")
            args.append(self.before)
        return " AND ".join(sql), args


def _time(q: dict[str, str], key: str) -> float | None:
    v = q.get(key)
    if not v:
        return None
    try:
        return float(v)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(v).timestamp()  # without a zone: the station's local time
    except ValueError:
        raise QueryError(f"{key}={v!r}: epoch seconds or an ISO date-time (2026-12-02T09:30)") from None


def _int(q: dict[str, str], key: str, lo: int, hi: int | None = None) -> int:
    try:
        n = int(q[key])
    except ValueError:
        raise QueryError(f"{key}={q[key]!r}: not a whole number") from None
    if n < lo or (hi is not None and n > hi):
        raise QueryError(f"{key}={n}: must be {lo}..{hi}" if hi else f"{key}={n}: must be at least {lo}")
    return n


def _flag(q: dict[str, str], key: str) -> bool:
    v = q.get(key, "").lower()
    if v in ("", "0", "false", "no", "off"):
        return False
    if v in ("1", "true", "yes", "on"):
        return True
    raise QueryError(f"{key}={q[key]!r}: 1 or 0")


def record(row: dict[str, Any]) -> dict[str, Any]:
    """A store row as the API returns it: JSON columns parsed, the main finding's type and cell lifted."""
    out = dict(row)
    for k in ("findings", "explanation", "ts"):
        out[k] = json.loads(row[k]) if row.get(k) else None
    defects = (out["findings"] or {}).get("defects") or []
    main = defects[0] if defects else (out["findings"] or {}).get("hottest") or {}
    out["defect_type"] = main.get("class") if defects else None
    out["cell"] = main.get("cell") if out.get("verdict") == "defect" else None
    out["repeat"] = bool(row.get("repeat"))
    return out


class History:
    def __init__(self, db: str | Path) -> None:
        self.path = Path(db)
        self.local = threading.local()  # one connection per server thread (sqlite3's rule)

    def _db(self) -> sqlite3.Connection:
        c = getattr(self.local, "db", None)
        if c is None:
            c = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=True)
            c.row_factory = sqlite3.Row
            self.local.db = c
        return c

    def results(self, f: Filters) -> dict[str, Any]:
        where, args = f.where()
        rows = self._db().execute(f"SELECT * FROM results WHERE {where} ORDER BY seq DESC LIMIT ?",
                                  (*args, f.limit + 1)).fetchall()
        page = [record(dict(r)) for r in rows[: f.limit]]
        return {"results": page, "next_before": page[-1]["seq"] if len(rows) > f.limit else None}

    def frame(self, frame_id: str, seq: int | None = None) -> dict[str, Any] | None:
        """The newest row with this sender's id (or the one with ``seq``), and the seqs of any others."""
        rows = self._db().execute("SELECT * FROM results WHERE frame_id = ? ORDER BY seq DESC", (frame_id,)).fetchall()
        if not rows:
            return None
        pick = next((r for r in rows if r["seq"] == seq), None) if seq is not None else rows[0]
        if pick is None:
            return None
        return record(dict(pick)) | {"same_id": [r["seq"] for r in rows if r["seq"] != pick["seq"]]}

    def cameras(self) -> list[str]:
        return [r[0] for r in self._db().execute("SELECT DISTINCT camera FROM results ORDER BY camera")]

    def csv(self, f: Filters, limit: int = 100_000) -> str:
        """The filtered rows (all pages, up to ``limit``), newest first, as CSV."""
        where, args = f.where()
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(CSV_COLUMNS)
        for r in self._db().execute(f"SELECT * FROM results WHERE {where} ORDER BY seq DESC LIMIT ?", (*args, limit)):
            rec = record(dict(r))
            e, ts = rec["explanation"] or {}, rec["ts"] or {}
            lat = 1e3 * (ts["verdict"] - ts["received"]) if "verdict" in ts and "received" in ts else None
            w.writerow([rec["seq"], rec["frame_id"], rec["camera"], rec["status"], rec["verdict"], rec["score"],
                        rec["score_norm"], rec["defect_type"], rec["cell"], e.get("text"), e.get("source"),
                        e.get("consistent"), ts.get("received"), None if lat is None else round(lat, 2),
                        rec["error_code"], rec["error"]])
        return buf.getvalue()
