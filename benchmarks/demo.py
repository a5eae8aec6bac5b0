"""The demo on generated parts: data → PatchCore bundle → inspect, with overlays and a summary.

Needs no download and no checkpoint: the parts are generated, the backbone is random.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np

from calibration.metrics import auroc
from runtime.bundle import Bundle
from runtime.errors import BundleError, LineguardError
from runtime.inspect import format_table, inspect_files

from .synth import make_dataset


def run_demo(out: str | Path, seed: int = 0) -> int:
    out = Path(out)
    data = out / "data" / "tile"
    if not (data / "train" / "good").is_dir():
        print(f"generating parts into {data} ...", file=sys.stderr)
        make_dataset(out / "data", "tile", n_train=30, n_good=6, n_defect=6, size=256, seed=seed)
    bundle_dir = out / "bundle"
    try:
        bundle = Bundle.load(bundle_dir)
    except BundleError:
        try:
            from export.expert import export_patchcore
            from export.patchcore.fit import PatchCoreConfig
        except ImportError:
            raise LineguardError("the demo builds its bundle with the export extra: pip install 'lineguard[export]'") from None
        print(f"fitting PatchCore (resnet18, random weights) on {data}/train/good ...", file=sys.stderr)
        t0 = time.perf_counter()
        export_patchcore(data, bundle_dir, PatchCoreConfig(size=256, seed=seed), force=True)
        print(f"bundle written to {bundle_dir} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        bundle = Bundle.load(bundle_dir)
    tests = sorted((data / "test").glob("*/*.png"))
    results = inspect_files(bundle, tests, out / "overlays")
    print(format_table(results))
    labels = np.array([p.parent.name != "good" for p in tests])
    scores = np.array([r["score"] for r in results])
    hits = []
    for p, r in zip(tests, results):
        if p.parent.name == "good":
            continue
        mask = cv2.imread(str(data / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
        x0, y0, x1, y1 = r["hottest"]["box"]
        hits.append(bool(mask[y0:y1, x0:x1].any()))
    print(f"\nimage AUROC {auroc(labels, scores):.3f} on {len(tests)} generated parts; "
          f"hottest region on the defect in {sum(hits)}/{len(hits)} defective parts")
    print(f"overlays: {out / 'overlays'}   bundle: {bundle_dir}")
    return 0
