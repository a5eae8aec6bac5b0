"""MQTT: each result on ``PREFIX/CAMERA/{verdict,explanation,error}`` as the same JSON as the
ZeroMQ message, and a retained ``PREFIX/status`` (``online``; the broker says ``offline`` for a
station that vanished, by the last will).

QoS 1 by default (at least once: a message in flight when the connection broke is sent again).
paho's client reconnects with back-off on its own network thread; while the broker is away the
sink keeps the oldest ``backlog`` messages and sends them, in order, once it is back; what comes
past the backlog is dropped and counted. Sent means acknowledged by the broker.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import deque
from typing import Any
from urllib.parse import unquote, urlparse

from lineguard.runtime.errors import LineguardError
from lineguard.runtime.station.sinks.base import Sink, log

_TOPIC_UNSAFE = re.compile(r"[+#/\x00]")


class MqttUrl:
    def __init__(self, url: str) -> None:
        u = urlparse(url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise LineguardError(f"--mqtt {url}: expected mqtt://[user:password@]host[:port]/prefix (or mqtts://)")
        self.tls = u.scheme == "mqtts"
        self.host = u.hostname
        try:
            self.port = u.port or (8883 if self.tls else 1883)
        except ValueError:
            raise LineguardError(f"--mqtt {url}: the port is not a number") from None
        self.prefix = u.path.strip("/") or "lineguard"
        if _TOPIC_UNSAFE.sub("", self.prefix.replace("/", "")) != self.prefix.replace("/", ""):
            raise LineguardError(f"--mqtt {url}: the prefix may not hold + or #")
        self.user = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}/{self.prefix}"


def client(url: MqttUrl, name: str, ca: str | None = None) -> Any:
    """A paho client for ``url`` (credentials, TLS), not yet connected."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{secrets.token_hex(3)}",
                    protocol=mqtt.MQTTv311)
    if url.user:
        c.username_pw_set(url.user, url.password)
    if url.tls:
        c.tls_set(ca_certs=ca)
    return c


def camera_topic(camera: Any) -> str:
    return _TOPIC_UNSAFE.sub("_", str(camera or "unknown"))


class MqttSink(Sink):
    kind = "mqtt"

    def __init__(self, url: str, qos: int = 1, backlog: int = 1000, ca: str | None = None,
                 queue_size: int = 1000) -> None:
        import paho.mqtt.client as mqtt

        self.url = MqttUrl(url)
        super().__init__(str(self.url), queue_size)
        if qos not in (0, 1, 2):
            raise LineguardError(f"--mqtt-qos {qos}: 0, 1 or 2")
        self.qos, self.connected = qos, False
        self._no_conn = mqtt.MQTT_ERR_NO_CONN
        self.status_topic = f"{self.url.prefix}/status"
        self.c = client(self.url, "lineguard", ca)
        self.c.will_set(self.status_topic, json.dumps({"status": "offline"}), qos=1, retain=True)
        self.c.reconnect_delay_set(min_delay=1, max_delay=8)  # a line wants its PLC back within seconds
        self.backlog: deque[tuple[str, str]] = deque()
        self.backlog_size = backlog
        self.c.on_connect = self._connected
        self.c.on_disconnect = self._disconnected
        self.c.on_publish = self._acked
        self._mids: set[int] = set()  # results awaiting the broker's acknowledgement (not the status)
        self._early: set[int] = set()  # acknowledged before publish() returned its mid

    def _connected(self, c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("%s: the broker refused the connection (%s)", self.name, reason)
            return
        self.connected = True
        self.count("connects")
        c.publish(self.status_topic, json.dumps({"status": "online", "since": time.time()}), qos=1, retain=True)
        log.info("%s: connected", self.name)

    def _disconnected(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if self.connected:
            log.warning("%s: disconnected (%s); reconnecting, up to the backlog kept meanwhile", self.name, reason)
        self.connected = False

    def _acked(self, _c: Any, _u: Any, mid: int, *_: Any) -> None:
        # paho holds its own lock here; publish() takes it too: never hold ours around publish()
        with self.lock:
            if mid in self._mids:
                self._mids.discard(mid)
                self.counts["sent"] += 1
            else:
                self._early.add(mid)

    def start(self) -> None:
        self.c.connect_async(self.url.host, self.url.port, keepalive=10)
        self.c.loop_start()
        super().start()

    def idle(self) -> None:
        if self.connected and self.backlog:
            self._flush()

    def _flush(self) -> None:
        """The messages kept while the broker was away, oldest first (on the sink's thread)."""
        while self.backlog and self.connected:
            self._publish(*self.backlog.popleft())

    def send(self, topic: str, body: dict[str, Any], png: bytes | None) -> None:
        t = f"{self.url.prefix}/{camera_topic(body.get('camera'))}/{topic}"
        payload = json.dumps(body)
        if self.connected:
            self._flush()
        if not self.connected or self.backlog:
            if len(self.backlog) >= self.backlog_size:
                self.count("dropped")  # the broker is away and the backlog is full
            else:
                self.backlog.append((t, payload))
            return
        self._publish(t, payload)

    def _publish(self, t: str, payload: str) -> None:
        info = self.c.publish(t, payload, qos=self.qos)
        with self.lock:
            if info.rc == self._no_conn and self.qos == 0:
                self.counts["dropped"] += 1
            elif self.qos == 0:
                self.counts["sent"] += 1
            elif info.mid in self._early:  # acknowledged already
                self._early.discard(info.mid)
                self.counts["sent"] += 1
            else:
                self._mids.add(info.mid)

    def close(self, timeout: float = 5.0) -> None:
        super().close(timeout)
        if self.connected:
            self.c.publish(self.status_topic, json.dumps({"status": "offline", "since": time.time()}), qos=1,
                           retain=True).wait_for_publish(timeout=2)
        self.c.disconnect()
        self.c.loop_stop()

    def state(self) -> dict[str, Any]:
        return super().state() | {"connected": self.connected, "backlog": len(self.backlog)}
