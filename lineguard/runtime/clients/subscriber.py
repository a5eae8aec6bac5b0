"""`lineguard results`: a subscriber that prints (and with ``--out`` saves) what a runtime publishes."""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path
from typing import Any

import zmq

from lineguard.runtime.errors import LineguardError
from lineguard.runtime.station.curve import curve_client

Message = tuple[str, dict[str, Any], bytes | None]


class ZmqSource:
    def __init__(self, connect: str, topics: list[str], curve_keys: str | None = None) -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        if curve_keys:
            curve_client(self.sock, curve_keys)
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self.sock.connect(connect)

    def get(self, wait_s: float) -> Message | None:
        if not self.sock.poll(int(1000 * wait_s)):
            return None
        parts = self.sock.recv_multipart()
        return parts[0].decode(), json.loads(parts[1]), parts[2] if len(parts) > 2 else None

    def close(self) -> None:
        self.sock.close()


class MqttSource:
    """``PREFIX/+/TOPIC`` for each topic: the same messages as on ZeroMQ (without the mask PNG)."""

    def __init__(self, url: str, topics: list[str], ca: str | None = None) -> None:
        from lineguard.runtime.station.sinks.mqtt import MqttUrl, client

        self.url = MqttUrl(url)
        self.q: queue.Queue[Message] = queue.Queue()
        self.c = client(self.url, "lineguard-results", ca)
        subs = [(f"{self.url.prefix}/+/{t}", 1) for t in topics]
        self.c.on_connect = lambda c, *_: c.subscribe(subs)
        self.c.on_message = lambda _c, _u, m: self.q.put((m.topic.rsplit("/", 1)[1], json.loads(m.payload), None))
        self.c.reconnect_delay_set(1, 8)
        try:
            self.c.connect(self.url.host, self.url.port, keepalive=10)
        except OSError as e:
            raise LineguardError(f"--mqtt {self.url}: cannot connect ({e})") from None
        self.c.loop_start()

    def get(self, wait_s: float) -> Message | None:
        try:
            return self.q.get(timeout=wait_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def run_results(connect: str, topics: list[str], out: str | None = None, count: int | None = None,
                timeout_s: float | None = None, as_json: bool = False, curve_keys: str | None = None,
                mqtt: str | None = None, mqtt_ca: str | None = None) -> int:
    """`lineguard results`: print (and with ``out`` save) what a runtime publishes, from its ZeroMQ
    PUB socket or (``mqtt``) from the broker it publishes to."""
    src = MqttSource(mqtt, topics, mqtt_ca) if mqtt else ZmqSource(connect, topics, curve_keys)
    folder = Path(out) if out else None
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
    n, deadline = 0, (time.monotonic() + timeout_s) if timeout_s else None
    try:
        while count is None or n < count:
            wait = 0.5 if deadline is None else max(0.0, deadline - time.monotonic())
            msg = src.get(wait)
            if msg is None:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                continue
            topic, body, png = msg
            if folder:
                with open(folder / "results.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps({"topic": topic} | body) + "\n")
                if png is not None:
                    name = f"{body.get('seq')}_{body.get('camera')}_{body.get('frame_id')}"  # seq: ids may repeat
                    (folder / f"{name}_mask.png").write_bytes(png)
            if as_json:
                print(json.dumps({"topic": topic} | body), flush=True)
            else:
                print(_line(topic, body), flush=True)
            n += 1
    except KeyboardInterrupt:
        pass
    finally:
        src.close()
    return 0


def _line(topic: str, b: dict[str, Any]) -> str:
    head = f"{topic:11s} {b.get('camera')}/{b.get('frame_id')}"
    if topic == "error":
        return f"{head}  {b.get('code')}: {b.get('reason')}"
    if topic == "explanation":
        e = b.get("explanation", {})
        return f"{head}  {e.get('text')!r}" + ("" if e.get("consistent", True) else f"  [inconsistent: {e.get('reason')}]")
    if b.get("reason") == "deadline":
        return f"{head}  {b.get('verdict')}  fail-safe: no verdict within {b.get('deadline_ms'):g} ms"
    cells = ",".join(d["cell"] for d in b.get("defects", [])) or b.get("hottest", {}).get("cell", "")
    norm = b.get("score_norm")
    return (f"{head}  {b.get('verdict')}  score {b.get('score'):.3f}" + (f" ({norm:.2f})" if norm is not None else "")
            + (f"  masks at {cells}" if b.get("update") == "masks" else "")
            + ("  (late: after the deadline)" if b.get("deadline_missed") else ""))
