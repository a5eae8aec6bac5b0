"""Defect masks on real photos: the expert's thresholded map alone vs SAM prompted by it.

    python -m benchmarks.sam_masks --bundle runs/mtd/q2/bundle --dataset ../shared/data/mtd/magnetic_tile \\
        [--sam-type vit_b --sam-size 512] [--every 4] [--out runs/mtd/sam]

The bundle must hold a calibrated expert; a SAM with random weights in the official layout is
added to a copy of it. With random SAM weights this measures the plumbing (prompts, ROI crops,
mapping back), not SAM's quality: real numbers need an official checkpoint (``--checkpoint``).
Pixel F1 and IoU are over all pixels of the defective test images (every ``--every``-th).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from lineguard.calibration.dataset import test_samples
from lineguard.calibration.masks import compare_masks
from lineguard.export.sam.checkpoint import build_sam, parse_arch
from lineguard.export.sam.export import export_sam
from lineguard.runtime.bundle import Bundle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--checkpoint", help="a SAM state dict (default: random weights of --sam-type)")
    ap.add_argument("--sam-type", default="vit_b")
    ap.add_argument("--sam-size", type=int, default=512)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--out", default="runs/mtd/sam")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(a.checkpoint) if a.checkpoint else Path(tmp) / "sam.pth"
        if not a.checkpoint:
            torch.manual_seed(0)
            torch.save(build_sam(parse_arch(a.sam_type), 1024).state_dict(), ckpt)
        bdir = Path(tmp) / "bundle"
        shutil.copytree(a.bundle, bdir)
        export_sam(ckpt, a.sam_type, bdir, image_size=a.sam_size)
        masks = compare_masks(Bundle.load(bdir), test_samples(a.dataset)[:: a.every], ("expert", "sam_roi", "sam_frame"))
    res = {
        "date": time.strftime("%Y-%m-%d"), "dataset": a.dataset, "images": masks["images"],
        "sam": {"type": a.sam_type, "encoder_size": a.sam_size,
                "weights": a.checkpoint or "random (official layout): plumbing, not quality"},
        "masks": masks["arms"],
    }
    (out / "sam_masks.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
