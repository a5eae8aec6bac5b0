"""Where an INT4 decode step's time goes: ONNX Runtime's profiler over generated tokens.

    python -m benchmarks.llm_profile [--bundle runs/llm/qwen2-0.5b.bundle] [--precision int4]
                                     [--pp 128] [--tg 64] [--threads 2] [--out runs/llm/profile]

The bundle's decoder (``benchmarks.llm_speed`` builds the Qwen2-0.5B-shaped one) runs the same
step as the station (``CausalLM.step``) with profiling on; prefill is left out. Each weight
MatMul (MatMulNBits) is grouped by its role — the LM head, q/k/v, o, gate/up, down — with the
bytes it reads (4-bit weights, scales, zero points) and the bandwidth it reached; the other
kernels by op type; and the step's time outside kernels (ONNX Runtime between nodes) and
outside the session (Python). Against the copy bandwidth of ``llm_speed`` (same threads).
Writes ``<out>.json`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np


def node_bytes(onnx_path: Path) -> dict[str, int]:
    """Bytes of initializers each MatMulNBits node reads, by node name."""
    import onnx

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    size = {t.name: int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            for t in g.initializer}
    return {n.name: sum(size.get(i, 0) for i in n.input[1:]) for n in g.node if n.op_type == "MatMulNBits"}


def role(node: str) -> str:
    """``layers.13/gate_up_Q4`` → ``gate_up``; ``lm_head_Q4`` → ``lm_head``."""
    return re.sub(r"_Q4$", "", node.rsplit("/", 1)[-1])


def profile(path: Path, layout: dict[str, Any], pp: int, tg: int, threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    from lineguard.runtime.bundle.engine import EngineOptions
    from lineguard.runtime.stages.llm import CausalLM

    opts = EngineOptions(device="cpu", threads=threads, spinning=True)
    lm = CausalLM(path, layout, opts)
    so = ort.SessionOptions()  # the Engine's settings, with the profiler on
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    so.enable_profiling = True
    so.profile_file_prefix = str(Path("/tmp") / f"llm_profile_{int(time.time())}")
    so.log_severity_level = 3
    lm.engine.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ids = [int(x) for x in np.random.default_rng(0).integers(10, 300, pp)]
    logits, cache = lm.step(np.asarray([ids]), pp, lm.empty_cache())
    total, walls = pp, []
    for _ in range(tg):
        total += 1
        t0 = time.perf_counter()
        logits, cache = lm.step(np.asarray([[int(np.argmax(logits))]]), total, cache)
        walls.append(time.perf_counter() - t0)
    events = json.loads(Path(lm.engine.session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    start = runs[1]["ts"]  # the decode steps: every run after the prefill
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start]
    per_node: Counter[str] = Counter()
    per_op: Counter[str] = Counter()
    for e in kernels:
        per_node[e["name"].removesuffix("_kernel_time")] += e["dur"]
        per_op[e["args"]["op_name"]] += e["dur"]
    return {"steps": len(runs) - 1, "wall_us": 1e6 * statistics.median(walls),
            "run_us": statistics.median(e["dur"] for e in runs[1:]), "per_node_us": dict(per_node),
            "per_op_us": dict(per_op)}


def summarize(p: dict[str, Any], nbytes: dict[str, int], bw: float) -> dict[str, Any]:
    steps = p["steps"]
    groups: dict[str, dict[str, float]] = {}
    for node, b in nbytes.items():
        g = groups.setdefault(role(node), {"us": 0.0, "bytes": 0, "nodes": 0})
        g["us"] += p["per_node_us"].get(node, 0) / steps
        g["bytes"] += b
        g["nodes"] += 1
    kernel_us = sum(p["per_op_us"].values()) / steps
    rows = [{"part": f"MatMulNBits {k}", "us": round(v["us"], 1), "mb": round(v["bytes"] / 1e6, 2),
             "gb_s": round(v["bytes"] / v["us"] / 1e3, 1) if v["us"] else None,
             "share_of_time": round(v["us"] / p["wall_us"], 3)} for k, v in groups.items()]
    rows += [{"part": op, "us": round(us / steps, 1), "share_of_time": round(us / steps / p["wall_us"], 3)}
             for op, us in p["per_op_us"].items() if op != "MatMulNBits"]
    rows += [{"part": "ONNX Runtime between kernels", "us": round(p["run_us"] - kernel_us, 1),
              "share_of_time": round((p["run_us"] - kernel_us) / p["wall_us"], 3)},
             {"part": "Python around the session", "us": round(p["wall_us"] - p["run_us"], 1),
              "share_of_time": round((p["wall_us"] - p["run_us"]) / p["wall_us"], 3)}]
    rows.sort(key=lambda r: -r["us"])
    total_bytes = sum(nbytes.values())
    return {"wall_us_per_token": round(p["wall_us"], 1), "tok_s": round(1e6 / p["wall_us"], 1),
            "weight_mb_per_token": round(total_bytes / 1e6, 1), "copy_bandwidth_gb_s": round(bw / 1e9, 1),
            "share_of_bandwidth_limit": round(total_bytes / (p["wall_us"] / 1e6) / bw, 3),
            "matmul_share_of_bandwidth": round(total_bytes / (sum(g["us"] for g in groups.values()) / 1e6) / bw, 3),
            "rows": rows}


def plot(rep: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rep["rows"] if r["share_of_time"] >= 0.005][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.2))
    ax.barh([r["part"] for r in rows], [r["us"] for r in rows],
            color=["#27c" if r["part"].startswith("MatMulNBits") else "#888" for r in rows])
    for i, r in enumerate(rows):
        ax.text(r["us"], i, f" {r['us']:.0f} µs" + (f", {r['gb_s']} GB/s" if r.get("gb_s") else ""), va="center",
                fontsize=8)
    ax.set_xlabel("µs per generated token")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("runs/llm/qwen2-0.5b.bundle"),
                    help="a bundle with an llm stage (benchmarks.llm_speed builds this one)")
    ap.add_argument("--precision", default="int4")
    ap.add_argument("--pp", type=int, default=128, help="prompt tokens")
    ap.add_argument("--tg", type=int, default=64, help="generated tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/llm/profile"))
    a = ap.parse_args()

    from lineguard.runtime.bundle import Bundle

    from .llm_speed import copy_bandwidth

    b = Bundle.load(a.bundle, verify=False)
    path = b.variant_path("llm", a.precision)
    bw = copy_bandwidth(a.threads)
    rep = summarize(profile(path, b.stage("llm")["options"], a.pp, a.tg, a.threads), node_bytes(path), bw)
    rep = {"date": time.strftime("%Y-%m-%d %H:%M"), "graph": str(path), "pp": a.pp, "tg": a.tg,
           "threads": a.threads} | rep
    a.out.parent.mkdir(parents=True, exist_ok=True)
    js, png = a.out.with_name(a.out.name + ".json"), a.out.with_name(a.out.name + ".png")
    js.write_text(json.dumps(rep, indent=2) + "\n")
    plot(rep, png, f"{path.name}: a generated token, {a.threads} threads ({rep['date']}; profiler on)")
    print(f"{rep['tok_s']} tok/s with the profiler on; {100 * rep['share_of_bandwidth_limit']:.0f} % of the "
          f"bandwidth limit ({rep['copy_bandwidth_gb_s']} GB/s copy); the weight MatMuls alone at "
          f"{100 * rep['matmul_share_of_bandwidth']:.0f} %")
    print("| part | µs per token | share of the token | MB read | GB/s |")
    print("|---|---:|---:|---:|---:|")
    for r in rep["rows"]:
        print(f"| {r['part']} | {r['us']:.0f} | {100 * r['share_of_time']:.1f} % | {r.get('mb', '')} | {r.get('gb_s') or ''} |")
    print(f"wrote {js} and {png}")


if __name__ == "__main__":
    main()
