"""One HTTP server for the station: the web view, its JSON API, `/metrics` and `/healthz`, run by
uvicorn on a thread of its own (its event loop never runs a stage's work)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from lineguard.runtime.errors import LineguardError
from lineguard.runtime.ports import is_loopback
from lineguard.runtime.station.web.app import View, create_app
from lineguard.runtime.station.web.feed import LiveFeed
from lineguard.runtime.station.web.history import History

log = logging.getLogger("lineguard.web")


def parse_http(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``PORT`` (loopback) → (host, port); raises LineguardError naming the problem."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise LineguardError(f"--http {addr}: expected HOST:PORT (e.g. 127.0.0.1:8080)")
    return host, int(port)


class WebServer:
    def __init__(self, host: str, port: int, pipeline: Any, out_queue: Any, feed: LiveFeed, db: str | None = None,
                 token: str | None = None) -> None:
        import uvicorn

        if not is_loopback(host) and not token:
            raise LineguardError(f"--http {host}:{port} is reachable from other machines: give --http-token "
                                 "or --http-token-file (every request must then carry it)")
        self.view = View(pipeline, out_queue, feed, History(db) if db else None, token)
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            raise LineguardError(f"--http {host}:{port}: cannot bind ({e.strerror or e})") from None
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(create_app(self.view), log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="web",
                                       daemon=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"

    def start(self) -> None:
        self.thread.start()
        end = time.monotonic() + 10
        while not self.server.started and self.thread.is_alive() and time.monotonic() < end:
            time.sleep(0.02)
        if not self.server.started:
            log.error("the web view did not start; the station serves without it")

    def stop(self) -> None:
        self.view.stopping = True
        self.server.should_exit = True
        self.thread.join(5)
        self.sock.close()
