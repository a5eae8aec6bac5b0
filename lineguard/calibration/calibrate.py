"""`lineguard calibrate`: thresholds and score normalisation into a bundle's manifest, with a report.

Rules (``--rule``, default ``auto``): ``manual`` when ``--threshold`` is given, else ``f1`` when
a labelled dataset is given, else ``myriad`` (k-fold maximum over the normal images). ``model``
keeps the threshold the graph applies itself (anomalib's ``pred_label = pred_score > 0.5``). The
bundle is rewritten atomically; on any error it is left as it was.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lineguard.calibration import report
from lineguard.calibration.dataset import load_labelled, read_frames
from lineguard.calibration.evaluate import evaluate_scored, flat_pixels, score_frames
from lineguard.calibration.thresholds import f1_thresholds, min_max, myriad_kfold
from lineguard.export.model_threshold import model_thresholds
from lineguard.runtime.bundle import Bundle, BundleWriter
from lineguard.runtime.errors import InputError
from lineguard.runtime.imageio import normal_images
from lineguard.runtime.stages.expert import Expert

log = logging.getLogger("lineguard.calibrate")
RULES = ("auto", "myriad", "f1", "manual", "model")


def _rule(rule: str, threshold: float | None, normal: str | None, dataset: str | None) -> str:
    if rule not in RULES:
        raise InputError(f"--rule {rule}: use one of {', '.join(RULES)}")
    if rule == "auto":
        rule = "manual" if threshold is not None else "f1" if dataset else "myriad"
    if rule == "manual" and threshold is None:
        raise InputError("--rule manual needs --threshold")
    if rule == "f1" and not dataset:
        raise InputError("--rule f1 needs --dataset ROOT (defect images with masks)")
    if rule == "myriad" and not normal:
        raise InputError("--rule myriad needs --normal DIR (normal images)")
    return rule


def _fitted_on(stage: dict[str, Any]) -> Path | None:
    """The folder the expert was fitted on, where its export recorded it."""
    prov = stage["variants"]["fp32"].get("provenance", {})
    folder = prov.get("train_dir") or (prov.get("trained") or {}).get("training", {}).get("train_dir")
    if not folder:
        return None
    # bundles written before 2026-12-02 recorded an MVTec category root, not its train/good
    return Path(folder) / "train" / "good" if (Path(folder) / "train" / "good").is_dir() else Path(folder)


def _warn_not_held_out(stage: dict[str, Any], normal: str, files: list[Path]) -> None:
    """Myriad's rule is the highest score of normal images the expert has not seen: say so when
    these are the ones it was fitted on (or when nobody can tell, for an imported model)."""
    fitted = _fitted_on(stage)
    if fitted is None:
        log.warning("the expert was imported: the myriad rule takes the highest score over %s, so these must be "
                    "normal images the model was not trained on", normal)
        return
    folder = fitted.resolve()
    seen = sum(folder in f.resolve().parents for f in files)
    if seen:
        log.warning("%d of %d images in %s are the expert's own training images (%s): the highest score over them "
                    "understates a new good part's and good parts will be flagged; give held-out normal images",
                    seen, len(files), normal, fitted)


def _model_rule(bundle: Bundle) -> dict[str, Any]:
    stage = bundle.stage("expert")
    graph = bundle.variant_path("expert", "fp32")
    roles = stage.get("roles", {})
    own = model_thresholds(onnx.load(str(graph)), roles.get("score"), roles.get("anomaly_map") or "anomaly_map")
    if own is None:
        raise InputError(f"{graph}: the graph does not threshold its score output (as anomalib's pred_label does): "
                         "use --rule myriad, f1 or manual")
    return own


def calibrate(bundle_path: str | Path, normal: str | None = None, dataset: str | None = None, rule: str = "auto",
              threshold: float | None = None, pixel_threshold: float | None = None, folds: int = 3,
              seed: int = 0, report_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    bundle = Bundle.load(bundle_path)
    stage = bundle.stage("expert")
    rule = _rule(rule, threshold, normal, dataset)
    normal_files = normal_images(normal) if normal else []
    normal_frames = read_frames(normal_files, "read normal", progress) if normal else []
    data = load_labelled(dataset, progress=progress) if dataset else None
    expert = Expert(bundle, "fp32")
    scored = score_frames(expert, data.frames, desc="score test", progress=progress) if data else None

    by_model = _model_rule(bundle) if rule == "model" else None
    if by_model is not None:
        t = by_model["record"] | by_model["thresholds"]
    elif rule == "myriad":
        if stage["kind"] == "patchcore":
            from lineguard.calibration.refit import patchcore_refit

            with warnings.catch_warnings():  # the random-weights warning, once per fold, says nothing new
                warnings.simplefilter("ignore", UserWarning)
                try:
                    t = myriad_kfold(normal_frames, patchcore_refit(bundle), folds, seed, progress)
                except InputError as e:
                    raise InputError(f"{normal}: {e}") from None
        else:  # an imported expert cannot be refitted: its own maximum over all normal images
            assert normal is not None
            _warn_not_held_out(stage, normal, normal_files)
            own = score_frames(expert, normal_frames, desc="score normal", progress=progress)
            t = {"rule": "myriad", "folds": None, "images": len(normal_frames), "image": float(own.scores.max()),
                 "pixel": float(max(m.max() for m in own.maps)), "normal_scores": own.scores.tolist(),
                 "note": "imported expert: not refitted per fold, maximum over all normal images"}
    elif rule == "f1":
        assert data is not None and scored is not None
        if data.labels.min() == data.labels.max():
            raise InputError(f"{dataset}: the f1 rule needs both good and defect test images")
        pix = flat_pixels(data.masks, scored.maps) if any(m.any() for m in data.masks) else (None, None)
        t = f1_thresholds(data.labels, scored.scores, *pix)
    else:
        t = {"rule": "manual", "images": 0, "image": float(threshold)}
    if pixel_threshold is not None:
        t["pixel"] = float(pixel_threshold)
    elif "pixel" not in t and "pixel" in bundle.thresholds:  # a manual image threshold keeps the pixel one
        t["pixel"] = float(bundle.thresholds["pixel"])

    normal_scores = np.asarray(t.pop("normal_scores", []), np.float64)
    if data is not None:
        normal_scores = np.r_[normal_scores, scored.scores[data.labels == 0]]
    defect_scores = scored.scores[data.labels == 1] if data is not None else np.empty(0)
    old = bundle.normalization
    if not len(normal_scores) and not len(defect_scores):
        if normal_frames:
            normal_scores = score_frames(expert, normal_frames, desc="score normal", progress=progress).scores
        elif old.get("method") != "min_max" and by_model is None:
            raise InputError("a first calibration needs --normal DIR or --dataset ROOT for the score normalisation "
                             "(or --rule model, to keep a threshold the model applies itself)")
    if by_model is not None:  # the model's scores are already on its own scale, threshold at its constant
        norm = by_model["normalization"]
    else:
        all_scores = np.r_[normal_scores, defect_scores] if len(normal_scores) + len(defect_scores) else \
            np.array([old["min"], old["max"]], np.float64)  # a new manual threshold keeps the old score range
        norm = min_max(t["image"], all_scores)

    rep: dict[str, Any] = {
        "product": bundle.product,
        "bundle": str(bundle.root),
        "thresholds": t,
        "normalization": norm,
        "normal_images": len(normal_frames),
        "normal_dir": str(normal) if normal else None,
        "dataset": str(dataset) if dataset else None,
        "normal_scores": {"n": len(normal_scores), "max": float(normal_scores.max()) if len(normal_scores) else None},
    }
    if data is not None:
        rep["metrics"] = evaluate_scored(data, scored)
        y = data.labels.astype(bool)
        pred = scored.scores >= t["image"]
        rep["at_threshold"] = {"tpr": float(pred[y].mean()) if y.any() else None,
                               "fpr": float(pred[~y].mean()) if (~y).any() else None,
                               "test_images": int(len(y))}
    with BundleWriter(bundle.root, base=bundle) as w:
        report.write(w.path("calibration/calibration.json"), w.path("calibration/calibration.png"), rep,
                     normal_scores, defect_scores)
        w.add_file("calibration/calibration.json", "calibration report")
        w.add_file("calibration/calibration.png", "calibration plot")
        w.manifest["thresholds"] = {"image": t["image"], **({"pixel": t["pixel"]} if "pixel" in t else {}),
                                    **({"strict": True} if t.get("strict") else {})}
        w.manifest["normalization"] = norm
        w.manifest["calibration"] = {k: v for k, v in t.items() if k not in ("image", "pixel", "strict")} | {
            "report": "calibration/calibration.json"}
    if report_dir:
        report.write(Path(report_dir) / "calibration.json", Path(report_dir) / "calibration.png", rep,
                     normal_scores, defect_scores)
    if len(normal_scores) and t["image"] < normal_scores.max() and rule != "myriad":
        log.warning("threshold %.4g is below the highest normal score %.4g: some good parts will be flagged",
                    t["image"], normal_scores.max())
    return rep


def describe(rep: dict[str, Any]) -> str:
    t = rep["thresholds"]
    how = f" ({t['image_from']})" if t["rule"] == "model" else \
        (f" ({t['folds']} folds)" if t.get("folds") else "") + f" on {t.get('images', 0)} images"
    lines = [f"rule      {t['rule']}{how}",
             f"threshold image {t['image']:.5g}" + (f", pixel {t['pixel']:.5g}" if "pixel" in t else "")]
    if "metrics" in rep:
        m = rep["metrics"]
        parts = [f"{k} {m[k]:.3f}" for k in ("image_auroc", "pixel_auroc", "image_f1_max", "aupro")
                 if m.get(k) is not None]
        lines.append("test      " + ", ".join(parts))
        a = rep["at_threshold"]
        lines.append(f"at threshold: TPR {a['tpr']:.3f}, FPR {a['fpr']:.3f} on {a['test_images']} test images"
                     if a["tpr"] is not None and a["fpr"] is not None else "")
    lines.append(f"report    {rep['bundle']}/calibration/calibration.json (+ .png)")
    return "\n".join(x for x in lines if x)

