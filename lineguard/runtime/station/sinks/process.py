"""The line outputs in a process of their own, so their work never competes with a verdict for
Python's interpreter lock.

Measured first in the station's process (benchmarks/sinks_load.py): MQTT, OPC UA and a webhook
doubled the verdict p99 at 60 frames/s on 2 cores — OPC UA's variable writes and the HTTP
requests are Python work the verdict path then waits behind. Now the station's publishing thread
hands each message it has already encoded for its PUB socket to a PUSH socket as well (no copy,
no wait: past ``PIPE`` waiting messages it is dropped and counted); the sink process pulls,
decodes, and offers it to each sink, which keeps its own bounded queue and thread there. The sink
process reports each sink's counters twice a second; ``/healthz``, ``/metrics`` and the web view
read those.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import queue
import signal
import tempfile
import threading
import time
from typing import Any

import zmq

from lineguard.runtime.errors import LineguardError

log = logging.getLogger("lineguard.sinks")
STOP = b"__stop__"
PIPE = 10_000  # messages between the station and the sink process; each sink has its own queue after it
Spec = tuple[str, dict[str, Any]]  # ("mqtt" | "opcua" | "webhook", the sink's keyword arguments)


def build(specs: list[Spec]) -> list[Any]:
    """The sinks of ``specs`` (each one's library imported only if asked for)."""
    out = []
    for kind, kw in specs:
        if kind == "mqtt":
            from lineguard.runtime.station.sinks.mqtt import MqttSink as cls
        elif kind == "opcua":
            from lineguard.runtime.station.sinks.opcua import OpcUaSink as cls
        elif kind == "webhook":
            from lineguard.runtime.station.sinks.webhook import WebhookSink as cls
        else:
            raise LineguardError(f"unknown line output {kind!r}")
        out.append(cls(**kw))
    return out


def _child(specs: list[Spec], addr: str, reports: Any, level: int, nice: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the station stops it, after its own drain
    if nice > 0:  # like SAM and the LLM: the outputs use the cycles the verdict path leaves
        try:
            os.nice(nice)
        except OSError as e:
            log.warning("could not lower the line outputs' priority: %s", e)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lineguard").setLevel(level)  # the station's verbosity; the libraries' warnings only
    try:
        sinks = build(specs)
        for s in sinks:
            s.start()
    except Exception as e:  # a bad URL, a port taken: the station refuses to start, saying why
        reports.put(("error", f"{type(e).__name__}: {e}" if not isinstance(e, LineguardError) else str(e)))
        return
    states = lambda: {s.name: s.state() for s in sinks}  # noqa: E731
    reports.put(("started", states()))
    sock = zmq.Context().socket(zmq.PULL)
    sock.connect(addr)
    last = time.monotonic()
    while True:
        if sock.poll(200):
            parts = sock.recv_multipart()
            if parts[0] == STOP:
                break
            body = json.loads(parts[1])
            for s in sinks:
                s.offer(parts[0].decode(), body, parts[2] if len(parts) > 2 else None)
        if time.monotonic() - last > 0.5:
            reports.put(("state", states()))
            last = time.monotonic()
    for s in sinks:
        s.close()
    reports.put(("stopped", states()))
    sock.close(0)


class SinkProcess:
    """The station's side: the PUSH socket, the child process and the counters it reports."""

    def __init__(self, specs: list[Spec], ctx: zmq.Context, nice: int = 10) -> None:
        for s in build(specs):  # refuse a bad URL or an unsafe address here, in one line, before anything starts
            if hasattr(s, "loop"):
                s.loop.close()
        self.specs = specs
        self.addr = f"ipc://{tempfile.gettempdir()}/lineguard-sinks-{os.getpid()}-{id(self)}.sock"
        self.push = ctx.socket(zmq.PUSH)
        self.push.sndhwm = PIPE
        self.push.linger = 2000
        self.push.bind(self.addr)
        mpc = mp.get_context("spawn")  # a clean interpreter: nothing of the station's threads or sessions
        self.reports = mpc.Queue()
        self.proc = mpc.Process(target=_child, args=(specs, self.addr, self.reports,
                                                     logging.getLogger("lineguard").getEffectiveLevel(), nice),
                                name="lineguard-sinks", daemon=True)
        self.states: dict[str, dict[str, Any]] = {}
        self.dropped = 0  # messages the sink process could not take in time: every sink missed them
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, name="sink-reports", daemon=True)

    def start(self, timeout: float = 60.0) -> None:
        self.proc.start()
        try:
            kind, payload = self.reports.get(timeout=timeout)
        except queue.Empty:
            raise LineguardError("the line outputs did not start within a minute") from None
        if kind == "error":
            self.proc.join(5)
            raise LineguardError(f"line output: {payload}")
        self.states = payload
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                kind, payload = self.reports.get(timeout=1.0)
            except queue.Empty:
                if not self.proc.is_alive():
                    return
                continue
            except (EOFError, OSError):
                return
            with self.lock:
                self.states = payload
            if kind == "stopped":
                return

    def offer(self, frames: list[Any]) -> None:
        """From the station's publishing thread (the socket's only user): never waits."""
        try:
            self.push.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped += 1

    def state(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            states = {k: dict(v) for k, v in self.states.items()}
        alive = self.proc.is_alive()
        for v in states.values():
            if self.dropped:
                v["dropped"] = v.get("dropped", 0) + self.dropped
            if not alive and "connected" in v:
                v["connected"] = False
        return states

    @property
    def names(self) -> list[str]:
        return list(self.states)

    def close(self, timeout: float = 10.0) -> None:
        """After the station's last message: the sinks send what they hold, then the process ends."""
        self.push.sndtimeo = int(1000 * timeout)
        try:
            self.push.send_multipart([STOP])
        except zmq.ZMQError:  # the process is gone or stuck: it is ended below
            pass
        self.proc.join(timeout)
        self.reader.join(2)
        if self.proc.is_alive():
            log.warning("the line outputs did not stop in %.0f s: ended", timeout)
            self.proc.kill()
        self.push.close()
