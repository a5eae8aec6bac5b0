"""The served station with all three stages: its memory (GPU and RSS) and its served verdicts/s."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .bundles import Built, Sizes
from .machine import device_memory_used_mb
from .providers import EP_NAMES


def station_memory(bundle: Path, data: Path, serve_args: list[str], dry: bool, log: Path) -> dict[str, Any]:
    """A station with all three stages, a few frames (half flagged) through expert, SAM and LLM, then
    its GPU memory (nvidia-smi: its own, else the device's growth) and peak RSS while it still runs.
    Its log goes to ``log``: a pipe nobody reads would stall a station that logs much (TensorRT does)."""
    import zmq

    from lineguard.runtime.clients.bench import Served, gpu_memory_mb, run_step
    from lineguard.runtime.clients.loadgen import image_pools

    before = device_memory_used_mb()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        served = Served(str(bundle), serve_args, stderr=f)
    health = served.ready.get("health") or {}
    want = EP_NAMES[serve_args[serve_args.index("--device") + 1]]
    if want not in str(health.get("expert")) or any(str(health.get(k)) != "ok" for k in ("sam", "llm")):
        served.stop()  # ONNX Runtime falls back to the CPU without a word: the station's health says where
        raise RuntimeError(f"the station did not come up with all three stages on {want}: {health}")
    ctx = zmq.Context()
    try:
        rep, _ = run_step(ctx, served.ingest, served.publish, image_pools(str(data)), rate=2.0, duration=3.0,
                          defect_rate=0.5, grace_s=120.0, seed=0, prefix="mem-", pid=served.proc.pid, explained=True)
        own = gpu_memory_mb(served.proc.pid)
        after = device_memory_used_mb()
    finally:
        served.stop()
        ctx.destroy(0)
    gpu = own if own is not None else (round(after - before, 1) if after is not None and before is not None else None)
    out = {"health": health, "serve_args": serve_args, "peak_rss_mb": rep["server_peak_rss_mb"],
           "gpu_memory_mb": gpu, "gpu_memory_source": "nvidia-smi, the station's pid" if own is not None else
           "nvidia-smi, the device's growth while it ran" if gpu is not None else None,
           "frames": rep["frames"], "flagged": rep["flagged"], "explained": rep["explained"],
           "masks_dropped": rep["masks_dropped"], "unaccounted": rep["unaccounted"]}
    if gpu is None:
        out["gpu_memory_skipped"] = "dry run: no GPU" if dry else "no nvidia-smi figure for the station"
    return out


def served_rate(b: Built, sizes: Sizes, serve_args: list[str], start: float, a: argparse.Namespace) -> dict[str, Any]:
    """``line_rate``'s sweep (``lineguard bench --sweep``) on the served bundle, all stages on ``serve_args``."""
    from ..line_rate import Stack, sweep

    stack = Stack(b.bundle, b.data, sizes.sam_arch, sizes.sam_sizes[0], b.sam_checkpoint, b.llm, serve_args)
    ns = argparse.Namespace(duration=a.duration, defect_rate=a.defect_rate, max_latency_ms=a.max_latency_ms,
                            precision="fp32", out=a.out / "served")
    out = sweep(stack, start, ns, [], "all_stages")
    if not out["max_sustainable_fps"]:
        first = out["steps"][0] if out["steps"] else {}
        raise RuntimeError(f"the station held no rate: the first, {first.get('offered_fps')} fps, failed "
                           f"(p99 {first.get('p99_ms')} ms; {a.out / 'served_all_stages'})")
    # the sweep climbs a fixed number of steps: where none failed, the maximum is above what it tried
    return out | {"limit_found": any(not st["pass"] for st in out["steps"]), "start_fps": start}
