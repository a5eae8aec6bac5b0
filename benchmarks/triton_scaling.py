"""The station's expert on Triton: one local station vs one station on a Triton server vs two stations
sharing that server, at the same offered rate, loaded in alternating segments of one run (this
machine's timing drifts by more than the effects).

    python -m benchmarks.triton_scaling [--bundle B] [--images DIR] [--rate 20] [--seconds 30]
                                        [--segments 3] [--out runs/triton_scaling]

Expert only (``--no-sam --no-explain``): Triton runs the expert; the rest of a station does not
change. The two stations share the rate (each ``rate/2``, their own camera). Triton is the CPU-only
server of the nvidia-pytriton wheel on the same two cores, so this measures what the hop costs, not
what a GPU pool gives. Reported per condition: verdicts/s, send → verdict p50/p99, the station's
expert time per batch, and Triton's own queue and compute time per request (its statistics API);
the difference is the hop (gRPC, serialisation, the Python backend). Writes ``triton_scaling.json``
and ``triton_scaling.png`` to ``--out``. Defaults: the demo's default bundle and its line's parts.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import psutil
import zmq

from benchmarks.under_load import options, plot, pooled, resolve
from lineguard.export.triton import export_triton
from lineguard.runtime.clients.bench import Served, run_step, triton_figures
from lineguard.runtime.clients.loadgen import image_pools
from lineguard.runtime.clients.tritonserver import TritonServer
from lineguard.runtime.ports import free_ports

STATION = ["--no-sam", "--no-explain"]


def load(ctx: zmq.Context, stations: list[Served], pools: tuple, rate: float, seconds: float, defect_rate: float,
         seed: int, name: str) -> list[tuple[dict, list]]:
    """Each station at ``rate / len(stations)``, at the same time (a thread each)."""
    out: list[Any] = [None] * len(stations)

    def one(i: int, s: Served) -> None:
        out[i] = run_step(ctx, s.ingest, s.publish, pools, rate / len(stations), seconds, defect_rate, 30.0, seed + i,
                          f"{name}{seed}-{i}-", s.proc.pid)

    threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate(stations)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main() -> None:
    a = options(__doc__, rate=20.0, segments=3, out="runs/triton_scaling").parse_args()
    bundle, images, out = resolve(a)
    repo = out / "repo"
    export_triton(bundle, repo, max_batch=8, force=True)
    g, h, m = free_ports(3)
    with open(out / "tritonserver.log", "w") as log:
        triton = TritonServer(repo, g, h, m, log=log, work=out / "work")
    triton.wait_ready()
    models = ["--models", f"triton://127.0.0.1:{g}"]
    local, remote_a, remote_b = Served(str(bundle), STATION), Served(str(bundle), STATION + models), \
        Served(str(bundle), STATION + models)
    conditions = {"local": [local], "triton_one_station": [remote_a], "triton_two_stations": [remote_a, remote_b]}
    pools = image_pools(images, seed=0)
    ctx = zmq.Context()
    reps: dict[str, list] = {c: [] for c in conditions}
    lat: dict[str, list] = {c: [] for c in conditions}
    triton_stats: dict[str, list] = {c: [] for c in conditions}
    triton_cpu: dict[str, list] = {c: [] for c in conditions}
    seg = a.seconds / a.segments
    tprocs = [psutil.Process(triton.proc.pid), *psutil.Process(triton.proc.pid).children(recursive=True)]

    def triton_cpu_s() -> float:  # the server and its Python-backend stubs (processes of their own)
        return sum(sum(p.cpu_times()[:2]) for p in tprocs)

    try:
        for s in (local, remote_a, remote_b):  # warm-up, not recorded
            run_step(ctx, s.ingest, s.publish, pools, a.rate / 2, 3.0, a.defect_rate, 30.0, 99, "w-", s.proc.pid)
        for k in range(a.segments):
            for name, stations in conditions.items():
                before = remote_a.health()["models"]["triton"]
                cpu0, t0 = triton_cpu_s(), time.monotonic()
                for rep, samples in load(ctx, stations, pools, a.rate, seg, a.defect_rate, 10 * k, name):
                    reps[name].append(rep)
                    lat[name] += [1e3 * (x.verdict_at - x.sent) for x in samples if x.verdict_at is not None]
                triton_cpu[name].append(100 * (triton_cpu_s() - cpu0) / (time.monotonic() - t0))
                triton_stats[name].append(triton_figures(before, remote_a.health()["models"]["triton"]))
                r = reps[name][-1]["verdict_latency_ms"]
                print(f"{k} {name:20s} p50 {r['p50']} ms  p99 {r['p99']} ms", flush=True)
    finally:
        for s in (local, remote_a, remote_b):
            s.stop()
        triton.stop()
        ctx.destroy(0)
    runs = {}
    for name in conditions:
        r = pooled(reps[name], lat[name])
        t = [next(iter(x.values())) for x in triton_stats[name] if x]
        n = sum(x["requests"] for x in t)
        expert = [x["stage_ms_mean"].get("expert_compute") for x in reps[name] if x["stage_ms_mean"].get("expert_compute")]
        r |= {"verdicts_per_s": round(sum(x["achieved_verdict_fps"] for x in reps[name]) / a.segments, 2),
              "station_expert_ms": round(float(np.mean(expert)), 2) if expert else None,
              "triton_cpu_percent": round(float(np.mean(triton_cpu[name])), 1)}
        if n and name != "local":
            r |= {"triton_requests": n, "triton_mean_batch": round(sum(x["frames"] for x in t) / sum(
                      x["frames"] / x["mean_batch"] for x in t if x["mean_batch"]), 2),
                  "triton_queue_ms": round(sum(x["queue_ms_mean"] * x["requests"] for x in t) / n, 2),
                  "triton_compute_ms": round(sum(x["compute_ms_mean"] * x["requests"] for x in t) / n, 2)}
            r["hop_ms"] = round(r["station_expert_ms"] - r["triton_queue_ms"] - r["triton_compute_ms"], 2)
        runs[name] = r
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "bundle": str(bundle), "rate": a.rate,
           "seconds_per_condition": a.seconds, "segments": a.segments, "runs": runs}
    (out / "triton_scaling.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    plot(lat, out / "triton_scaling.png", f"the expert local or on Triton, {a.rate:g} frames/s offered")
    print(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
