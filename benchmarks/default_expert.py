"""The default (self-supervised, trained-here) expert on MVTec-layout categories: train on
train/good, import through `export expert --kind onnx`, score test: image and pixel AUROC.

    python -m benchmarks.default_expert --dataset runs/synth/tile --out runs/default_expert/tile
    python -m benchmarks.default_expert --dataset ../shared/data/mtd/magnetic_tile --out runs/default_expert/mtd

Metrics come from `calibration.evaluate` (what `lineguard evaluate` reports). One run; training
is seeded, but CPU kernels make it not bit-exact across machines.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lineguard.calibration.dataset import load_labelled
from lineguard.calibration.evaluate import evaluate_bundle
from lineguard.export.onnx_import import import_onnx_expert
from lineguard.runtime.bundle import Bundle
from lineguard.train.expert import ExpertTrainConfig, train_expert


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="MVTec-layout category folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--norm", default="batch")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    cfg = ExpertTrainConfig(size=a.size, steps=a.steps, norm=a.norm, seed=a.seed)
    t0 = time.perf_counter()
    info = train_expert(Path(a.dataset), out / "expert.onnx", cfg)
    train_s = time.perf_counter() - t0
    import_onnx_expert(out / "expert.onnx", out / "bundle", force=True)
    res = evaluate_bundle(Bundle.load(out / "bundle"), load_labelled(a.dataset))
    res |= {"dataset": str(a.dataset), "train_seconds": round(train_s, 1), "training": info["training"],
            "config": info["config"], "map_pearson": info["parity"]["map_pearson"]}
    (out / "result.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    m = res.get("metrics", res)
    print(json.dumps({k: m.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")} |
                     {"train_seconds": res["train_seconds"]}))


if __name__ == "__main__":
    main()
