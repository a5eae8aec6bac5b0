"""The default recipe on another product: expert trained on its train/good, SAM trained on its
defects with the expert prompting it, the default explainer (trained on generated parts) as is.

    python -m benchmarks.default_bundle --dataset ../shared/data/mtd/magnetic_tile --out runs/default_bundle/mtd

Reports image and pixel AUROC (``calibration.evaluate``), mask IoU of SAM prompted by the
expert vs the expert's own thresholded map on held-out defect images (``adapt sam``'s
measure), DDQA accuracies and the explanations' grounding rate (``ddqa eval``, on the
held-out images). Calibration is Myriad's rule on train/good (the images the expert trained on:
a real station would hold some back). One seeded run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from lineguard.calibration.calibrate import calibrate
from lineguard.calibration.classes import fit_classes
from lineguard.calibration.dataset import load_labelled
from lineguard.calibration.evaluate import evaluate_bundle
from lineguard.ddqa.build import build as build_questions
from lineguard.ddqa.evaluate import evaluate as ddqa_eval
from lineguard.demo.build import EXPLAINER_PROMPT, DefaultConfig, build_default
from lineguard.demo.dataset import link_file
from lineguard.export.llm.export import export_llm
from lineguard.export.onnx_import import import_onnx_expert
from lineguard.runtime.bundle import Bundle, BundleWriter
from lineguard.runtime.imageio import list_images
from lineguard.train.adapt import adapt_sam, split_defects
from lineguard.train.expert import ExpertTrainConfig, train_expert
from lineguard.train.sam import SamAdaptConfig

HOLDOUT = 0.25
MTD_SHOTS = 5  # labelled images per type for the classifier, as a station would label them


def holdout_view(d: Path, out: Path, seed: int) -> Path:
    """test/good and the defect images SAM never trained on (``adapt sam``'s split), linked into an
    MVTec-layout folder for `ddqa`."""
    shutil.rmtree(out, ignore_errors=True)
    held, _ = split_defects(d, HOLDOUT, seed)
    files = [(p, p.relative_to(d)) for p in list_images(d / "test" / "good")]
    for s in held:
        files += [(s.path, s.path.relative_to(d)), (s.mask_path, s.mask_path.relative_to(d))]
    for src, rel in files:
        link_file(src, out / rel)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="MVTec-layout category folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--explainer", help="explainer checkpoint folder (default: the default build's)")
    a = ap.parse_args()
    d, out, cfg = Path(a.dataset), Path(a.out), DefaultConfig()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    onnx = out / "expert.onnx"
    if not onnx.with_suffix(".json").is_file():
        train_expert(d, onnx, ExpertTrainConfig(size=cfg.size, steps=cfg.expert_steps, seed=cfg.seed))
    b = out / "bundle"
    shutil.rmtree(b, ignore_errors=True)
    import_onnx_expert(onnx, b, product=d.name.replace("_", " "))
    calibrate(b, normal=str(d / "train" / "good"), rule="myriad")
    fit_classes(b, d, shots=MTD_SHOTS, seed=cfg.seed)  # the rest are held out for DC
    expert = evaluate_bundle(Bundle.load(b), load_labelled(d))
    sam = adapt_sam(b, d, out / "sam.pth", SamAdaptConfig(steps=cfg.sam_steps, lr=cfg.sam_lr, train_encoder=True,
                                                          mask_prompt=True, seed=cfg.seed),
                    model_type=cfg.sam_arch, image_size=cfg.sam_size, scratch=True, holdout=HOLDOUT)
    explainer = Path(a.explainer) if a.explainer else build_default().parent / "explainer"
    export_llm(explainer, b, ("int4",))
    bundle = Bundle.load(b)
    with BundleWriter(bundle.root, base=bundle) as w:
        w.manifest["stages"]["llm"]["prompt"] = EXPLAINER_PROMPT
    held = holdout_view(d, out / "holdout", cfg.seed)
    build_questions(held, out / "ddqa.jsonl", seed=cfg.seed, product=d.name.replace("_", " "))
    qa = ddqa_eval(b, out / "ddqa.jsonl")
    res = {"date": time.strftime("%Y-%m-%d"), "dataset": str(d), "seconds": round(time.perf_counter() - t0, 1),
           "expert": {k: expert.get("metrics", expert).get(k) for k in ("image_auroc", "pixel_auroc", "aupro")},
           "masks_holdout": sam.get("holdout"), "sam_training": {k: sam[k] for k in ("steps", "seconds", "images")},
           "ddqa": {k: qa[k] for k in qa if k not in ("answers", "problems")}}
    (out / "result.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(json.dumps(res, indent=2, default=float))


if __name__ == "__main__":
    main()
