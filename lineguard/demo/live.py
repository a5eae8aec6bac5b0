"""``lineguard demo``: the default bundle (or ``--bundle``) served live. ``serve`` and ``camera``
run as real processes over loopback ZeroMQ; this process subscribes to the results, prints them
as they come, and scores them against the line's ground truth when the run ends."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from lineguard.demo.report import FrameResult, summarize, write_report
from lineguard.demo.truth import read_truth
from lineguard.runtime.bundle import Bundle
from lineguard.runtime.clients.bench import Served
from lineguard.runtime.errors import LineguardError
from lineguard.runtime.ports import free_ports

TOPICS = ("verdict", "explanation", "error")


def live_line(kind: str, r: FrameResult, truth: str) -> str | None:
    """What one message adds to the live view (None: nothing worth a line)."""
    head = f"frame {r.index:5d}  {truth:16s}"
    if kind == "error":
        return f"{head}  error: {r.error}"
    if kind == "verdict":
        return f"{head}  {r.verdict or 'no threshold':6s}  score {r.score:.3f}"
    if kind == "masks":
        return f"{'':29s}masks at {r.cell or '-'}" + (f", class {r.cls}" if r.cls else "")
    if kind == "explanation":
        return (f"{'':29s}explanation: {r.explanation!r}" + ("  [rule-written]" if r.source == "rules" else "")
                + ("" if r.consistent else "  [not grounded]"))
    return None


def _default_sigint() -> None:
    """The camera must end on our SIGINT even if this process was started with SIGINT ignored
    (a background job inherits that, and so would the camera)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Camera:
    """``lineguard camera`` sending the line video, as its own process."""

    def __init__(self, video: Path, ingest: str, fps: float, frames: int, loop: bool) -> None:
        cmd = [sys.executable, "-m", "lineguard", "camera", "--source", str(video), "--connect", ingest,
               "--fps", str(fps), "--name", "line", "--max-frames", str(frames)] + (["--loop"] if loop else [])
        # its own session: Ctrl-C reaches the demo only, which then stops the camera, then the server
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, preexec_fn=_default_sigint)

    def result(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # the camera ends its loop and reports what it sent
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise LineguardError("lineguard camera did not stop within 30 s after SIGINT: killed") from None
        lines = [x for x in out.splitlines() if x.startswith("{")]
        if not lines:
            raise LineguardError(f"lineguard camera failed: {(err.strip().splitlines() or ['no output'])[-1]}")
        return json.loads(lines[-1])


def web_address(http: str | None) -> str | None:
    """The demo's web view: the address asked for, or a free loopback port where it is taken."""
    if http is None:
        return None
    from lineguard.runtime.station.web.server import parse_http

    host, port = parse_http(http)
    try:
        with socket.socket() as s:
            s.bind((host, port))
        return f"{host}:{port}"
    except OSError:
        return f"127.0.0.1:{free_ports(1)[0]}"


def _hold(url: str | None, quiet: bool) -> None:
    """Keep the station up (its web view open) until Ctrl-C."""
    if not quiet:
        print(f"the line has run; the station stays up{f' at {url}' if url else ''} until Ctrl-C", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def run_live(bundle: Path, video: Path, out: Path, rate: float, duration: float | None, quiet: bool = False,
             explain_wait: float = 60.0, extra: dict[str, Any] | None = None,
             serve_args: list[str] | None = None, http: str | None = None, hold: bool = False) -> dict[str, Any]:
    truth = read_truth(video.with_name("line.csv"))
    n_video = len(truth)
    frames = max(1, int(round(rate * duration))) if duration else n_video
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "serve.log", "w")
    (out / "results.db").unlink(missing_ok=True)  # this run's rows only: the history page shows this run
    server = Served(str(bundle), ["--artifacts", str(out / "overlays"), "--keep-artifacts", "200",
                                  "--db", str(out / "results.db"), *(serve_args or [])],
                    stderr=log, new_session=True, http=web_address(http))
    url = server.ready.get("http")
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    for t in TOPICS:
        sub.setsockopt(zmq.SUBSCRIBE, t.encode())
    sub.connect(server.publish)
    time.sleep(0.5)  # PUB/SUB: the subscription must reach the server before the first frame
    stages = [k for k, v in server.ready.get("health", {}).items() if str(v).startswith("ok")]
    results: dict[str, FrameResult] = {}
    jsonl = open(out / "results.jsonl", "w")

    def take(parts: list[bytes]) -> None:
        """One published message: into results.jsonl, the frame's result and the live view."""
        now = time.time()
        topic, body = parts[0].decode(), json.loads(parts[1])
        jsonl.write(json.dumps({"topic": topic, "received": now} | body) + "\n")
        fid = body.get("frame_id") or ""
        if not fid.startswith("line-"):
            return
        r = results.setdefault(fid, FrameResult(int(fid.rsplit("-", 1)[1])))
        kind = r.update(topic, body, parts[2] if len(parts) > 2 else None, now)
        t = truth[r.index % n_video]
        text = live_line(kind, r, f"{t.part}/{t.defect}") if kind else None
        if text and not quiet:
            print(text, flush=True)

    camera = Camera(video, server.ingest, rate, frames, loop=frames > n_video)
    t0 = time.time()
    sent: dict[str, Any] = {}
    interrupted = False
    if not quiet:
        print(f"serving {bundle} ({', '.join(stages) or 'expert'}) at {rate:g} frames/s for {frames} frames; "
              "Ctrl-C stops", flush=True)
        if url:
            print(f"web view: {url}  (live line, history, bundle; --hold keeps it up after the run)", flush=True)
    try:
        deadline = None
        while True:
            if sub.poll(200):
                take(sub.recv_multipart())
            if deadline is None and camera.proc.poll() is not None:
                sent = camera.result()
                deadline = time.time() + explain_wait
            if deadline is not None:
                answered = sum(r.answered for r in results.values())
                waiting = [r for r in results.values() if r.waiting(explain="llm" in stages)]
                if (answered >= sent.get("sent", 0) and not waiting) or time.time() > deadline:
                    break
        if hold:
            _hold(url, quiet)
    except KeyboardInterrupt:
        interrupted = True
        if not quiet:
            print("\ninterrupted: stopping the camera and the server ...", flush=True)
    finally:
        try:
            try:
                if not sent:
                    sent = camera.result()
            finally:  # the server stops even when the camera would not
                # keep reading while the server drains: its last masks and explanations still count
                server.proc.terminate()
                end = time.time() + 60
                while server.proc.poll() is None and time.time() < end:
                    if sub.poll(100):
                        take(sub.recv_multipart())
                stats = server.stop(timeout=max(1.0, end - time.time()))
        except KeyboardInterrupt:  # a second Ctrl-C: stop now, and leave no process behind
            for p in (camera.proc, server.proc):
                p.kill()
            raise
        finally:
            sub.close()
            jsonl.close()
            log.close()
    wall = time.time() - t0
    info = json.loads((video.with_name("synth.json")).read_text())
    size = int(info["size"])
    hw = (int(info["video"]["height"]), int(info["video"]["width"]))
    summary = summarize(list(results.values()), truth, sent, stats, wall, interrupted, hw, size) | (extra or {})
    summary["bundle"] = str(bundle)
    write_report(out, summary, list(results.values()), truth, Bundle.load(bundle).thresholds.get("image"))
    return summary
