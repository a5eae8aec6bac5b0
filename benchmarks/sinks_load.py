"""What the line outputs cost the verdict path: two stations on the same bundle, one with all three
sinks (MQTT to a local Mosquitto, OPC UA with a subscribed client, a webhook to a local receiver),
one without, loaded in alternating segments of one run (this machine's timing drifts by more than
the effect); then the fail-safe share past the station's capacity from ``bench --sweep``.

    python -m benchmarks.sinks_load [--bundle B] [--images DIR] [--rate 60] [--seconds 30]
                                    [--segments 6] [--deadline-ms 150] [--no-sweep] [--out runs/sinks_load]

The receivers run in a process of their own at nice 19 (on a line they are other machines).
Defaults: the demo's default bundle and its line's parts, 5 % defects. Writes ``sinks_load.json``
and ``sinks_load.png`` (latency distributions) to ``--out``.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import shutil
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from benchmarks.under_load import options, plot, pooled, resolve
from lineguard.runtime.clients.bench import Served, run_bench, run_step
from lineguard.runtime.clients.loadgen import image_pools
from lineguard.runtime.ports import free_ports


def receivers(mqtt_port: int, web_port: int, opcua_url: str, ready: Any, stop: Any, got: Any) -> None:
    """The line's side, at nice 19: an MQTT subscriber, a webhook receiver, an OPC UA client."""
    import os

    import asyncua
    import paho.mqtt.client as mqtt

    os.nice(19)
    counts = {"mqtt": 0, "webhook": 0, "opcua": 0}

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            counts["webhook"] += 1
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", web_port), Hook)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect = lambda cl, *_: cl.subscribe("bench/#", qos=1)
    c.on_message = lambda *_: counts.__setitem__("mqtt", counts["mqtt"] + 1)
    c.connect("127.0.0.1", mqtt_port)
    c.loop_start()

    async def opcua() -> None:
        class Handler:
            def datachange_notification(self, *_: Any) -> None:
                counts["opcua"] += 1

        async with asyncua.Client(opcua_url) as client:
            ns = await client.get_namespace_index("urn:lineguard:station")
            while not stop.is_set():  # the camera's object appears with its first result
                try:
                    node = await client.nodes.objects.get_child([f"{ns}:Line", f"{ns}:bench"])  # loadgen's camera
                    break
                except Exception:  # not yet
                    await asyncio.sleep(0.2)
            sub = await client.create_subscription(50, Handler())
            await sub.subscribe_data_change(await node.get_child(f"{ns}:FrameId"), queuesize=1000)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.2)
            got.update(counts)

    asyncio.run(opcua())
    c.loop_stop()
    httpd.shutdown()


def main() -> None:
    ap = options(__doc__, rate=60.0, segments=6, out="runs/sinks_load")
    ap.add_argument("--deadline-ms", type=float, default=150.0)
    ap.add_argument("--no-sweep", action="store_true", help="skip the fail-safe sweep past capacity")
    a = ap.parse_args()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    bundle, images, out = resolve(a)
    mq_port, web_port, ua_port = free_ports(3)
    conf = Path(tempfile.mkdtemp()) / "mosquitto.conf"
    conf.write_text(f"listener {mq_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    # the plant's broker, at nice 19: on a line it is another machine
    broker = subprocess.Popen(["nice", "-n", "19", mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    opcua_url = f"opc.tcp://127.0.0.1:{ua_port}/lineguard/"
    time.sleep(0.5)
    pools = image_pools(images, seed=0)
    plain = Served(str(bundle), [])
    sinks = Served(str(bundle), ["--mqtt", f"mqtt://127.0.0.1:{mq_port}/bench", "--opcua", opcua_url,
                                 "--webhook", f"http://127.0.0.1:{web_port}/hook"])
    ctx = zmq.Context()
    names = {"off": plain, "on": sinks}
    reps: dict[str, list] = {n: [] for n in names}
    lat: dict[str, list] = {n: [] for n in names}
    ready, stop, got = mp.Event(), mp.Event(), mp.Manager().dict()
    recv = mp.Process(target=receivers, args=(mq_port, web_port, opcua_url, ready, stop, got), daemon=True)
    seg = a.seconds / a.segments
    try:
        for s in names.values():  # warm-up, not recorded; the first result makes the OPC UA camera object
            run_step(ctx, s.ingest, s.publish, pools, a.rate, 3.0, a.defect_rate, 30.0, 99, "w-", s.proc.pid,
                     explained=True)
        recv.start()
        if not ready.wait(30):
            raise RuntimeError("the OPC UA client did not subscribe")
        for k in range(a.segments):
            for name, s in names.items():
                rep, samples = run_step(ctx, s.ingest, s.publish, pools, a.rate, seg, a.defect_rate, 30.0,
                                        10 * k, f"{name}{k}-", s.proc.pid, explained=True)
                reps[name].append(rep)
                lat[name] += [1e3 * (x.verdict_at - x.sent) for x in samples if x.verdict_at is not None]
                r = rep["verdict_latency_ms"]
                print(f"{k} sinks {name:3s} p50 {r['p50']} ms  p99 {r['p99']} ms  dropped {rep['dropped']}",
                      flush=True)
        time.sleep(2)
        health = sinks.health()
    finally:
        stop.set()
        recv.join(10)
        for s in names.values():
            s.stop()
        ctx.destroy(0)
    runs = {n: pooled(reps[n], lat[n]) for n in names}
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "bundle": str(bundle), "rate": a.rate,
           "seconds_per_condition": a.seconds, "segments": a.segments, "runs": runs,
           "p99_on_vs_off": round(runs["on"]["verdict_latency_ms"]["p99"] / runs["off"]["verdict_latency_ms"]["p99"], 3),
           "sinks": health.get("sinks"), "received": dict(got)}
    broker.kill()
    plot({f"sinks {k}": v for k, v in lat.items()}, out / "sinks_load.png",
         f"verdict latency at {a.rate:g} frames/s, line outputs off / on")
    if a.no_sweep:
        (out / "sinks_load.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
        print(json.dumps({"p99_on_vs_off": res["p99_on_vs_off"], "received": res["received"]}))
        return
    # past capacity: the share of frames whose decision was the fail-safe, step by step
    _, sweep = run_bench(str(bundle), images, a.rate, duration=10.0, defect_rate=a.defect_rate, sweep=True,
                         serve_args=["--deadline-ms", str(a.deadline_ms)], max_latency_ms=a.deadline_ms, max_steps=4)
    res["deadline_sweep"] = [{k: s[k] for k in ("offered_fps", "achieved_verdict_fps", "deadline_missed",
                                                 "deadline_missed_share", "dropped", "unaccounted", "pass")}
                             | {"p99_ms": s["verdict_latency_ms"]["p99"]} for s in sweep["steps"]]
    res["deadline_ms"] = a.deadline_ms
    (out / "sinks_load.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(json.dumps({"p99_on_vs_off": res["p99_on_vs_off"], "received": res["received"],
                      "deadline_sweep": res["deadline_sweep"]}, indent=1))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
