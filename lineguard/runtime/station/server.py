"""`lineguard serve`: the station process. ZeroMQ in (PULL, and REP for imagezmq senders), PUB out.

One thread owns the ingest sockets (ZeroMQ sockets are not thread-safe), one owns the PUB
socket and drains a queue of results; the pipeline's stages run between them. SIGTERM/SIGINT
stop the ingest, drain the queues (with a deadline), close the store and exit 0.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq

from lineguard.runtime.bundle import Bundle
from lineguard.runtime.errors import LineguardError
from lineguard.runtime.station.curve import curve_server
from lineguard.runtime.station.pipeline import Pipeline, ServeConfig
from lineguard.runtime.station.protocol import result_message
from lineguard.runtime.station.store import ResultStore
from lineguard.runtime.station.web.feed import LiveFeed

log = logging.getLogger("lineguard.serve")


@dataclass
class Endpoints:
    ingest: str = "tcp://127.0.0.1:5555"
    publish: str = "tcp://127.0.0.1:5556"
    imagezmq: str | None = None
    curve_keys: str | None = None
    hwm: int = 64  # per-socket message high-water mark
    http: tuple[str, int] | None = None  # the web view, API, /metrics and /healthz
    http_token: str | None = None  # required off loopback


class Server:
    def __init__(self, bundle: Bundle, cfg: ServeConfig, ep: Endpoints, db: str | None = None,
                 sinks: list[tuple[str, dict[str, Any]]] | None = None) -> None:
        self.ctx = zmq.Context()
        self.ep = ep
        self.auth = None
        self.keys: tuple[bytes, bytes] | None = None
        if ep.curve_keys:
            self.auth, pub, sec = curve_server(self.ctx, ep.curve_keys)
            self.keys = (pub, sec)
        self.out: queue.Queue[list[bytes] | None] = queue.Queue()
        self.store = ResultStore(db) if db else None
        feed = LiveFeed() if ep.http else None
        self.sinks = None
        if sinks:  # the line outputs, in a process of their own (their libraries only when asked for)
            from lineguard.runtime.station.sinks.process import SinkProcess

            self.sinks = SinkProcess(sinks, self.ctx, cfg.background_nice)
        self.pipeline = Pipeline(bundle, cfg, self._publish, self.store, live=feed)
        if self.sinks:
            self.pipeline.sink_states = self.sinks.state
        self.stop_event = threading.Event()
        self.pub = self._socket(zmq.PUB, ep.publish)
        self.pull = self._socket(zmq.PULL, ep.ingest)
        self.rep = self._socket(zmq.REP, ep.imagezmq) if ep.imagezmq else None
        self.web = None
        if ep.http:  # starlette and uvicorn only when asked for
            from lineguard.runtime.station.web.server import WebServer

            self.web = WebServer(*ep.http, self.pipeline, self.out, feed, db, ep.http_token)

    def _socket(self, kind: int, addr: str) -> zmq.Socket:
        s = self.ctx.socket(kind)
        s.linger = 2000
        if kind == zmq.PUB:
            s.sndhwm = 10_000  # subscribers that fall behind lose messages; the store keeps all
        else:
            s.rcvhwm = self.ep.hwm
            limits = self.pipeline.cfg.limits
            s.setsockopt(zmq.MAXMSGSIZE, limits.max_payload_bytes + limits.max_header_bytes + 1024)
        if self.keys:
            s.curve_server = True
            s.curve_publickey, s.curve_secretkey = self.keys
        try:
            s.bind(addr)
        except zmq.ZMQError as e:
            raise LineguardError(f"cannot bind {addr}: {e}") from None
        return s

    def _publish(self, topic: str, body: dict[str, Any], png: bytes | None) -> None:
        self.out.put(result_message(topic, body, png))

    def _publisher(self) -> None:
        while True:
            msg = self.out.get()
            if msg is None:
                return
            self.pub.send_multipart(msg, copy=False)
            if self.sinks is not None:
                self.sinks.offer(msg)

    def _ingest(self) -> None:
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        if self.rep is not None:
            poller.register(self.rep, zmq.POLLIN)
        while not self.stop_event.is_set():
            for sock, _ in poller.poll(100):
                parts = sock.recv_multipart(copy=False)
                if sock is self.pull:
                    self.pipeline.offer(parts)
                else:
                    refused = self.pipeline.offer(parts, "imagezmq")
                    self.rep.send(b"OK" if refused is None else f"ERROR {refused}".encode())
        # Frames the transport already took in are inspected, not lost with the socket.
        while True:
            try:
                self.pipeline.offer(self.pull.recv_multipart(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                break

    def serve(self, drain_s: float = 10.0) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        publisher = threading.Thread(target=self._publisher, name="publish", daemon=True)
        publisher.start()
        if self.sinks:
            self.sinks.start()
        self.pipeline.start()
        if self.web:
            self.web.start()
        ingest = threading.Thread(target=self._ingest, name="ingest", daemon=True)
        ingest.start()
        log.info("serving: ingest %s%s, results %s%s", self.ep.ingest,
                    f", imagezmq {self.ep.imagezmq}" if self.ep.imagezmq else "", self.ep.publish,
                    ", CURVE on" if self.keys else "")
        print(json.dumps({"event": "ready", "ingest": self.ep.ingest, "publish": self.ep.publish,
                          "imagezmq": self.ep.imagezmq, "http": self.web.url if self.web else None,
                          "sinks": self.sinks.names if self.sinks else [],
                          "health": self.pipeline.health}), flush=True)
        while not self.stop_event.wait(0.2):
            pass
        ingest.join()
        t0 = time.monotonic()
        drained = self.pipeline.stop(drain_s)
        self.out.put(None)
        publisher.join(max(0.5, drain_s - (time.monotonic() - t0)))
        for s in (self.pull, self.rep, self.pub):
            if s is not None:
                s.close()
        if self.sinks:  # what they hold is sent (a few seconds), then they stop
            self.sinks.close()
        if self.web:
            self.web.stop()
        if self.auth:
            self.auth.stop()
        if self.store:
            self.store.close()
        self.ctx.term()
        summary = {"event": "stopped", "drained": drained} | self.pipeline.stats.snapshot() \
            | ({"sinks": self.sinks.state()} if self.sinks else {})
        print(json.dumps(summary), flush=True)
        return 0
