"""The station's own ceiling: everything but the model, through the real `serve`.

    python -m benchmarks.station_ceiling [--start 100] [--seconds 5] [--out runs/station_ceiling]

The expert is a trivial ONNX graph (score: the frame's mean brightness, map: a constant 32×32), so
what is measured is the station itself: ingest, decode, the expert queue, the verdict, the store,
publishing. Three frame kinds — 256×256 BGR raw, 1-MP (1000×1000) mono raw, 1-MP BGR JPEG (q90) —
each with and without the store (``--db``), in one run: ``bench --sweep`` from ``--start`` frames/s
(×1.5 a step, p99 ≤ 100 ms, no drops, then narrowed down to 5 %) for the maximum sustainable rate,
then one step at half the kind's goal rate (1,000 frames/s for 256×256, 300 for 1-MP mono; half
the measured maximum for JPEG, which has none) for the p99 and the per-frame cost by step (the
station's own timestamps). No frame is flagged
(threshold above any mean), so no mask or explanation work is in it. Writes ``station_ceiling.json``
and ``station_ceiling.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from lineguard.runtime.clients.bench import run_bench

KINDS = {  # name: (height, width, channels, jpeg quality, the goal rate: frames/s, issue 23)
    "256x256 BGR raw": (256, 256, 3, None, 1000.0),
    "1 MP mono raw": (1000, 1000, 1, None, 300.0),
    "1 MP BGR JPEG": (1000, 1000, 3, 90, None),
}


def trivial_expert(path: Path, h: int, w: int, c: int) -> Path:
    """uint8 [N,h,w,c] → score = mean / 255 [N], anomaly_map = zeros [N,1,32,32]."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Div", ["m", "k255"], ["score"]),
        helper.make_node("Shape", ["image"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["n"]),
        helper.make_node("Concat", ["n", "map_hw"], ["map_shape"], axis=0),
        helper.make_node("Expand", ["map0", "map_shape"], ["anomaly_map"]),
    ]
    inits = [helper.make_tensor("k255", TensorProto.FLOAT, [], [255.0]),
             helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
             helper.make_tensor("one", TensorProto.INT64, [1], [1]),
             helper.make_tensor("map_hw", TensorProto.INT64, [3], [1, 32, 32]),
             helper.make_tensor("map0", TensorProto.FLOAT, [1, 1, 32, 32], np.zeros(32 * 32, np.float32))]
    graph = helper.make_graph(nodes, "trivial", [helper.make_tensor_value_info("image", TensorProto.UINT8,
                                                                                ["N", h, w, c])],
                              [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, 32, 32]),
                               helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def bundle_for(root: Path, h: int, w: int, c: int, images: Path) -> Path:
    from lineguard.calibration.calibrate import calibrate
    from lineguard.export.onnx_import import import_onnx_expert

    out = root / f"bundle_{h}x{w}x{c}"
    if not out.exists():
        graph = trivial_expert(root / f"trivial_{h}x{w}x{c}.onnx", h, w, c)
        import_onnx_expert(graph, out, product="ceiling", color="GRAY" if c == 1 else "BGR")
        calibrate(out, str(images), threshold=1.01, progress=False)  # above any mean: nothing is flagged
    return out


def frames(root: Path, h: int, w: int, c: int, n: int = 16) -> Path:
    d = root / f"frames_{h}x{w}x{c}"
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):  # smooth noise, so a JPEG is the size a camera's is, not a noise-sized one
        small = rng.integers(0, 256, (h // 16, w // 16, c), dtype=np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(d / f"{i:02d}.png"), img)
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", type=float, default=100.0, help="the sweep's first rate, frames/s")
    ap.add_argument("--seconds", type=float, default=5.0, help="load per sweep step")
    ap.add_argument("--max-latency-ms", type=float, default=100.0)
    ap.add_argument("--kinds", default="256,mono,JPEG", help="which frame kinds (words of their names)")
    ap.add_argument("--out", default="runs/station_ceiling")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind, (h, w, c, jpeg, goal) in KINDS.items():
        if not any(k in kind for k in a.kinds.split(",")):
            continue
        images = frames(out, h, w, c)
        bundle = bundle_for(out, h, w, c, images)
        for store in (False, True):
            serve = ["--db", str(out / f"store_{h}x{w}x{c}.db")] if store else []
            _, sweep = run_bench(str(bundle), str(images), a.start, duration=a.seconds, defect_rate=0.0,
                                 max_latency_ms=a.max_latency_ms, sweep=True, serve_args=serve, jpeg=jpeg,
                                 max_steps=10)
            top = sweep["max_sustainable_fps"] or 0.0
            _, half = run_bench(str(bundle), str(images), max(1.0, (goal or top) / 2), duration=2 * a.seconds,
                                defect_rate=0.0, max_latency_ms=a.max_latency_ms, serve_args=serve, jpeg=jpeg)
            r = half["result"]
            rows.append({"frames": kind, "store": store, "max_sustainable_fps": top, "goal_fps": goal,
                         "at_half": {"offered_fps": r["offered_fps"], "verdict_latency_ms": r["verdict_latency_ms"],
                                     "stage_ms_mean": r["stage_ms_mean"], "server_cpu_percent": r["server_cpu_percent"],
                                     "loadgen_cpu_percent": r["loadgen_cpu_percent"], "unaccounted": r["unaccounted"]},
                         "steps": [{k: s[k] for k in ("offered_fps", "achieved_verdict_fps", "dropped", "unaccounted",
                                                      "pass")} | {"p99_ms": s["verdict_latency_ms"]["p99"]}
                                   for s in sweep["steps"]]})
            print(f"{kind:16s} store {'on ' if store else 'off'}  max {top} fps  at {r['offered_fps']}/s: p99 "
                  f"{r['verdict_latency_ms']['p99']} ms  stages {r['stage_ms_mean']}", flush=True)
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "max_latency_ms": a.max_latency_ms, "rows": rows}
    (out / "station_ceiling.json").write_text(json.dumps(res, indent=2) + "\n")
    plot(rows, out / "station_ceiling.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{r['frames']}\n{'store' if r['store'] else 'no store'}" for r in rows]
    ax.bar(range(len(rows)), [r["max_sustainable_fps"] for r in rows], color=["C0" if r["store"] else "C1" for r in rows])
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("max sustainable verdicts/s")
    ax.set_title("the station's own ceiling (a trivial expert)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
