"""The verdict deadline, served for real: a frame whose verdict cannot come in time gets the
fail-safe decision at the deadline, stored and published, and its real verdict follows."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import Station

from lineguard.runtime.imageio import list_images, read_image
from lineguard.runtime.station.deadline import Deadline
from lineguard.runtime.station.protocol import encode_frame


def first_verdicts(msgs: list) -> dict:
    out: dict = {}
    for t, b, _ in msgs:
        if t == "verdict":
            out.setdefault(b["frame_id"] or b["seq"], []).append(b)
    return out


@pytest.mark.parametrize("policy,failsafe", [("reject", "defect"), ("accept", "good"), ("none", None)])
def test_a_late_frame_gets_the_failsafe_then_its_verdict(served_bundle: Path, synth: Path, tmp_path: Path,
                                                          policy: str, failsafe: str | None) -> None:
    # one expert worker's batch waits 300 ms to fill (with a second one idle it would not wait):
    # no single frame can meet a 20 ms deadline
    st = Station(served_bundle, tmp_path, "--deadline-ms", "20", "--on-deadline", policy, "--max-wait-ms", "300",
                 "--max-batch", "8", "--expert-workers", "1")
    img = read_image(list_images(synth / "test" / "good")[0])
    try:
        for i in range(3):
            st.send(encode_frame(f"d{i}", "camA", image=img))
        st.send([b"{not json", b"x"])  # no verdict ever: its decision is the fail-safe too
        msgs = st.collect(lambda g: sum(t == "verdict" and b.get("reason") != "deadline" for t, b, _ in g) == 3)
        health = json.loads(urllib.request.urlopen(f"{st.http}healthz", timeout=10).read())
    finally:
        code, summary = st.stop()
    assert code == 0
    by = first_verdicts(msgs)
    for i in range(3):
        v = by[f"d{i}"]
        if failsafe:
            assert v[0]["reason"] == "deadline" and v[0]["verdict"] == failsafe and v[0]["deadline_ms"] == 20
            assert v[1]["update"] == "verdict" and v[1]["deadline_missed"] and v[1]["verdict"] == "good"
            assert v[1]["ts"]["verdict"] >= v[0]["ts"]["deadline"]  # the fail-safe went out first
        else:
            assert len(v) == 1 and v[0]["deadline_missed"] and "update" not in v[0]
    bad = [b for t, b, _ in msgs if t == "verdict" and b["frame_id"] is None]
    assert len(bad) == (1 if failsafe else 0) and all(b["reason"] == "deadline" for b in bad)
    assert health["counts"]["deadline_missed"] == 4 and health["cameras"]["camA"]["deadline_missed"] == 3
    db = sqlite3.connect(st.db)
    rows = db.execute("SELECT frame_id, verdict, failsafe, deadline_missed FROM results WHERE camera='camA' "
                      "ORDER BY seq").fetchall()
    assert rows == [(f"d{i}", "good", failsafe, 1) for i in range(3)]


def test_frames_in_time_are_untouched(served_bundle: Path, synth: Path, tmp_path: Path) -> None:
    st = Station(served_bundle, tmp_path, "--deadline-ms", "10000")
    img = read_image(list_images(synth / "test" / "good")[0])
    try:
        for i in range(4):
            st.send(encode_frame(f"t{i}", "camA", image=img))
        msgs = st.collect(lambda g: sum(t == "verdict" for t, _, _ in g) == 4)
        time.sleep(0.3)
        msgs += st.collect(lambda g: False, timeout=0.5)
    finally:
        code, summary = st.stop()
    assert code == 0 and len([m for m in msgs if m[0] == "verdict"]) == 4
    assert not any(b.get("reason") or b.get("deadline_missed") for _, b, _ in msgs)
    assert summary["counts"].get("deadline_missed", 0) == 0


def test_whoever_claims_first_decides() -> None:
    """Between the watchdog and a verdict arriving at the deadline, exactly one decides, and a late
    verdict waits until the fail-safe is out."""
    fired: list[tuple[int, float]] = []
    gate = threading.Event()

    def fire(seq: int, received: float, ident: object) -> None:
        gate.wait(2)  # a slow fail-safe: the late verdict must wait for it
        fired.append((seq, time.monotonic()))

    d = Deadline(30, "reject", fire)
    d.start()
    try:
        now = time.time()
        d.register(1, now, None)
        d.register(2, now, None)
        assert d.claim(1) is True  # in time: the verdict decides, no fail-safe
        time.sleep(0.15)  # past the deadline: the watchdog has taken frame 2 and is firing
        t = threading.Thread(target=lambda: fired.append((-2, time.monotonic()) if d.claim(2) is False else None))
        t.start()
        time.sleep(0.1)
        gate.set()
        t.join(3)
    finally:
        d.stop()
    assert [s for s, _ in fired] == [2, -2]  # the fail-safe of 2 first, then its late verdict
    assert d.claim(3) is True  # never registered: in time
    with pytest.raises(ValueError):
        Deadline(10, "maybe", fire)
