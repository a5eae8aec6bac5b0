"""`lineguard serve` as a real subprocess on loopback: frames in, every one accounted for, bad input survived."""

from __future__ import annotations

import json
import shutil
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
from helpers import Station, lg

from lineguard.runtime.imageio import list_images, read_image
from lineguard.runtime.station.protocol import encode_frame


def _frames(synth: Path) -> list[tuple[str, np.ndarray]]:
    files = list_images(synth / "test", recursive=True)
    return [(p.parent.name + "_" + p.stem, read_image(p)) for p in files]


def test_every_frame_is_accounted_for_and_bad_input_gets_errors(served_bundle, synth, tmp_path):
    st = Station(served_bundle, tmp_path)
    try:
        frames = _frames(synth)
        sent = []
        for i, (_name, img) in enumerate(frames):
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


def _video(synth: Path, path: Path, n: int = 12) -> Path:
    frames = [read_image(p) for p in list_images(synth / "test", recursive=True)]
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (w, h))
    for i in range(n):
        vw.write(frames[i % len(frames)])
    vw.release()
    return path


def test_camera_video_to_verdicts_masks_and_explanations(full_bundle, synth, tmp_path):
    art = tmp_path / "art"
    st = Station(full_bundle, tmp_path, "--artifacts", str(art), "--keep-artifacts", "3")
    try:
        assert st.ready["health"] == {"expert": st.ready["health"]["expert"], "sam": "ok", "llm": "ok",
                                      "classes": "absent"}
        video = _video(synth, tmp_path / "line.avi", 12)
        saved = tmp_path / "saved"
        subscriber = subprocess.Popen([sys.executable, "-m", "lineguard", "results", "--connect", st.publish,
                                       "--topics", "verdict", "--count", "12", "--json", "--out", str(saved)],
                                      stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)  # its subscription reaches the server before the first frame
        r = lg("camera", "--source", video, "--connect", st.ingest, "--fps", "20", "--name", "line1")
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["sent"] == 12 and report["failed"] == 0
        ids = {f"line1-{report['run']}-{i}" for i in range(12)}  # the camera's run id keeps runs apart
        got = st.collect(lambda g: {b["frame_id"] for t, b, _ in g if t == "verdict" and not b.get("update")} >= ids)
        verdicts = {b["frame_id"]: b for t, b, _ in got if t == "verdict" and not b.get("update")}
        flagged = {f for f, b in verdicts.items() if b["verdict"] == "defect"}
        assert flagged
        got += st.collect(lambda g: {b["frame_id"] for t, b, _ in g if t == "explanation"} >=
                          flagged - {b["frame_id"] for t, b, _ in got if t == "explanation"}, 120)
        masks = {b["frame_id"]: b for t, b, _ in got if b.get("update") == "masks"}
        expl = {b["frame_id"]: b for t, b, _ in got if t == "explanation"}
        assert set(masks) == set(expl) == flagged
        assert all(d["mask_source"] in ("sam", "expert") for b in masks.values() for d in b["defects"])
        assert any(d["mask_source"] == "sam" for b in masks.values() for d in b["defects"])
        e = next(iter(expl.values()))
        assert e["explanation"]["new_tokens"] >= 1 and "consistent" in e["explanation"] and "explained" in e["ts"]
        assert len(list(art.glob("*_overlay.jpg"))) == min(3, len(flagged))  # retention holds
        lines = [json.loads(x) for x in subscriber.communicate(timeout=60)[0].splitlines()]
        assert len(lines) == 12 and all(x["topic"] == "verdict" for x in lines)
        assert len((saved / "results.jsonl").read_text().splitlines()) == 12
    finally:
        code, summary = st.stop()
    assert code == 0 and summary["counts"]["verdicts"] == 12
    rows = sqlite3.connect(st.db).execute("SELECT frame_id, explanation, mask_path FROM results WHERE verdict='defect'")
    rows = {r[0]: r for r in rows}
    assert set(rows) == flagged and all(json.loads(r[1])["text"] is not None for r in rows.values())


