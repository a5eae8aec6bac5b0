"""A long run at a steady line rate: does the station grow, slow down or lose frames over time?

    python -m benchmarks.soak --rate R [--minutes 10] [--bundle DIR] [--images DIR] [--out runs/soak]

One `lineguard serve` with every stage of the bundle (default: the demo's) and its result store,
fed open loop at ``--rate`` (take 80 % of the bundle's `bench --sweep` maximum) for ``--minutes``
after a 30-s warm-up, as one `bench` step: every frame accounted for at the end. Beside the load,
every 5 s: the station's resident memory (VmRSS) and the store's size on disk (database + WAL).
Reported: RSS after the first minute (the warm-up's allocations done) and at the end, the growth
between them (goal ≤ 5 %), p99 send → verdict in the first and the last minute, the store's size,
drops, explanations. Writes ``soak.json`` and ``soak.png`` (RSS, store size and per-minute p99 over
time).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from lineguard.runtime.clients.bench import Served, run_step
from lineguard.runtime.clients.loadgen import image_pools

from .under_load import options, resolve

SAMPLE_S = 5.0


def rss_mb(pid: int) -> float:
    """Resident memory now (not the peak): what a leak grows."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def store_mb(db: Path) -> float:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 2**20


class Sampler(threading.Thread):
    """(seconds since start, RSS MB, store MB) every ``SAMPLE_S`` until stopped."""

    def __init__(self, pid: int, db: Path) -> None:
        super().__init__(daemon=True)
        self.pid, self.db, self.rows, self.stop = pid, db, [], threading.Event()
        self.t0 = time.time()

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            self.rows.append((round(time.time() - self.t0, 1), round(rss_mb(self.pid), 1),
                              round(store_mb(self.db), 2)))


def per_minute(samples: list, t0: float, minutes: int) -> list[dict]:
    """Each minute's frames (by send time): count, verdict p50/p99, drops."""
    out = []
    for m in range(minutes):
        lo, hi = t0 + 60 * m, t0 + 60 * (m + 1)
        got = [s for s in samples if lo <= s.sent < hi]
        lat = [1e3 * (s.verdict_at - s.sent) for s in got if s.verdict_at is not None]
        out.append({"minute": m + 1, "frames": len(got), "verdicts": len(lat),
                    "dropped": sum(s.error == "dropped" for s in got),
                    "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat else None,
                    "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat else None})
    return out


def main() -> None:
    ap = options(__doc__, rate=0.0, segments=1, out="runs/soak")
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds of unmeasured load first")
    a = ap.parse_args()
    if a.rate <= 0:
        raise SystemExit("--rate: give the line rate to hold (80 % of the bundle's bench --sweep maximum)")
    bundle, images, out = resolve(a)
    db = out / "store.db"
    for old in out.glob("store.db*"):
        old.unlink()
    pools = image_pools(images)
    log = open(out / "serve.log", "w")  # a file, not a pipe: ten minutes of log must not fill a pipe's buffer
    served = Served(str(bundle), ["--db", str(db)], stderr=log)
    pid = served.proc.pid
    ctx = zmq.Context()
    sampler = Sampler(pid, db)
    try:
        explains = str(served.ready.get("health", {}).get("llm", "")).startswith("ok")
        print(f"warm-up {a.warmup:.0f} s at {a.rate} fps", flush=True)
        run_step(ctx, served.ingest, served.publish, pools, a.rate, a.warmup, a.defect_rate, 60.0, 999, "w-", pid,
                 explained=explains)
        sampler.start()
        t0 = time.time()
        print(f"soak: {a.minutes} min at {a.rate} fps, all stages, store {db}", flush=True)
        rep, samples = run_step(ctx, served.ingest, served.publish, pools, a.rate, 60.0 * a.minutes, a.defect_rate,
                                120.0, 0, "s-", pid, explained=explains)
        sampler.stop.set()
        sampler.join()
        health = served.health()
    finally:
        sampler.stop.set()
        summary = served.stop()
        ctx.destroy(0)
        log.close()
    minutes = per_minute(samples, t0, a.minutes)
    rows = sampler.rows
    after_warmup = next((r for r in rows if r[0] >= 60.0), rows[0])  # the first sample past the first minute
    end = rows[-1]
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "bundle": str(bundle), "images": images, "rate_fps": a.rate,
           "minutes": a.minutes, "defect_rate": a.defect_rate, "stages": served.ready.get("health"),
           "rss_mb_after_first_minute": after_warmup[1], "rss_mb_end": end[1],
           "rss_growth_percent": round(100 * (end[1] - after_warmup[1]) / after_warmup[1], 2),
           "peak_rss_mb": rep["server_peak_rss_mb"], "store_mb_end": end[2],
           "p99_ms_first_minute": minutes[0]["p99_ms"], "p99_ms_last_minute": minutes[-1]["p99_ms"],
           "result": {k: rep[k] for k in ("frames", "verdicts", "dropped", "errors", "unaccounted", "flagged",
                                          "masks_dropped", "explained", "explanations_dropped",
                                          "explanations_pending", "verdict_latency_ms", "achieved_verdict_fps",
                                          "server_cpu_percent", "loadgen_cpu_percent")},
           "mean_batch": health.get("mean_batch"), "per_minute": minutes,
           "samples": [{"t_s": t, "rss_mb": r, "store_mb": s} for t, r, s in rows], "server_summary": summary}
    (out / "soak.json").write_text(json.dumps(res, indent=2) + "\n")
    plot(res, out / "soak.png")
    print(json.dumps({k: v for k, v in res.items() if k not in ("samples", "per_minute", "server_summary", "stages")},
                     indent=2))


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in res["samples"]]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(11, 3.2))
    a.plot(t, [s["rss_mb"] for s in res["samples"]])
    a.set_ylabel("station RSS, MB")
    b.plot(t, [s["store_mb"] for s in res["samples"]])
    b.set_ylabel("store on disk, MB")
    c.plot([m["minute"] for m in res["per_minute"]], [m["p99_ms"] for m in res["per_minute"]], "o-")
    c.set_ylabel("p99 send → verdict, ms")
    for ax in (a, b, c):
        ax.set_xlabel("minutes")
        ax.grid(alpha=0.3)
    fig.suptitle(f"soak: {res['rate_fps']} fps for {res['minutes']} min, all stages, store on")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
