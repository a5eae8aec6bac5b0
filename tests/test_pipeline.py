"""The pipeline in-process, with a fault injected: one stage raising on a frame costs that frame only."""

from __future__ import annotations

import threading
import time

from runtime.bundle import Bundle
from runtime.imageio import list_images, read_image
from runtime.pipeline import Pipeline, ServeConfig
from runtime.protocol import encode_frame
from runtime.store import ResultStore


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
    p.sam = ExplodingSam()
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
