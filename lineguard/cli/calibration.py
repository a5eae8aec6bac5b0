"""``lineguard calibrate | quantize | evaluate``: thresholds, classes, gated variants, metrics (the export extra)."""

from __future__ import annotations

import argparse

from lineguard.cli.options import device_args, needs, positive, write_report
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.errors import LineguardError


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("calibrate", help="thresholds and score normalisation into a bundle (with a report)")
    c.add_argument("bundle")
    c.add_argument("--normal", help="folder of normal images (or an MVTec category: its train/good)")
    c.add_argument("--dataset", help="MVTec-layout category with defect images and masks (for the f1 rule)")
    c.add_argument("--rule", default="auto", choices=["auto", "myriad", "f1", "manual", "model"],
                   help="auto: manual if --threshold, f1 if --dataset, else myriad (k-fold max normal score); "
                        "model: the threshold the graph applies itself (anomalib's pred_label)")
    c.add_argument("--threshold", type=float, help="image threshold on the raw score (rule manual)")
    c.add_argument("--pixel-threshold", type=float, help="anomaly-map threshold for the defect region")
    c.add_argument("--folds", type=int, default=3, help="k for the myriad rule")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--report", help="also write calibration.json/.png here")
    c.add_argument("--classes", action="store_true",
                   help="also fit the defect classifier from --dataset's defect folders and masks")
    c.add_argument("--shots", type=positive(int), help="labelled images per defect type for --classes (default: all)")
    c.add_argument("--classes-only", action="store_true",
                   help="fit the defect classifier from --dataset and leave the thresholds as they are")
    c.set_defaults(run=cmd_calibrate)

    q = sub.add_parser("quantize", help="INT8/FP16/TensorRT variants of the expert, each through an accuracy gate")
    q.add_argument("bundle")
    q.add_argument("--stage", choices=["expert", "sam"], default="expert", help="which stage to quantize")
    q.add_argument("--normal", help="normal images for calibration (folder or MVTec category; expert only)")
    q.add_argument("--dataset", help="MVTec-layout category to gate on (else: held-out normal images)")
    q.add_argument("--precision", help="comma list of int8, fp16, trt (default: int8,fp16,trt; sam: int8,fp16)")
    q.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"],
                   help="how int8 activation ranges are calibrated")
    q.add_argument("--activations", default="uint8", choices=["uint8", "int8"],
                   help="uint8 runs fastest on x86 CPUs (VNNI); int8 for symmetric targets")
    q.add_argument("--max-drop", type=float, default=0.5, help="largest allowed AUROC drop in points")
    q.add_argument("--calib-images", type=positive(int), default=32)
    q.add_argument("--no-tail", action="store_true", help="never quantize the memory-bank tail")
    q.add_argument("--every", type=positive(int), default=1, help="gate on every n-th test image only")
    q.set_defaults(run=cmd_quantize)

    v = sub.add_parser("evaluate", help="metrics of each variant on an MVTec-layout category")
    v.add_argument("bundle")
    v.add_argument("--dataset", required=True, help="MVTec-layout category folder")
    v.add_argument("--precisions", help="comma list (default: every CPU variant in the bundle)")
    v.add_argument("--every", type=positive(int), default=1, help="every n-th test image only")
    v.add_argument("--json", help="write the results here as JSON")
    device_args(v)
    v.set_defaults(run=cmd_evaluate)


def cmd_calibrate(a: argparse.Namespace) -> int:
    needs("export", "onnx", "matplotlib")
    from lineguard.calibration.calibrate import calibrate, describe

    if not a.normal and not a.dataset and a.threshold is None and not a.classes_only and a.rule != "model":
        raise LineguardError("give --normal DIR, --dataset ROOT, --threshold T or --rule model")
    if (a.classes or a.classes_only) and not a.dataset:
        raise LineguardError("--classes needs --dataset ROOT (defect folders with masks)")
    if a.classes_only:
        _print_classes(a)
        return 0
    rep = calibrate(a.bundle, a.normal, a.dataset, a.rule, a.threshold, a.pixel_threshold, a.folds, a.seed,
                    a.report)
    print(describe(rep))
    if a.classes:
        _print_classes(a)
    return 0


def _print_classes(a: argparse.Namespace) -> None:
    from lineguard.calibration.classes import fit_classes

    c = fit_classes(a.bundle, a.dataset, a.shots, seed=a.seed)
    print(f"classes   {', '.join(f'{n} ({k})' for n, k in c['examples'].items())}; leave-one-out accuracy "
          f"{100 * c['loo_accuracy']:.1f}%, unknown beyond distance {c['max_distance']:.2f}")


def cmd_quantize(a: argparse.Namespace) -> int:
    needs("export", "onnx", "matplotlib")
    from lineguard.calibration.quantize import QuantConfig
    from lineguard.calibration.variants import build_variants, describe

    if a.stage == "sam":
        from lineguard.calibration.sam_variants import build_sam_variants

        precisions = tuple(p.strip() for p in (a.precision or "int8,fp16").split(",") if p.strip())
        for prec, g in build_sam_variants(a.bundle, precisions).items():
            print(f"sam {prec} {'written' if g['passed'] else 'NOT written'}: mean mask IoU vs fp32 "
                  f"{g['mean_iou_vs_fp32']:.4f} (min {g['min_iou_vs_fp32']:.4f}) on {g['cases']} cases")
        return 0
    if not a.normal:
        raise LineguardError("quantizing the expert needs --normal DIR (calibration images)")
    cfg = QuantConfig(method=a.method, activations=a.activations, quantize_tail=not a.no_tail)
    precisions = tuple(p.strip() for p in (a.precision or "int8,fp16,trt").split(",") if p.strip())
    summary = build_variants(a.bundle, a.normal, a.dataset, precisions, cfg, a.max_drop, a.calib_images, a.every)
    print(describe(summary))
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    needs("export", "onnx", "matplotlib")
    from lineguard.calibration.evaluate import describe, evaluate_all

    results = evaluate_all(a.bundle, a.dataset, a.precisions, a.every, EngineOptions(device=a.device, threads=a.threads))
    print(describe(results))
    if a.json:
        from lineguard.calibration.report import plot_variants

        write_report(a.json, results, plot_variants)
    return 0
