"""The result store: one SQLite row per frame received, written before anything is published.

A row's identity is the station's own: ``seq``, assigned when the frame arrives and never reused
(a restarted station continues after the highest stored one). The sender's ``frame_id`` and
``camera`` are fields: a camera that restarts its numbering, or two senders with the same ids,
get a row each, never an overwrite; a repeated (camera, frame_id) is marked ``repeat`` and
reported. Updates (masks, explanation) find their row by ``seq``.

WAL mode with ``synchronous=NORMAL``: a commit survives the process being killed (kill -9),
which is the failure a station sees; only a power cut can lose the last commits. A verdict is
committed before it is published, so no subscriber ever saw a result the store lacks. The WAL is
checkpointed (copied into the database, with its fsync) by the store's own thread every second,
not by whichever commit crosses SQLite's page limit: that commit would be a verdict's, and its
fsync a latency spike on the line.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("lineguard.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    seq          INTEGER PRIMARY KEY,    -- the station's own id, in order of arrival
    frame_id     TEXT,                   -- the sender's id (NULL where the header was unreadable)
    camera       TEXT NOT NULL,
    repeat       INTEGER NOT NULL DEFAULT 0,  -- 1: this (camera, frame_id) was stored before
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
    failsafe     TEXT,                   -- the fail-safe verdict published at the deadline (the gate's decision)
    deadline_missed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS results_sender ON results(camera, frame_id);
CREATE INDEX IF NOT EXISTS results_status ON results(status);
"""

# a batch's verdicts in one statement each: whether the sender's id was stored before is part of
# the insert (a frame whose fail-safe verdict was stored at its deadline gets its real one here)
VERDICT = """
INSERT INTO results (seq, frame_id, camera, status, verdict, score, score_norm, findings, ts, deadline_missed, repeat)
VALUES (?1, ?2, ?3, 'verdict', ?4, ?5, ?6, ?7, ?8, ?9,
        EXISTS(SELECT 1 FROM results WHERE camera = ?3 AND frame_id = ?2 AND seq < ?1))
ON CONFLICT(seq) DO UPDATE SET frame_id=excluded.frame_id, camera=excluded.camera, status=excluded.status,
    verdict=excluded.verdict, score=excluded.score, score_norm=excluded.score_norm, findings=excluded.findings,
    ts=excluded.ts, repeat=excluded.repeat, deadline_missed=MAX(deadline_missed, excluded.deadline_missed)
"""
CHECKPOINT_S = 1.0


