"""Expert accuracy on an MVTec-layout category: fit on train/good, score test, image and pixel AUROC.

    python -m benchmarks.mtd_accuracy --dataset ../shared/data/mtd/magnetic_tile --out runs/mtd

Maps are compared with the masks at the image's own size (the map is resized up with bilinear
interpolation), so thin cracks are not lost by shrinking masks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from calibration.dataset import read_mask, test_samples
from calibration.metrics import auroc
from export.expert import export_patchcore
from export.patchcore.fit import PatchCoreConfig
from runtime.bundle import Bundle
from runtime.expert import Expert
from runtime.imageio import read_image


def evaluate(bundle: Bundle, category: Path, pixel_stride: int = 2) -> dict:
    expert = Expert(bundle)
    labels, scores, pix_labels, pix_scores = [], [], [], []
    t0 = time.perf_counter()
    for s in tqdm(test_samples(category), desc="evaluate", unit="img"):
        frame = read_image(s.path)
        r = expert([frame])[0]
        h, w = frame.shape[:2]
        amap = cv2.resize(r.anomaly_map, (w, h), interpolation=cv2.INTER_LINEAR)
        mask = read_mask(s, (h, w))
        labels.append(s.label)
        scores.append(r.score)
        # every pixel_stride-th pixel: the AUROC is the same to ~1e-3 and memory stays small
        pix_labels.append(mask[::pixel_stride, ::pixel_stride].ravel())
        pix_scores.append(amap[::pixel_stride, ::pixel_stride].ravel())
    seconds = time.perf_counter() - t0
    return {
        "images": len(labels),
        "defective": int(sum(labels)),
        "image_auroc": auroc(np.array(labels), np.array(scores)),
        "pixel_auroc": auroc(np.concatenate(pix_labels), np.concatenate(pix_scores)),
        "pixel_stride": pixel_stride,
        "seconds_per_image": seconds / len(labels),
    }


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
    res = evaluate(bundle, Path(a.dataset))
    res |= {"dataset": str(a.dataset), "fit_and_export_seconds": fit_s,
            "config": {k: v for k, v in vars(cfg).items()},
            "bank": {k: bundle.stage("expert")["options"][k] for k in ("bank_size", "bank_dim", "train_images")},
            "parity_map_pearson": bundle.stage("expert")["variants"]["fp32"]["parity"]["map_pearson"]}
    (out / "accuracy.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
