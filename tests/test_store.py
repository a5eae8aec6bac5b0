"""The result store on its own: station ids, repeats, a late failure, and a store from before station ids."""

import sqlite3

from lineguard.runtime.station.store import ResultStore


def test_rows_are_the_stations_and_a_late_failure_keeps_the_verdict(tmp_path):
    s = ResultStore(tmp_path / "r.db")
    assert s.last_seq() == 0
    assert s.verdict(1, "f0", "camA", {"verdict": "defect", "score": 2.5}, {"received": 1.0}) is False
    assert s.verdict(2, "f0", "camA", {"verdict": "good", "score": 0.1}, {"received": 2.0}) is True  # a repeat
    s.error(1, "f0", "camA", "verdict failed: disk full", "stage_failed", {"received": 1.0})
    rows = {r["seq"]: r for r in s.rows()}
    assert rows[1]["verdict"] == "defect" and rows[1]["score"] == 2.5 and rows[1]["error_code"] == "stage_failed"
    assert rows[2]["repeat"] == 1 and rows[1]["repeat"] == 0 and s.last_seq() == 2
    s.close()


def test_a_store_from_before_station_ids_is_kept_aside(tmp_path):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE results (frame_id TEXT NOT NULL, camera TEXT NOT NULL, status TEXT NOT NULL, "
                "ts TEXT NOT NULL, PRIMARY KEY (camera, frame_id))")
    con.execute("CREATE INDEX results_status ON results(status)")
    con.execute("INSERT INTO results VALUES ('a-0', 'camA', 'verdict', '{}')")
    con.commit()
    con.close()
    s = ResultStore(db)
    s.verdict(s.last_seq() + 1, "a-0", "camA", {"verdict": "good"}, {})
    assert [r["frame_id"] for r in s.rows()] == ["a-0"]
    s.close()
    old = sqlite3.connect(db).execute("SELECT frame_id, camera FROM results_v0").fetchall()
    assert old == [("a-0", "camA")]  # nothing lost
