"""Line outputs against real components on loopback: a Mosquitto broker the test starts (and kills
and restarts), and a local HTTP server for webhooks that answers, fails or hangs."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import Station, wait_for

from lineguard.runtime.imageio import list_images, read_image
from lineguard.runtime.ports import free_ports
from lineguard.runtime.station.protocol import encode_frame

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).is_file()), None)


class Broker:
    """A real Mosquitto on a free loopback port, no persistence."""

    def __init__(self, tmp: Path) -> None:
        if MOSQUITTO is None:
            pytest.skip("no mosquitto broker: apt-get install mosquitto (.ci/run does)")
        self.port = free_ports(1)[0]
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.log = open(tmp / "mosquitto.log", "a")
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=self.log, stderr=self.log)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("mosquitto did not start")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}/plant/line1"


class Listener:
    """An MQTT subscriber on ``prefix/#`` (paho, as a PLC gateway or MES would subscribe)."""

    def __init__(self, port: int, prefix: str) -> None:
        import paho.mqtt.client as mqtt

        self.got: list[tuple[str, dict, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{port}")
        self.subscribed = threading.Event()
        self.c.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        self.c.on_subscribe = lambda *_: self.subscribed.set()
        self.c.on_message = self._message
        # back well before the station (its back-off starts at 1 s): what the station sends on reconnecting
        # must find this subscriber there, or the test would race the two reconnections
        self.c.reconnect_delay_set(0.05, 0.1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.subscribed.wait(10), "the test's MQTT subscriber could not subscribe"

    def _message(self, _c, _u, m) -> None:
        with self.lock:
            self.got.append((m.topic, json.loads(m.payload), m.retain))

    def topic(self, suffix: str) -> list[dict]:
        with self.lock:
            return [b for t, b, _ in self.got if t.endswith(suffix)]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def frames(synth: Path) -> list:
    return [read_image(p) for p in list_images(synth / "test", recursive=True)]




def test_mqtt_carries_what_zeromq_carries(full_bundle: Path, synth: Path, tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    listen = Listener(broker.port, "plant/line1")
    st = Station(full_bundle, tmp_path, "--mqtt", broker.url)
    try:
        imgs = frames(synth)
        for i, img in enumerate(imgs):
            st.send(encode_frame(f"f{i}", "cam/A", image=img))
        def flagged(g):
            return [b for t, b, _ in g if t == "verdict" and b["verdict"] == "defect" and "update" not in b]
        zmq_msgs = st.collect(lambda g: sum(t == "verdict" and "update" not in b for t, b, _ in g) == len(imgs)
                              and sum(t == "explanation" for t, _, _ in g) >= len(flagged(g)))
        want = sorted((t, json.dumps(b, sort_keys=True)) for t, b, _ in zmq_msgs)

        def on_mqtt() -> list | None:
            with listen.lock:
                g = sorted((t.rsplit("/", 1)[1], json.dumps(b, sort_keys=True)) for t, b, _ in listen.got
                           if not t.endswith("/status"))
            return g if len(g) >= len(want) else None

        got = wait_for(on_mqtt, what="every message on MQTT")
        assert got == want  # the same JSON, every message, nothing else
        assert {t.rsplit("/", 2)[1] for t, _, _ in listen.got if not t.endswith("status")} == {"cam_A"}
        assert listen.topic("plant/line1/status")[0]["status"] == "online"

        def sink() -> dict | None:  # the sink process reports twice a second
            health = json.loads(urllib_get(f"http://127.0.0.1:{st.ports['metrics']}/healthz"))
            s = health["sinks"][f"mqtt://127.0.0.1:{broker.port}/plant/line1"]
            return s if s.get("sent") == len(want) else None

        s = wait_for(sink, what="the sink's count", show=sink)
        assert s["connected"] and s.get("dropped", 0) == 0
    finally:
        code, summary = st.stop()
        listen.close()
        broker.kill()
    assert code == 0
    # a clean stop says offline on the retained status (a crash would leave it to the last will)
    assert listen.topic("status")[-1]["status"] == "offline"


def urllib_get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def test_a_broker_outage_costs_the_backlog_not_the_station(served_bundle: Path, synth: Path, tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    backlog = 5
    st = Station(served_bundle, tmp_path, "--mqtt", broker.url, "--mqtt-backlog", str(backlog))
    listen = Listener(broker.port, "plant/line1")
    img = read_image(list_images(synth / "test" / "good")[0])  # one verdict message per frame
    name = f"mqtt://127.0.0.1:{broker.port}/plant/line1"

    def sink() -> dict:
        return json.loads(urllib_get(f"http://127.0.0.1:{st.ports['metrics']}/healthz"))["sinks"][name]

    def burst(prefix: str, n: int) -> list[dict]:
        for i in range(n):
            st.send(encode_frame(f"{prefix}{i}", "camA", image=img))
        return [b for t, b, _ in st.collect(lambda g: sum(t == "verdict" for t, _, _ in g) == n) if t == "verdict"]

    try:
        wait_for(lambda: sink()["connected"], what="the station's connection")
        before = burst("a", 4)
        wait_for(lambda: len(listen.topic("/verdict")) == 4, what="the first verdicts on MQTT",
                 show=lambda: (listen.got, sink()))
        broker.kill()
        wait_for(lambda: not sink()["connected"], what="the station to see the broker gone")
        during = burst("b", 12)  # the station goes on: every verdict on ZeroMQ, at once
        assert len(during) == 12 and all(b["verdict"] in ("good", "defect") for b in during)
        wait_for(lambda: sink().get("dropped", 0) == 12 - backlog, what="the drops past the backlog")
        broker.start()
        wait_for(lambda: sink()["connected"], what="the reconnection")
        kept = [b["frame_id"] for b in during[:backlog]]  # the oldest published, in order; the rest counted
        wait_for(lambda: {b["frame_id"] for b in listen.topic("/verdict")} >= set(kept),
                 what="the backlog after reconnection", show=lambda: ([b["frame_id"] for b in listen.topic("/verdict")], sink()))
        ids = [b["frame_id"] for b in listen.topic("/verdict")]
        assert ids[:4] == [b["frame_id"] for b in before]
        # QoS 1 is at least once: a message in flight at the kill may come twice, never one out of the backlog
        assert [i for i in ids[4:] if i.startswith("b")] == kept, (listen.got, sink())
        after = burst("c", 3)
        wait_for(lambda: {f"c{i}" for i in range(3)} <= {b["frame_id"] for b in listen.topic("/verdict")},
                 what="verdicts after the outage")
        s = wait_for(lambda: sink() if sink().get("sent") == 4 + backlog + 3 else None, what="the sent count",
                     show=sink)
        assert s["dropped"] == 12 - backlog and len(after) == 3
    finally:
        code, _ = st.stop()
        listen.close()
        broker.kill()
    assert code == 0


class Receiver:
    """A local HTTP server for webhooks: ``mode`` ok (200), fail (500) or hang (never answers in time)."""

    def __init__(self, mode: str) -> None:
        self.got: list[dict] = []
        self.hits = 0
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                rec.hits += 1
                if rec.mode == "hang":
                    time.sleep(1.5)
                code = 200 if rec.mode == "ok" else 500
                if rec.mode == "ok":
                    rec.got.append(json.loads(body))
                try:
                    self.send_response(code)
                    self.end_headers()
                except OSError:  # the sender gave up waiting
                    pass

            def log_message(self, *a) -> None:
                pass

        self.mode = mode
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_webhooks_deliver_and_a_bad_receiver_costs_only_itself(served_bundle: Path, synth: Path, tmp_path: Path) -> None:
    ok, failing, hanging = Receiver("ok"), Receiver("fail"), Receiver("hang")
    st = Station(served_bundle, tmp_path, "--webhook", ok.url, "--webhook", failing.url, "--webhook", hanging.url,
                 "--webhook-timeout", "0.3", "--webhook-tries", "2", "--sink-queue", "4")
    img = read_image(list_images(synth / "test" / "good")[0])
    n = 10
    try:
        for i in range(n):  # at a line's pace: the good receiver keeps up, the hanging one cannot
            st.send(encode_frame(f"w{i}", "camA", image=img))
            time.sleep(0.2)
        verdicts = [b for t, b, _ in st.collect(lambda g: sum(t == "verdict" for t, _, _ in g) == n) if t == "verdict"]
        assert len(verdicts) == n  # the verdict path never waited for a receiver
        wait_for(lambda: len(ok.got) == n, what="the good receiver's webhooks", show=lambda: (len(ok.got), st.proc.poll()))
        assert [b["frame_id"] for b in ok.got] == [b["frame_id"] for b in verdicts]  # in the order published
        assert all(b["topic"] == "verdict" for b in ok.got)
        def health():
            return json.loads(urllib_get(f"http://127.0.0.1:{st.ports['metrics']}/healthz"))["sinks"]

        def settled() -> dict | None:
            h = health()
            return h if h[failing.url].get("failed", 0) + h[failing.url].get("dropped", 0) == n else None

        s = wait_for(settled, what="the failing receiver's count")
        assert s[failing.url].get("retries", 0) >= s[failing.url]["failed"]  # each failure was retried first
        s = wait_for(lambda: health() if health()[ok.url].get("sent") == n else None, what="the good count")
        assert s[ok.url].get("failed", 0) == 0
        # the hanging receiver's small queue overflowed while its thread waited: drops, counted
        assert s[hanging.url].get("dropped", 0) > 0
        metrics = urllib_get(f"http://127.0.0.1:{st.ports['metrics']}/metrics").decode()  # the same counts
        assert f'lineguard_sink_messages_total{{outcome="sent",sink="{ok.url}"}} {float(n)}' in metrics
    finally:
        code, summary = st.stop()
        for r in (ok, failing, hanging):
            r.close()
    assert code == 0


def test_results_reads_from_mqtt(served_bundle: Path, synth: Path, tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    st = Station(served_bundle, tmp_path, "--mqtt", broker.url)
    sub = subprocess.Popen([sys.executable, "-m", "lineguard", "results", "--mqtt", broker.url, "--json",
                            "--count", "3", "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        time.sleep(1.5)  # the subscriber connects and subscribes
        img = read_image(list_images(synth / "test" / "good")[0])  # one verdict message per frame
        for i in range(3):
            st.send(encode_frame(f"r{i}", "camA", image=img))
        out, err = sub.communicate(timeout=90)
        lines = [json.loads(x) for x in out.splitlines()]
        assert sorted(x["frame_id"] for x in lines) == ["r0", "r1", "r2"], err
        assert all(x["topic"] == "verdict" for x in lines)
    finally:
        st.stop()
        broker.kill()
    bad = subprocess.run([sys.executable, "-m", "lineguard", "results", "--mqtt", "http://x"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "--mqtt http://x" in bad.stderr
