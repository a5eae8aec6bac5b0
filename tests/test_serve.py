"""`lineguard serve` as a real subprocess on loopback: frames in, every one accounted for, bad input survived."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq
from helpers import lg

from runtime.imageio import list_images, read_image
from runtime.protocol import encode_frame


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_bundle(bundle_dir, synth, tmp_path_factory) -> Path:
    b = tmp_path_factory.mktemp("serve") / "bundle"
    shutil.copytree(bundle_dir, b)
    r = lg("calibrate", b, "--dataset", synth, "--rule", "f1")
    assert r.returncode == 0, r.stderr
    return b


class Station:
    """The server process plus a subscriber and a sender, all on loopback."""

    def __init__(self, bundle: Path, tmp: Path, *extra: str) -> None:
        self.ports = {k: free_port() for k in ("ingest", "publish", "imagezmq", "metrics")}
        self.ingest = f"tcp://127.0.0.1:{self.ports['ingest']}"
        self.publish = f"tcp://127.0.0.1:{self.ports['publish']}"
        self.imagezmq = f"tcp://127.0.0.1:{self.ports['imagezmq']}"
        self.db = tmp / "results.db"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", "serve", str(bundle), "--ingest", self.ingest, "--publish",
             self.publish, "--imagezmq", self.imagezmq, "--db", str(self.db), "--metrics-port",
             str(self.ports["metrics"]), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        self.ready = json.loads(line)
        assert self.ready["event"] == "ready"
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(self.publish)
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.sndtimeo = 5000
        self.push.connect(self.ingest)
        time.sleep(0.5)  # PUB/SUB slow joiner: let the subscription reach the server

    def send(self, parts: list) -> None:
        self.push.send_multipart(parts, copy=False)

    def collect(self, until: callable, timeout: float = 60.0) -> list[tuple[str, dict, bytes | None]]:
        got: list[tuple[str, dict, bytes | None]] = []
        end = time.monotonic() + timeout
        while time.monotonic() < end and not until(got):
            if self.sub.poll(200):
                parts = self.sub.recv_multipart()
                got.append((parts[0].decode(), json.loads(parts[1]), parts[2] if len(parts) > 2 else None))
        return got

    def stop(self) -> tuple[int, dict]:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        self.push.close(0)
        self.sub.close(0)
        self.ctx.term()
        last = [json.loads(x) for x in out.splitlines() if x.startswith("{")][-1]
        return self.proc.returncode, last | {"stderr": err}


def _frames(synth: Path) -> list[tuple[str, np.ndarray]]:
    files = list_images(synth / "test", recursive=True)
    return [(p.parent.name + "_" + p.stem, read_image(p)) for p in files]


def test_every_frame_is_accounted_for_and_bad_input_gets_errors(served_bundle, synth, tmp_path):
    st = Station(served_bundle, tmp_path)
    try:
        frames = _frames(synth)
        sent = []
        for i, (name, img) in enumerate(frames):
            fid = f"f{i}"
            if i % 2:
                ok, buf = cv2.imencode(".jpg", img)
                st.send(encode_frame(fid, "camA", jpeg=buf.tobytes()))
            else:
                st.send(encode_frame(fid, "camA", image=img))
            sent.append(fid)
        good = frames[0][1]
        raw = encode_frame("x", "camB", image=good)
        header = json.loads(raw[0])
        bad = {
            "bad-json": [b"{not json", b"x"],
            "bad-shape": [json.dumps(header | {"frame_id": "bad-shape", "shape": [0, 4, 3]}).encode(), b"x"],
            "size": [json.dumps(header | {"frame_id": "size"}).encode(), bytes(10)],
            "dtype": [json.dumps(header | {"frame_id": "dtype", "dtype": "float32"}).encode(), bytes(10)],
            "corrupt-jpeg": [json.dumps({"v": 1, "frame_id": "corrupt-jpeg", "camera": "camB", "encoding": "jpeg"}).encode(),
                             cv2.imencode(".jpg", good)[1].tobytes()[:300]],
            "encoding": [json.dumps({"v": 1, "frame_id": "encoding", "camera": "camB", "encoding": "webp"}).encode(), b"x"],
            "huge": [json.dumps(header | {"frame_id": "huge", "shape": [100000, 100000, 3]}).encode(), b"x"],
            "parts": [json.dumps(header | {"frame_id": "parts"}).encode()],
        }
        for parts in bad.values():
            st.send(parts)
        st.send(encode_frame("after", "camA", image=good))  # the server is still up after all that
        want = set(sent) | (set(bad) - {"bad-json", "parts"}) | {"after"}

        def done(got):
            seen = {b["frame_id"] for t, b, _ in got if t in ("verdict", "error") and not b.get("update")}
            anon = sum(1 for t, b, _ in got if t == "error" and b["frame_id"] is None)
            return want <= seen and anon >= 2

        got = st.collect(done)
        verdicts = {b["frame_id"]: b for t, b, _ in got if t == "verdict" and not b.get("update")}
        errors = {b["frame_id"]: b for t, b, _ in got if t == "error"}
        assert set(sent) | {"after"} <= set(verdicts), set(sent) - set(verdicts)
        codes = {k: errors[k]["code"] for k in bad if k in errors}
        assert codes == {"bad-shape": "bad_shape", "size": "size_mismatch", "dtype": "bad_dtype",
                         "corrupt-jpeg": "corrupt_image", "encoding": "bad_encoding", "huge": "too_large"}
        assert "needs" in errors["size"]["reason"] and "webp" in errors["encoding"]["reason"]
        anon = [b for t, b, _ in got if t == "error" and b["frame_id"] is None]
        assert {b["code"] for b in anon} == {"bad_header", "bad_parts"}
        # flagged frames get a second verdict message with the mask
        flagged = [f for f, b in verdicts.items() if b["verdict"] == "defect"]
        assert flagged, "the calibrated expert flags some generated defects"
        more = st.collect(lambda g: {b["frame_id"] for t, b, _ in g if b.get("update") == "masks"} >= set(flagged)
                          - {b["frame_id"] for t, b, _ in got if b.get("update") == "masks"}, 60)
        updates = [(b, png) for t, b, png in got + more if b.get("update") == "masks"]
        assert {b["frame_id"] for b, _ in updates} == set(flagged)
        b, png = next((b, png) for b, png in updates if png is not None)
        mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == tuple(reversed(b["size"])) and mask.max() == 255
        for v in verdicts.values():
            assert {"received", "decoded", "expert_done", "verdict"} <= set(v["ts"]) and v["camera"] == "camA"
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{st.ports['metrics']}/healthz").read())
        assert health["stages"]["expert"].startswith("ok") and health["stages"]["sam"] == "absent"
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{st.ports['metrics']}/metrics").read().decode()
        assert 'lineguard_errors_total{reason="size_mismatch"} 1.0' in metrics
        assert 'lineguard_latency_seconds_count{stage="verdict"}' in metrics
    finally:
        code, summary = st.stop()
    assert code == 0 and summary["event"] == "stopped" and summary["drained"], summary
    rows = {r[0]: r for r in sqlite3.connect(st.db).execute("SELECT frame_id, status, verdict, error_code FROM results")}
    assert {f for f, r in rows.items() if r[1] == "verdict"} == set(sent) | {"after"}
    assert rows["size"][1:] == ("error", None, "size_mismatch")


def test_imagezmq_senders_are_served_unmodified(served_bundle, synth, tmp_path):
    imagezmq = pytest.importorskip("imagezmq")
    st = Station(served_bundle, tmp_path)
    try:
        sender = imagezmq.ImageSender(connect_to=st.imagezmq)
        (_, img), (_, img2) = _frames(synth)[:2]
        assert sender.send_image("line-cam-7", img) == b"OK"
        ok, buf = cv2.imencode(".jpg", img2)
        assert sender.send_jpg("line-cam-7", buf) == b"OK"
        got = st.collect(lambda g: sum(t == "verdict" and not b.get("update") for t, b, _ in g) >= 2)
        cams = [b["camera"] for t, b, _ in got if t == "verdict" and not b.get("update")]
        assert cams == ["line-cam-7", "line-cam-7"]
        sender.close()
    finally:
        code, _ = st.stop()
    assert code == 0
