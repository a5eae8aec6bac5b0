"""The demo on generated parts: data → PatchCore bundle → calibration → INT8 → inspect, with overlays.

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
        from calibration.calibrate import calibrate
        from calibration.variants import build_variants

        print("calibrating: Myriad's rule, highest normal score over 3 folds ...", file=sys.stderr)
        calibrate(bundle_dir, normal=str(data), progress=False)
        print("quantizing to INT8, gated against fp32 on the test parts ...", file=sys.stderr)
        summary = build_variants(bundle_dir, str(data), str(data), ("int8",), progress=False)
        last = summary["int8"]["tries"][-1]["gate"]
        print(f"int8 {'written' if summary['int8']['written'] else 'rejected'}: {last['reason']} "
              f"({last['speedup']}x fp32 frames/s)", file=sys.stderr)
        bundle = Bundle.load(bundle_dir)
    tests = sorted((data / "test").glob("*/*.png"))
    precision = "int8" if "int8" in bundle.stage("expert")["variants"] else "fp32"
    results = inspect_files(bundle, tests, out / "overlays", precision)
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
    flagged = [r["verdict"] == "defect" for r in results]
    print(f"verdicts ({precision}, threshold {bundle.thresholds['image']:.3f}): "
          f"{sum(f and y for f, y in zip(flagged, labels))}/{int(labels.sum())} defective parts flagged, "
          f"{sum(f and not y for f, y in zip(flagged, labels))}/{int((~labels).sum())} good parts flagged")
    print(f"overlays: {out / 'overlays'}   bundle: {bundle_dir}")
    return 0
