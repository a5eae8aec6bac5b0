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


def test_a_batch_of_verdicts_is_one_transaction_and_repeats_are_found_inside_it(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    res = {"verdict": "good", "score": 0.1, "score_norm": 0.2, "findings": {}}
    got = store.verdicts([(1, "a", "cam", res, {"received": 1.0}, False), (2, "b", "cam", res, {}, True),
                          (3, "a", "cam", res | {"verdict": "defect"}, {}, False)])
    assert got == [False, False, True]  # the sender's "a" again, in the same batch: its own row, marked
    rows = store.rows()
    assert [(r["seq"], r["frame_id"], r["verdict"], r["repeat"], r["deadline_missed"]) for r in rows] == [
        (1, "a", "good", 0, 0), (2, "b", "good", 0, 1), (3, "a", "defect", 1, 0)]
    # a batch that fails half-way leaves nothing of it: no row is published unstored, none stored twice
    try:
        store.verdicts([(4, "c", "cam", res, {}, False), (5, "d", "cam", {"verdict": object()}, {}, False)])
    except Exception:
        pass
    else:
        raise AssertionError("an unstorable verdict must fail its batch")
    assert [r["seq"] for r in store.rows()] == [1, 2, 3]
    store.close()


def test_the_wal_is_checkpointed_by_the_stores_own_thread(tmp_path):
    """No verdict's commit carries a checkpoint's fsync: the store's thread copies the WAL into the
    database every second, and a closed store is one file."""
    import time

    db = tmp_path / "r.db"
    store = ResultStore(db)
    assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # commits never checkpoint
    before = db.stat().st_size
    for b in range(20):
        store.verdicts([(b * 50 + i, f"f{b * 50 + i}", "cam", {"verdict": "good", "score": 0.1,
                                                               "findings": {"x": "y" * 200}}, {"received": 1.0}, False)
                        for i in range(50)])
    time.sleep(2.5)
    assert db.stat().st_size > before + 100_000  # the rows reached the database file: a checkpoint ran
    store.close()
    wal = db.with_name(db.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1000