def test_a_broken_llm_degrades_to_verdicts_and_masks(full_bundle, synth, tmp_path):
    b = tmp_path / "broken"
    shutil.copytree(full_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["stages"]["llm"]["prompt"]["user"] = "{% if %}"  # the stage fails to load; the station serves on
    (b / "manifest.json").write_text(json.dumps(m))
    st = Station(b, tmp_path)
    try:
        assert st.ready["health"]["llm"].startswith("degraded") and st.ready["health"]["sam"] == "ok"
        frames = _frames(synth)
        for i, (_, img) in enumerate(frames):
            st.send(encode_frame(f"d{i}", "camA", image=img))
        got = st.collect(lambda g: len({b["frame_id"] for t, b, _ in g if t == "verdict" and not b.get("update")})
                         >= len(frames))
        assert not [1 for t, _, _ in got if t == "explanation"]
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{st.ports['metrics']}/healthz").read())
        assert health["status"] == "degraded" and "does not parse" in health["stages"]["llm"]
    finally:
        code, _ = st.stop()
    assert code == 0


def test_kill_9_loses_nothing_a_subscriber_saw_and_the_store_reopens(served_bundle, synth, tmp_path):
    st = Station(served_bundle, tmp_path)
    frames = _frames(synth)
    for i, (_, img) in enumerate(frames):
        st.send(encode_frame(f"k{i}", "camA", image=img))
    got = st.collect(lambda g: len([1 for t, b, _ in g if t == "verdict" and not b.get("update")]) >= 3)
    seen = {b["frame_id"] for t, b, _ in got if t == "verdict" and not b.get("update")}
    st.proc.kill()
    st.proc.wait()
    stored = {r[0] for r in sqlite3.connect(st.db).execute("SELECT frame_id FROM results WHERE status='verdict'")}
    assert seen <= stored
    st.push.close(0)
    st.sub.close(0)
    st.ctx.term()
    # a restart on the same store appends to it
    st2 = Station(served_bundle, tmp_path)
    try:
        st2.send(encode_frame("after-restart", "camA", image=frames[0][1]))
        st2.collect(lambda g: any(b["frame_id"] == "after-restart" for _, b, _ in g))
    finally:
        code, _ = st2.stop()
    assert code == 0
    stored2 = {r[0] for r in sqlite3.connect(st.db).execute("SELECT frame_id FROM results")}
    assert seen | {"after-restart"} <= stored2


def test_sigterm_drains_queued_frames(served_bundle, synth, tmp_path):
    st = Station(served_bundle, tmp_path, "--max-batch", "2")
    frames = _frames(synth)
    n = 24
    for i in range(n):
        st.send(encode_frame(f"s{i}", "camA", image=frames[i % len(frames)][1]))
    time.sleep(0.3)  # in the server's queues, most not inspected yet
    code, summary = st.stop()
    assert code == 0 and summary["drained"]
    rows = dict(sqlite3.connect(st.db).execute("SELECT frame_id, status FROM results").fetchall())
    # every frame the server took in ends as a verdict or a counted drop, none vanish
    assert summary["counts"]["received"] == len(rows)
    assert summary["counts"].get("verdicts", 0) + summary["counts"].get("dropped", 0) == summary["counts"]["received"]


def test_backpressure_drops_are_counted_per_camera(served_bundle, synth, tmp_path):
    st = Station(served_bundle, tmp_path, "--queue", "1", "--max-batch", "1", "--hwm", "1000")
    try:
        frames = _frames(synth)
        big = cv2.resize(frames[0][1], (1024, 1024))
        n = 40
        for i in range(n):
            st.send(encode_frame(f"b{i}", "camZ", image=big))
        got = st.collect(lambda g: len({b["frame_id"] for t, b, _ in g if not b.get("update")}) >= n, 120)
        outcome = {}
        for t, b, _ in got:
            if not b.get("update"):
                outcome.setdefault(b["frame_id"], "dropped" if b.get("code") == "dropped" else t)
        assert set(outcome) == {f"b{i}" for i in range(n)}  # each frame: a verdict or a dropped error
        drops = sum(v == "dropped" for v in outcome.values())
        assert drops > 0 and drops + sum(v == "verdict" for v in outcome.values()) == n
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{st.ports['metrics']}/healthz").read())
        # ingest drops, counted for this camera; flagged frames may also lose masks to the
        # defect queue (its own counter), which this test does not control
        assert set(health["dropped"]) == {"camZ"} and health["dropped"]["camZ"]["ingest"] == drops
    finally:
        st.stop()


def test_curve_refuses_a_client_without_the_key(served_bundle, synth, tmp_path):
    keys = tmp_path / "keys"
    assert lg("keys", keys).returncode == 0
    st = Station(served_bundle, tmp_path, "--curve-keys", str(keys))
    try:
        # the test's own plain PUSH/SUB never get through the handshake: nothing arrives
        try:  # with the handshake refused there may be no pipe at all: the send may time out
            st.push.send_multipart(encode_frame("plain", "camA", image=_frames(synth)[0][1]), zmq.NOBLOCK)
        except zmq.Again:
            pass
        assert st.collect(lambda g: bool(g), timeout=2.0) == []
        # a camera with the client key does
        folder = tmp_path / "one"
        folder.mkdir()
        cv2.imwrite(str(folder / "a.png"), _frames(synth)[0][1])
        from lineguard.runtime.station.curve import curve_client

        sub = st.ctx.socket(zmq.SUB)
        curve_client(sub, keys)
        sub.setsockopt(zmq.SUBSCRIBE, b"verdict")
        sub.connect(st.publish)
        time.sleep(0.5)
        r = lg("camera", "--source", folder, "--connect", st.ingest, "--curve-keys", keys, "--name", "secure")
        assert r.returncode == 0 and json.loads(r.stdout)["sent"] == 1
        assert sub.poll(30000), "the keyed camera's frame produced a verdict"
        assert json.loads(sub.recv_multipart()[1])["camera"] == "secure"
        sub.close(0)
    finally:
        code, _ = st.stop()
    assert code == 0


def test_camera_refuses_a_missing_source_in_one_line(tmp_path):
    r = lg("camera", "--source", tmp_path / "nope.avi", "--connect", "tcp://127.0.0.1:1")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no such file, folder, device number or URL" in r.stderr
    r = lg("serve", tmp_path / "missing-bundle")
    assert r.returncode == 1 and "no such bundle directory" in r.stderr


def test_serve_refuses_a_sam_variant_the_bundle_lacks_in_one_line(full_bundle):
    r = lg("serve", full_bundle, "--sam-precision", "int3")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "--sam-precision int3: the bundle's SAM has fp32" in r.stderr


def test_restarted_cameras_and_servers_keep_every_row(served_bundle, synth, tmp_path):
    """A camera that restarts its numbering, a server restarted on the same store (imagezmq ids come
    from the server) and a sender that repeats an id: every frame gets its own row, none overwritten."""
    imagezmq = pytest.importorskip("imagezmq")
    folder = tmp_path / "five"
    folder.mkdir()
    for p in list_images(synth / "test", recursive=True)[:5]:
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    img = read_image(next(folder.iterdir()))
    seqs: list[int] = []
    for run in range(2):  # the same store, a new server process each time
        st = Station(served_bundle, tmp_path)
        try:
            for _ in range(2):  # the same camera twice, over the same 5 images
                r = lg("camera", "--source", folder, "--connect", st.ingest, "--name", "camA")
                assert r.returncode == 0 and json.loads(r.stdout)["sent"] == 5, r.stderr
            sender = imagezmq.ImageSender(connect_to=st.imagezmq)
            assert sender.send_image("izq", img) == b"OK"
            sender.close()
            st.send(encode_frame("same-id", "camB", image=img))  # a sender repeating its own id
            got = st.collect(lambda g: sum(t == "verdict" and not b.get("update") for t, b, _ in g) >= 12)
            seqs += [b["seq"] for t, b, _ in got if t == "verdict" and not b.get("update")]
            assert [b.get("repeat") for t, b, _ in got if t == "verdict" and b["frame_id"] == "same-id"
                    and not b.get("update")] == [True if run else None]  # the repeat is said, not only stored
        finally:
            code, _ = st.stop()
        assert code == 0
    rows = sqlite3.connect(st.db).execute("SELECT seq, camera, frame_id, repeat, status FROM results").fetchall()
    assert len(rows) == 24 and all(r[4] == "verdict" for r in rows)
    assert sorted(seqs) == sorted(r[0] for r in rows) and len(set(seqs)) == 24  # the station's ids never repeat
    cam_a = [r for r in rows if r[1] == "camA"]
    assert len(cam_a) == 20 and len({r[2] for r in cam_a}) == 20 and not any(r[3] for r in cam_a)  # run ids
    izq = [r for r in rows if r[1] == "izq"]
    assert len(izq) == 2 and izq[0][2] != izq[1][2]  # imagezmq ids carry the server's run
    same = sorted((r[0], r[3]) for r in rows if r[2] == "same-id")
    assert [rep for _, rep in same] == [0, 1]  # stored twice, the second marked as a repeat


def _same(a, b, path="record"):
    """Equal records: numbers to float32 rounding (a batch of 8 and a batch of 1 may sum in another
    order), everything else exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))} differ"
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{path}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6), f"{path}: {a} vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def test_the_served_record_is_the_inspected_record(full_bundle, synth, tmp_path):
    """serve and `inspect --json` run one frame path: same score, verdict, map, regions, defects, classes."""
    b = tmp_path / "b"
    shutil.copytree(full_bundle, b)
    r = lg("calibrate", b, "--dataset", synth, "--classes-only")
    assert r.returncode == 0, r.stderr
    r = lg("inspect", b, synth / "test", "--json")
    assert r.returncode == 0, r.stderr
    inspected = {Path(x["path"]).parent.name + "_" + Path(x["path"]).stem: x for x in json.loads(r.stdout)}
    assert any(x.get("defects") for x in inspected.values()) and any(
        d.get("class") for x in inspected.values() for d in x.get("defects", []))
    st = Station(b, tmp_path, "--no-explain")
    try:
        frames = _frames(synth)
        for name, img in frames:
            st.send(encode_frame(name, "camA", image=img))
        flagged = {n for n, x in inspected.items() if x["verdict"] == "defect"}

        def done(g):
            have = {bd["frame_id"] for t, bd, _ in g if t == "verdict" and not bd.get("update")}
            masks = {bd["frame_id"] for t, bd, _ in g if bd.get("update") == "masks"}
            return have >= set(inspected) and masks >= flagged
        got = st.collect(done)
    finally:
        st.stop()
    served = {bd["frame_id"]: bd for t, bd, _ in got if t == "verdict" and not bd.get("update")}
    served |= {bd["frame_id"]: bd for t, bd, _ in got if bd.get("update") == "masks"}  # the full record
    assert set(served) == set(inspected)
    for name, ins in inspected.items():
        rec = {k: v for k, v in served[name].items() if k not in ("seq", "frame_id", "camera", "ts_sent", "ts",
                                                                    "update", "has_mask")}
        _same(rec, {k: v for k, v in ins.items() if k != "path"}, name)


def test_serve_logs_one_json_object_per_line(served_bundle, synth, tmp_path):
    st = Station(served_bundle, tmp_path, "--log-format", "json", "--no-explain")
    try:
        st.send([b"not a frame"])  # an error a log collector should see as a record, not a traceback
        st.collect(lambda g: any(t == "error" for t, _, _ in g), timeout=20)
    finally:
        rc, summary = st.stop()
    lines = [json.loads(x) for x in summary["stderr"].splitlines() if x.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(x) for x in lines)
    assert any(x["level"] == "info" and x["message"].startswith("serving:") for x in lines)
