"""Expert accuracy on an MVTec-layout category: fit on train/good, score test, image and pixel AUROC.

    python -m benchmarks.mtd_accuracy --dataset ../shared/data/mtd/magnetic_tile --out runs/mtd

Metrics come from `calibration.evaluate` (what `lineguard evaluate` reports): pixel metrics at
each image's own size, so thin cracks are not lost by shrinking masks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lineguard.calibration.dataset import load_labelled
from lineguard.calibration.evaluate import evaluate_bundle
from lineguard.export.expert import export_patchcore
from lineguard.export.patchcore.fit import PatchCoreConfig
from lineguard.runtime.bundle import Bundle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="MVTec-layout category folder")
    ap.add_argument("--out", default="runs/mtd")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--weights")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--coreset", type=float, default=0.1)
    a = ap.parse_args()
    out = Path(a.out)
    cfg = PatchCoreConfig(backbone=a.backbone, weights=a.weights, size=a.size, coreset=a.coreset)
    t0 = time.perf_counter()
    export_patchcore(Path(a.dataset), out / "bundle", cfg, force=True)
    fit_s = time.perf_counter() - t0
    bundle = Bundle.load(out / "bundle")
    res = evaluate_bundle(bundle, load_labelled(a.dataset))
    res |= {"dataset": str(a.dataset), "fit_and_export_seconds": fit_s,
            "config": {k: v for k, v in vars(cfg).items()},
            "bank": {k: bundle.stage("expert")["options"][k] for k in ("bank_size", "bank_dim", "train_images")},
            "parity_map_pearson": bundle.stage("expert")["variants"]["fp32"]["parity"]["map_pearson"]}
    (out / "accuracy.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