class ResultStore:
    """Thread-safe (one connection behind a lock: the writes are small and few per frame)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        cols = [r[1] for r in self._db.execute("PRAGMA table_info(results)")]
        if cols and "seq" not in cols:  # a store from before station ids: kept aside, not rewritten
            self._db.execute("ALTER TABLE results RENAME TO results_v0")
            self._db.execute("DROP INDEX IF EXISTS results_status")
            log.warning("%s: the old results table (keyed by camera and frame id) is kept as results_v0", self.path)
        self._db.executescript(SCHEMA)
        have = {r[1] for r in self._db.execute("PRAGMA table_info(results)")}
        for col, decl in (("failsafe", "TEXT"), ("deadline_missed", "INTEGER NOT NULL DEFAULT 0")):
            if col not in have:  # a store from before the verdict deadline: the columns are added
                self._db.execute(f"ALTER TABLE results ADD COLUMN {col} {decl}")
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it (see above)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoints, name="store-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoints(self) -> None:
        """Copy the WAL into the database every second, on a connection of its own: PASSIVE never
        blocks the writer, so a verdict's commit never waits for it (nor for its fsync)."""
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            while not self._closing.wait(CHECKPOINT_S):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as e:  # busy or a full disk: the WAL waits for the next one
                    log.warning("%s: checkpoint failed: %s", self.path, e)
        finally:
            db.close()

    def last_seq(self) -> int:
        """The highest station id stored (0 for a new store): a restarted station continues after it."""
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM results").fetchone()[0])

    def _insert(self, row: dict[str, Any]) -> bool:
        with self._lock:
            return self._insert_locked(row)

    def _insert_locked(self, row: dict[str, Any]) -> bool:
        """Insert a frame's row; a failure reported after its verdict was stored updates the given
        columns and keeps the rest (its verdict, score). True if the sender's (camera, frame_id) was
        stored under an earlier seq."""
        if row.get("frame_id") is not None and self._db.execute(
                "SELECT 1 FROM results WHERE camera=? AND frame_id=? AND seq<? LIMIT 1",
                (row["camera"], row["frame_id"], row["seq"])).fetchone():
            row["repeat"] = 1
            log.warning("camera %s sent frame id %s again: stored as its own row (seq %d)",
                        row["camera"], row["frame_id"], row["seq"])
        sets = ", ".join(f"{c}=excluded.{c}" for c in row if c != "seq")
        self._db.execute(f"INSERT INTO results ({', '.join(row)}) VALUES ({', '.join('?' * len(row))}) "
                         f"ON CONFLICT(seq) DO UPDATE SET {sets}", tuple(row.values()))
        return bool(row.get("repeat"))

    def verdicts(self, rows: list[tuple[int, str, str, dict[str, Any], dict[str, float], bool]]) -> list[bool]:
        """An expert batch's verdicts (seq, frame_id, camera, result, ts, late) in one transaction:
        one commit for the batch instead of one per frame; each is stored before any is published.
        Returns, per row, whether the sender's (camera, frame_id) was stored under an earlier seq."""
        params = [(seq, fid, cam, res.get("verdict"), res.get("score"), res.get("score_norm"),
                   json.dumps(res.get("findings")), json.dumps(ts), int(late)) for seq, fid, cam, res, ts, late in rows]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(VERDICT, params)
                seqs = [p[0] for p in params]
                repeats = {r[0] for r in self._db.execute(
                    f"SELECT seq FROM results WHERE repeat = 1 AND seq IN ({','.join('?' * len(seqs))})", seqs)}
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        for seq, fid, cam, *_ in rows:
            if seq in repeats:
                log.warning("camera %s sent frame id %s again: stored as its own row (seq %d)", cam, fid, seq)
        return [seq in repeats for seq, *_ in rows]

    def verdict(self, seq: int, frame_id: str, camera: str, result: dict[str, Any], ts: dict[str, float],
                late: bool = False) -> bool:
        return self.verdicts([(seq, frame_id, camera, result, ts, late)])[0]

    def failsafe(self, seq: int, frame_id: str | None, camera: str | None, verdict: str, ts: dict[str, float]) -> None:
        """The fail-safe decision at the deadline; the frame's real verdict (or error) updates the row later."""
        self._insert({"seq": seq, "frame_id": frame_id, "camera": camera or "unknown", "status": "verdict",
                      "verdict": verdict, "failsafe": verdict, "deadline_missed": 1, "ts": json.dumps(ts)})

    def update(self, seq: int, ts: dict[str, float], **fields: Any) -> None:
        """Add masks/findings/explanation to a frame's row (it exists: the verdict came first)."""
        row = {k: (json.dumps(v) if k in ("findings", "explanation") else v) for k, v in fields.items()}
        sets = ", ".join(f"{k}=?" for k in row) + (", " if row else "") + "ts=?"
        with self._lock:
            self._db.execute(f"UPDATE results SET {sets} WHERE seq=?", (*row.values(), json.dumps(ts), seq))

    def error(self, seq: int, frame_id: str | None, camera: str | None, reason: str, code: str,
              ts: dict[str, float], status: str = "error") -> bool:
        return self._insert({"seq": seq, "frame_id": frame_id, "camera": camera or "unknown", "status": status,
                      "error": reason, "error_code": code, "ts": json.dumps(ts)})

    def rows(self, where: str = "1=1", args: tuple = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(f"SELECT * FROM results WHERE {where} ORDER BY seq", args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def close(self) -> None:
        self._closing.set()
        self._checkpointer.join(5.0)
        with self._lock:
            try:  # the WAL folded in: a closed store is one file
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:
                log.warning("%s: final checkpoint failed: %s", self.path, e)
            self._db.close()
