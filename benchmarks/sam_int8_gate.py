"""The SAM INT8 gate with 8-bit and 7-bit weights, on whatever CPU runs it.

    python -m benchmarks.sam_int8_gate                              # this CPU
    qemu-x86_64 -cpu Haswell .venv/bin/python -m benchmarks.sam_int8_gate --label haswell   # AVX2, no VNNI

The test suite's tiny SAM (segment-anything's classes, ``custom:64:2:2:1``, random weights,
seed 0, 256 px) through ``build_sam_variants``: every INT8 mask against fp32's on the gate's
generated frame/prompt cases. Under qemu-user (Debian's ``qemu-user``) ONNX Runtime picks the
kernels of the emulated CPU, so a CPU without VNNI can be measured on one that has it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="native")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lineguard-sam-gate")
    a = ap.parse_args()
    from lineguard.calibration.sam_variants import build_sam_variants

    bundle = a.work / "bundle"
    if not (bundle / "manifest.json").is_file():  # built natively once: torch under emulation is slow
        import torch

        from lineguard.export.sam.checkpoint import build_sam, parse_arch
        from lineguard.export.sam.export import export_sam

        a.work.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(build_sam(parse_arch("custom:64:2:2:1"), 256).state_dict(), a.work / "sam.pth")
        export_sam(a.work / "sam.pth", "custom:64:2:2:1", bundle, image_size=256)
    for reduce_range in (False, True):
        b = a.work / f"{a.label}-{'7' if reduce_range else '8'}bit"
        shutil.rmtree(b, ignore_errors=True)
        shutil.copytree(bundle, b)
        g = build_sam_variants(b, ("int8",), reduce_range=reduce_range)["int8"]
        print(json.dumps({"cpu": a.label, "weight_bits": 7 if reduce_range else 8,
                          "mean_iou": round(g["mean_iou_vs_fp32"], 4), "min_iou": round(g["min_iou_vs_fp32"], 4),
                          "passed": g["passed"]}), flush=True)


if __name__ == "__main__":
    main()
