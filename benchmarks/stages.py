"""Stage micro-benchmarks in one table: each stage per precision, and the ZeroMQ transport cost.

    python -m benchmarks.stages BUNDLE [--images DIR] [--repeats 20] [--out runs/bench/stages]

Per stage, warmed up, medians of ``--repeats``: expert (batch 1) for each variant the bundle
has; SAM encoder (one frame) and decoder (one box prompt) where the bundle has SAM; LLM
prefill (64 tokens) and per-token decode where it has an LLM. Transport: a 1-megapixel raw
frame (mono 1 MiB, and BGR 3 MiB) through PUSH → PULL (encode, send, receive, parse) over tcp
loopback and ipc with ``copy=False``: per frame when frames stream back to back (the cost to a
line, as a share of a 60-fps frame budget) and one by one (latency), against an in-process
hand-over of the same array.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.station.protocol import encode_frame, parse_frame


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return round(1e3 * statistics.median(ts), 3)


def transport(repeats: int, shape: tuple[int, ...], addr: str) -> dict[str, Any]:
    """One raw frame: PUSH → PULL (encode, send, receive, parse) vs an in-process hand-over."""
    frame = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    if addr.startswith("tcp"):
        pull.bind_to_random_port(addr)
    else:
        pull.bind(addr)
    push = ctx.socket(zmq.PUSH)
    push.connect(pull.last_endpoint.decode())
    time.sleep(0.2)

    def one_by_one() -> None:  # latency: send, then wait for it on the other side
        push.send_multipart(encode_frame("t", "c", image=frame), copy=False)
        parse_frame(pull.recv_multipart(copy=False))

    def streamed(n: int = 200) -> float:  # cost per frame when frames follow each other, as on a line
        def receive() -> None:
            for _ in range(n):
                parse_frame(pull.recv_multipart(copy=False))

        t = threading.Thread(target=receive)
        t0 = time.perf_counter()
        t.start()
        for _ in range(n):
            push.send_multipart(encode_frame("t", "c", image=frame), copy=False)
        t.join()
        return 1e3 * (time.perf_counter() - t0) / n

    sink: list[np.ndarray] = []

    def in_process() -> None:
        sink.append(frame)
        sink.pop()

    z = median_ms(one_by_one, repeats * 5)
    per_frame = round(statistics.median(streamed() for _ in range(3)), 3)
    local = median_ms(in_process, repeats * 5)
    push.close(0)
    pull.close(0)
    ctx.term()
    budget = 1e3 / 60
    return {"shape": list(shape), "mib": round(frame.nbytes / 2**20, 2), "transport": addr.split(":")[0],
            "latency_ms": z, "streamed_ms_per_frame": per_frame, "in_process_ms": local,
            "share_of_60fps_budget": round((per_frame - local) / budget, 4)}


def stage_rows(bundle: Bundle, frames: list[np.ndarray], repeats: int) -> list[dict[str, Any]]:
    from lineguard.runtime.stages.expert import Expert

    rows = []
    opts = EngineOptions(device="cpu", warmup=1)
    for prec in bundle.stage("expert")["variants"]:
        if prec == "trt":
            continue
        ex = Expert(bundle, prec, opts)
        rows.append({"stage": "expert (batch 1)", "precision": prec, "ms": median_ms(lambda ex=ex: ex(frames[:1]), repeats)})
    if bundle.has_stage("sam"):
        from lineguard.runtime.stages.sam import SamStage

        for prec in bundle.stage("sam")["variants"]:
            sam = SamStage(bundle, prec, opts)
            emb = sam.encode(frames[0])
            h, w = frames[0].shape[:2]
            box = np.array([w * 0.3, h * 0.3, w * 0.6, h * 0.6], np.float32)
            rows.append({"stage": "SAM encoder", "precision": prec,
                         "ms": median_ms(lambda s=sam: s.encode(frames[0]), max(3, repeats // 4))})
            rows.append({"stage": "SAM decoder (box)", "precision": prec,
                         "ms": median_ms(lambda s=sam, e=emb, b=box: s.segment(e, box=b), repeats)})
    if bundle.has_stage("llm"):
        from lineguard.runtime.stages.llm import CausalLM, Sampling

        st = bundle.stage("llm")
        for prec in st["variants"]:
            lm = CausalLM(bundle.variant_path("llm", prec), st["options"], EngineOptions(device="cpu"))
            ids = [int(x) for x in np.random.default_rng(0).integers(5, 300, 64)]
            rows.append({"stage": "LLM prefill (64 tokens)", "precision": prec,
                         "ms": median_ms(lambda lm=lm, x=ids: lm.step(np.asarray([x]), 64, lm.empty_cache()), repeats)})
            g = [lm.generate(ids, Sampling(max_new_tokens=32)) for _ in range(3)]
            rows.append({"stage": "LLM decode (per token)", "precision": prec,
                         "ms": round(1e3 / statistics.median([x.decode_tok_s for x in g]), 3)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--images", help="frames to use (default: generated)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/stages"))
    a = ap.parse_args()
    bundle = Bundle.load(a.bundle)
    if a.images:
        from lineguard.runtime.imageio import list_images, read_image

        frames = [read_image(p) for p in list_images(Path(a.images), recursive=True)[:4]]
    else:
        frames = [np.random.default_rng(i).integers(0, 255, (256, 256, 3), dtype=np.uint8) for i in range(4)]
    rows = stage_rows(bundle, frames, a.repeats)
    tr = [transport(a.repeats, shape, addr) for shape in ((1024, 1024), (1024, 1024, 3))
          for addr in ("tcp://127.0.0.1", f"ipc:///tmp/lineguard-bench-{time.time_ns()}")]
    report = {"date": time.strftime("%Y-%m-%d"), "bundle": a.bundle, "frame": list(frames[0].shape), "rows": rows,
              "transport_1mp": tr}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_name(a.out.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
    print("| stage | precision | median ms |\n|---|---|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['precision']} | {r['ms']} |")
    for t in tr:
        print(f"transport, 1-MP raw frame {t['shape']} ({t['mib']} MiB) over {t['transport']}: "
              f"{t['streamed_ms_per_frame']} ms per frame streamed ({100 * t['share_of_60fps_budget']:.1f}% of a 60-fps "
              f"frame budget), {t['latency_ms']} ms one by one; in-process {t['in_process_ms']} ms")


if __name__ == "__main__":
    main()
