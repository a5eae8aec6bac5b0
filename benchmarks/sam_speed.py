"""SAM encoder and decoder latency: PyTorch eager vs ONNX Runtime fp32 / int8 / fp16, one run.

    python -m benchmarks.sam_speed [--types vit_b,tiny] [--sizes 1024,512] [--repeats 3] [--out runs/bench]

Random weights in the official layout (vit_b-shaped; "tiny" is a 2-block, 64-wide encoder),
exported with `lineguard export sam` and quantized with `lineguard quantize --stage sam`, so the
gated variants are the ones timed. The encoder is timed per frame (one frame at the encoder's
size), the decoder per prompt (one box) on a precomputed embedding. Medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from segment_anything import SamPredictor

from lineguard.calibration.sam_variants import build_sam_variants
from lineguard.export.sam.checkpoint import build_sam, parse_arch
from lineguard.export.sam.export import export_sam, parity_cases
from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.stages.sam import SamStage

TYPES = {"vit_b": "vit_b", "tiny": "custom:64:2:2:1"}


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def bench_one(kind: str, size: int, repeats: int, tmp: Path) -> dict:
    torch.manual_seed(0)
    arch = parse_arch(TYPES[kind])
    ckpt = tmp / f"{kind}.pth"
    torch.save(build_sam(arch, 1024).state_dict(), ckpt)  # saved as released: 1024 px
    t0 = time.perf_counter()
    bdir = export_sam(ckpt, TYPES[kind], tmp / f"{kind}_{size}", image_size=size)
    export_s = time.perf_counter() - t0
    gates = build_sam_variants(bdir)
    bundle = Bundle.load(bdir)
    from lineguard.export.sam.checkpoint import load_sam

    sam, _ = load_sam(ckpt, arch, size)
    frame, prompts = parity_cases(size, size, seed=0)
    box = prompts[1]["box"]
    pred = SamPredictor(sam)
    rgb = frame[:, :, ::-1].copy()
    row: dict = {"model": kind, "encoder_size": size, "export_s": round(export_s, 1), "gates": gates}
    with torch.no_grad():
        row["torch_encoder_ms"] = median_ms(lambda: pred.set_image(rgb), repeats)
        row["torch_decoder_ms"] = median_ms(lambda: pred.predict(box=box, multimask_output=False), repeats * 5)
    for prec in bundle.stage("sam")["variants"]:
        stage = SamStage(bundle, prec, EngineOptions(device="cpu"))
        e = stage.encode(frame)
        row[f"ort_{prec}_encoder_ms"] = median_ms(lambda s=stage: s.encode(frame), repeats)
        row[f"ort_{prec}_decoder_ms"] = median_ms(lambda s=stage, e=e: s.segment(e, box=box), repeats * 5)
    base = row["torch_encoder_ms"]
    row["encoder_speedup_vs_torch"] = {k.removesuffix("_encoder_ms"): round(base / v, 2)
                                       for k, v in row.items() if k.endswith("_encoder_ms")}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="vit_b,tiny")
    ap.add_argument("--sizes", default="1024,512")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="runs/bench")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in a.types.split(","):
            for size in (int(s) for s in a.sizes.split(",")):
                rows.append(bench_one(kind, size, a.repeats, Path(tmp)))
                r = rows[-1]
                print(f"{kind} {size}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in r.items()
                                                      if k.endswith("_ms")), flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "torch_threads": torch.get_num_threads(), "rows": rows}
    (out / "sam_speed.json").write_text(json.dumps(report, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.5 * len(rows) * 4))
    labels, vals = [], []
    for r in rows:
        for k, v in r.items():
            if k.endswith("_encoder_ms"):
                labels.append(f"{r['model']} {r['encoder_size']} {k.removesuffix('_encoder_ms')}")
                vals.append(v)
    ax.barh(labels, vals, color=["#999" if "torch" in lab else "#37a" for lab in labels])
    ax.set_xscale("log")
    ax.set_xlabel("encoder ms per frame (median, log scale)")
    fig.tight_layout()
    fig.savefig(out / "sam_speed.png", dpi=110)
    print(json.dumps([{k: v for k, v in r.items() if k != "gates"} for r in rows], indent=1))


if __name__ == "__main__":
    main()
