"""The result store: one SQLite row per frame, written before anything is published.

WAL mode with ``synchronous=NORMAL``: a commit survives the process being killed (kill -9),
which is the failure a station sees; only a power cut can lose the last commits. A verdict is
committed before it is published, so no subscriber ever saw a result the store lacks.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    frame_id     TEXT NOT NULL,
    camera       TEXT NOT NULL,
    status       TEXT NOT NULL,          -- verdict | error | dropped
    verdict      TEXT,
    score        REAL,
    score_norm   REAL,
    findings     TEXT,                   -- JSON
    explanation  TEXT,                   -- JSON (text, consistent, reason, timings)
    mask_path    TEXT,
    error        TEXT,
    error_code   TEXT,
    ts           TEXT NOT NULL,          -- JSON: stage timestamps
    PRIMARY KEY (camera, frame_id)
);
CREATE INDEX IF NOT EXISTS results_status ON results(status);
"""


class ResultStore:
    """Thread-safe (one connection behind a lock: the writes are small and few per frame)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def _upsert(self, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        updates = ", ".join(f"{c}=excluded.{c}" for c in row if c not in ("frame_id", "camera"))
        with self._lock:
            self._db.execute(f"INSERT INTO results ({cols}) VALUES ({marks}) "
                             f"ON CONFLICT(camera, frame_id) DO UPDATE SET {updates}", tuple(row.values()))

    def verdict(self, frame_id: str, camera: str, result: dict[str, Any], ts: dict[str, float]) -> None:
        self._upsert({"frame_id": frame_id, "camera": camera, "status": "verdict", "verdict": result.get("verdict"),
                      "score": result.get("score"), "score_norm": result.get("score_norm"),
                      "findings": json.dumps(result.get("findings")), "ts": json.dumps(ts)})

    def update(self, frame_id: str, camera: str, ts: dict[str, float], **fields: Any) -> None:
        """Add masks/findings/explanation to a frame's row (it exists: the verdict came first)."""
        row = {k: (json.dumps(v) if k in ("findings", "explanation") else v) for k, v in fields.items()}
        sets = ", ".join(f"{k}=?" for k in row) + (", " if row else "") + "ts=?"
        with self._lock:
            self._db.execute(f"UPDATE results SET {sets} WHERE camera=? AND frame_id=?",
                             (*row.values(), json.dumps(ts), camera, frame_id))

    def error(self, frame_id: str | None, camera: str | None, reason: str, code: str, ts: dict[str, float],
              status: str = "error") -> None:
        if frame_id is None:  # unreadable header: nothing to key on, the error counter has it
            return
        self._upsert({"frame_id": frame_id, "camera": camera or "unknown", "status": status, "error": reason,
                      "error_code": code, "ts": json.dumps(ts)})

    def rows(self, where: str = "1=1", args: tuple = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(f"SELECT * FROM results WHERE {where}", args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()
