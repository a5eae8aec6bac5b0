"""Helpers shared by test modules (pytest puts this folder on sys.path)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq

from lineguard.runtime.ports import free_ports


def lg(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `lineguard ARGS...` as a user would: a real subprocess."""
    return subprocess.run([sys.executable, "-m", "lineguard", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


class Station:
    """The server process plus a subscriber and a sender, all on loopback."""

    def __init__(self, bundle: Path, tmp: Path, *extra: str, http: bool = False) -> None:
        self.ports = dict(zip(("ingest", "publish", "imagezmq", "metrics"), free_ports(4)))
        self.ingest = f"tcp://127.0.0.1:{self.ports['ingest']}"
        self.publish = f"tcp://127.0.0.1:{self.ports['publish']}"
        self.imagezmq = f"tcp://127.0.0.1:{self.ports['imagezmq']}"
        self.db = tmp / "results.db"
        self.http = f"http://127.0.0.1:{self.ports['metrics']}/"  # the web view (``http``) or /metrics alone
        web = ["--http", f"127.0.0.1:{self.ports['metrics']}"] if http else ["--metrics-port", str(self.ports["metrics"])]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lineguard", "serve", str(bundle), "--ingest", self.ingest, "--publish",
             self.publish, "--imagezmq", self.imagezmq, "--db", str(self.db), *web, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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


def wait_for(cond: callable, timeout: float = 30.0, what: str = "condition", show: callable = None):
    """``cond()``'s first truthy value, polled; fails naming ``what`` (and ``show()``) at the timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f": {show()}" if show else ""))
