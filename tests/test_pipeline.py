"""The pipeline in-process, with a fault injected: one stage raising on a frame costs that frame only."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from lineguard.runtime.bundle import Bundle
from lineguard.runtime.imageio import list_images, read_image
from lineguard.runtime.station.pipeline import Pipeline, ServeConfig
from lineguard.runtime.station.protocol import encode_frame
from lineguard.runtime.station.store import ResultStore


class ExplodingSam:
    """Stands in for SamStage on purpose: a SAM that raises, to prove the stage survives it."""

    def __getattr__(self, name: str):
        def boom(*args, **kwargs):
            raise RuntimeError("injected SAM failure")
        return boom


def test_a_stage_raising_on_a_frame_gives_it_an_error_and_the_server_goes_on(served_bundle, synth, tmp_path):
    got: list[tuple[str, dict]] = []
    lock = threading.Lock()

    def publish(topic, body, png):
        with lock:
            got.append((topic, body))

    store = ResultStore(tmp_path / "r.db")
    p = Pipeline(Bundle.load(served_bundle), ServeConfig(explain=False, max_batch=2), publish, store)
    p.inspector.sam = ExplodingSam()
    p.start()
    frames = [read_image(f) for f in list_images(synth / "test", recursive=True)]
    for i, img in enumerate(frames):
        assert p.offer(encode_frame(f"p{i}", "camP", image=img)) is None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            verdicts = {b["frame_id"]: b for t, b in got if t == "verdict" and not b.get("update")}
            failed = {b["frame_id"] for t, b in got if t == "error" and b["code"] == "stage_failed"}
        flagged = {f for f, b in verdicts.items() if b["verdict"] == "defect"}
        if len(verdicts) == len(frames) and flagged <= failed:
            break
        time.sleep(0.05)
    assert len(verdicts) == len(frames) and flagged and flagged == failed
    assert p.stop(10)  # every stage thread was still alive to take the sentinel
    rows = {r["frame_id"]: r for r in store.rows()}
    for f in flagged:  # the verdict stays in the store, with the failure beside it
        assert rows[f]["status"] == "verdict" and rows[f]["verdict"] == "defect"
        assert rows[f]["error_code"] == "stage_failed" and "injected SAM failure" in rows[f]["error"]
    store.close()


def _nice_by_thread(field: int = 19) -> dict[int, int]:
    """Niceness (or another ``field``, 41: the scheduling policy) of every thread of this process,
    from /proc (each task's stat)."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # a thread that ended during the scan
            continue
        out[int(task.name)] = int(stat[stat.rindex(")") + 2:].split()[field - 3])
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread niceness is read from Linux /proc")
def test_sam_and_llm_run_at_lower_priority_with_their_onnx_runtime_workers(full_bundle):
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    before = set(_nice_by_thread())
    p = Pipeline(Bundle.load(full_bundle), ServeConfig(explain=True, threads=4, background_threads=2,
                                                         background_nice=5, expert_workers=2), lambda *a: None)
    p.start()
    try:
        lowered_name = min(19, base + 5)
        deadline = time.monotonic() + 10  # each loop lowers itself once it runs: wait for that
        while True:
            nice = _nice_by_thread()
            by_name = {t.name: nice.get(t.native_id) for t in p.threads}
            by_id = {t.name: t.native_id for t in p.threads}
            if by_name["defects"] == by_name["explain"] == lowered_name or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert by_name["defects"] == by_name["explain"] == min(19, base + 5)
        assert by_name["expert"] == by_name["expert1"] == by_name["decode"] == base  # two expert workers
        # 2 threads = the caller + 1 worker per session: SAM's encoder and decoder and the LLM made 3 workers,
        # created in the lowered loading thread, so they inherit its priority; the experts' workers (4 threads
        # split over 2 workers) do not
        new = {tid: n for tid, n in nice.items() if tid not in before}
        lowered = [tid for tid, n in new.items() if n == min(19, base + 5)]
        assert len(lowered) >= 2 + 3, new
        assert any(n == base for tid, n in new.items() if tid not in {t.native_id for t in p.threads})
        # and in SCHED_IDLE, they and their workers: they run on the cycles the verdict path leaves
        policy = _nice_by_thread(41)
        assert {policy[t] for t in lowered} == {os.SCHED_IDLE}
        assert policy[by_id["expert"]] == policy[by_id["decode"]] == os.SCHED_OTHER
    finally:
        p.stop(10)


def test_an_expert_worker_outlives_a_failure_to_report(served_bundle, synth):
    """Publishing one frame's verdict and even its error fails (a closed socket, a full disk): that
    frame is logged, and the only expert worker goes on with every later frame."""
    got: list[tuple[str, dict]] = []
    lock = threading.Lock()

    def publish(topic, body, png):
        if body.get("frame_id") == "p0":
            raise OSError("injected publish failure")
        with lock:
            got.append((topic, body))

    p = Pipeline(Bundle.load(served_bundle), ServeConfig(explain=False, masks=False, max_batch=1,
                                                         expert_workers=1), publish)
    p.start()
    frames = [read_image(f) for f in list_images(synth / "test", recursive=True)]
    for i, img in enumerate(frames):
        assert p.offer(encode_frame(f"p{i}", "camP", image=img)) is None
    assert p.stop(60)  # every thread was alive to take the sentinel, and drained the queues
    verdicts = {b["frame_id"] for t, b in got if t == "verdict" and not b.get("update")}
    assert verdicts == {f"p{i}" for i in range(1, len(frames))}


def test_a_batch_waits_for_company_only_while_the_other_workers_are_busy(served_bundle):
    """Two expert workers, a 60-s batch wait: with the other worker idle a lone frame goes at once
    (with what is already queued); with it busy the batch waits for the next frame."""
    p = Pipeline(Bundle.load(served_bundle), ServeConfig(explain=False, masks=False, max_batch=4, max_wait_ms=60_000,
                                                         expert_workers=2), lambda *a: None)
    out: list = []

    def take() -> None:
        out.append(p._next_batch())

    p.experts_idle = 1  # the other worker waits for a frame too
    p.q_expert.put("a")
    p.q_expert.put("b")
    t = threading.Thread(target=take)
    t.start()
    t.join(30)
    assert not t.is_alive() and out.pop() == (["a", "b"], False)

    p.experts_idle = 0  # the other worker is busy: wait for company, up to max_batch
    t = threading.Thread(target=take)
    t.start()
    p.q_expert.put("c")
    time.sleep(0.2)
    assert t.is_alive()  # holding "c" for company
    for x in "def":
        p.q_expert.put(x)
    t.join(30)
    assert not t.is_alive() and out.pop() == (["c", "d", "e", "f"], False)
