"""`lineguard results`: a subscriber that prints (and with ``--out`` saves) what a runtime publishes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import zmq

from lineguard.runtime.station.curve import curve_client


def run_results(connect: str, topics: list[str], out: str | None = None, count: int | None = None,
                timeout_s: float | None = None, as_json: bool = False, curve_keys: str | None = None) -> int:
    """`lineguard results`: print (and with ``out`` save) what a runtime publishes."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    if curve_keys:
        curve_client(sock, curve_keys)
    for t in topics:
        sock.setsockopt(zmq.SUBSCRIBE, t.encode())
    sock.connect(connect)
    folder = Path(out) if out else None
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
    n, deadline = 0, (time.monotonic() + timeout_s) if timeout_s else None
    try:
        while count is None or n < count:
            wait = 500 if deadline is None else max(0, int(1000 * (deadline - time.monotonic())))
            if not sock.poll(wait):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                continue
            parts = sock.recv_multipart()
            topic, body = parts[0].decode(), json.loads(parts[1])
            if folder:
                with open(folder / "results.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps({"topic": topic} | body) + "\n")
                if len(parts) > 2:
                    name = f"{body.get('seq')}_{body.get('camera')}_{body.get('frame_id')}"  # seq: ids may repeat
                    (folder / f"{name}_mask.png").write_bytes(parts[2])
            if as_json:
                print(json.dumps({"topic": topic} | body), flush=True)
            else:
                print(_line(topic, body), flush=True)
            n += 1
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


def _line(topic: str, b: dict[str, Any]) -> str:
    head = f"{topic:11s} {b.get('camera')}/{b.get('frame_id')}"
    if topic == "error":
        return f"{head}  {b.get('code')}: {b.get('reason')}"
    if topic == "explanation":
        e = b.get("explanation", {})
        return f"{head}  {e.get('text')!r}" + ("" if e.get("consistent", True) else f"  [inconsistent: {e.get('reason')}]")
    cells = ",".join(d["cell"] for d in b.get("defects", [])) or b.get("hottest", {}).get("cell", "")
    norm = b.get("score_norm")
    return (f"{head}  {b.get('verdict')}  score {b.get('score'):.3f}" + (f" ({norm:.2f})" if norm is not None else "")
            + (f"  masks at {cells}" if b.get("update") else ""))
