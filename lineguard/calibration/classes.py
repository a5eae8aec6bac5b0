"""Fit the defect classifier of a bundle from labelled defect images (MVTec layout: the defect
folders name the types, the masks say where).

The examples are what the runtime will classify: each labelled image goes through the bundle's
own expert and defect stage (SAM where the bundle has it) as a flagged frame is served, and each
found region that overlaps the labelled mask becomes an example of that type, described by
``lineguard.runtime.stages.classify``. Fitting on the true masks instead taught the classifier shapes
the runtime never shows it (36 % DC on the demo line). An image where nothing found overlaps its
mask gives its mask's largest component, so every type keeps examples; both counts are recorded.
``shots`` keeps a few images per type, as a station would label them; the images used are
recorded so an evaluation can leave them out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lineguard.ddqa.dataset import walk
from lineguard.ddqa.rules import largest_component
from lineguard.progress import bar
from lineguard.runtime.bundle import Bundle, BundleWriter
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.errors import InputError
from lineguard.runtime.imageio import read_image
from lineguard.runtime.inspection import Inspector
from lineguard.runtime.stages.classify import FEATURES, DefectClassifier, describe_region

FILE = "classes/classifier.json"
UNKNOWN_MARGIN = 2.0  # × the 95th percentile of each example's distance to its nearest same-type example


def same_class_nearest(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each example's distance to the nearest other example of its own type (inf when it is alone)."""
    d = np.linalg.norm(z[:, None, :] - z[None, :, :], axis=2)
    d[labels[:, None] != labels[None, :]] = np.inf
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


def fit(vectors: np.ndarray, labels: np.ndarray, names: list[str], k: int = 3) -> DefectClassifier:
    mean = vectors.mean(axis=0)
    # a floor of 5% of each feature's scale: a feature nearly constant among a few examples must not
    # turn small differences at run time into large distances
    std = np.maximum(vectors.std(axis=0), 0.05 * (1.0 + np.abs(mean)))
    z = (vectors - mean) / std
    # "unknown" is judged against how far examples of one type lie from each other; a distance
    # between two types would make the cutoff so loose that nothing is ever unknown
    near = same_class_nearest(z, labels)
    near = near[np.isfinite(near)]
    max_d = float(np.percentile(near, 95) * UNKNOWN_MARGIN) if len(near) >= 2 else float("inf")
    return DefectClassifier(names, mean.astype(np.float32), std.astype(np.float32), z.astype(np.float32),
                            labels.astype(np.int64), min(k, len(z)), max_d)


def loo_accuracy(vectors: np.ndarray, labels: np.ndarray, names: list[str], k: int) -> float:
    """Leave-one-out accuracy: each example classified by a classifier fitted on the others."""
    hits = 0
    for i in range(len(vectors)):
        keep = np.arange(len(vectors)) != i
        c = fit(vectors[keep], labels[keep], names, k)
        c.max_distance = float("inf")  # accuracy among known types; the unknown rule is judged apart
        hits += c.predict(vectors[i])[0] == names[labels[i]]
    return hits / max(1, len(vectors))


def fit_classes(bundle_path: str | Path, dataset: str | Path, shots: int | None = None, k: int = 3, seed: int = 0,
                precision: str = "fp32", progress: bool = True) -> dict[str, Any]:
    """Fit and write the classifier into the bundle; returns a summary (types, examples, LOO accuracy)."""
    bundle = Bundle.load(bundle_path)
    root = Path(dataset).resolve()
    items, problems = walk(root)
    by_type: dict[str, list] = {}
    for it in items:
        if it.defect != "good" and it.mask is not None:
            by_type.setdefault(it.defect, []).append(it)
    if len(by_type) < 2:
        raise InputError(f"{root}: the classifier needs defect images with masks of at least two types "
                         f"(found {sorted(by_type) or 'none'})")
    rng = np.random.default_rng(seed)
    names = sorted(by_type)
    chosen = []
    for n in names:
        group = by_type[n]
        idx = sorted(rng.permutation(len(group))[:shots]) if shots else range(len(group))
        chosen += [group[i] for i in idx]
    served = Inspector.load(bundle, precision, EngineOptions(device="cpu"))  # the station's stages
    served.classifier = None  # the types come from the labels here, not from the classifier being replaced
    pixel_t = bundle.thresholds.get("pixel")
    vecs, labels, found, fallback = [], [], 0, 0
    for it in bar(chosen, desc="classes", unit="img", progress=progress, leave=False):
        frame = read_image(root / it.image)
        truth = it.mask.astype(bool)
        r = served.score([frame])[0]
        amap_frame = cv2.resize(r.anomaly_map, it.size, interpolation=cv2.INTER_LINEAR)
        regions = [d.mask for d in served.defects(frame, r) if (d.mask & truth).any()]
        found += len(regions)
        if not regions:  # the runtime would not find this one: its mask keeps the type represented
            regions, fallback = [largest_component(it.mask)], fallback + 1
        for m in regions:
            vecs.append(describe_region(frame, m, amap_frame, pixel_t))
            labels.append(names.index(it.defect))
    x, y = np.stack(vecs), np.asarray(labels)
    clf = fit(x, y, names, k)
    summary = {"names": names, "examples": {n: int((y == i).sum()) for i, n in enumerate(names)}, "k": clf.k,
               "max_distance": clf.max_distance, "loo_accuracy": round(loo_accuracy(x, y, names, k), 4),
               "features": list(FEATURES), "dataset": str(root), "shots": shots, "seed": seed,
               "examples_from": {"found_regions": found, "true_masks": fallback},
               "problems": [str(p) for p in problems]}
    with BundleWriter(bundle.root, base=bundle) as w:
        w.path(FILE).write_text(json.dumps(clf.to_dict()) + "\n", encoding="utf-8")
        w.add_file(FILE, "defect classifier")
        w.manifest["classes"] = {"names": names, "file": FILE, "k": clf.k, "loo_accuracy": summary["loo_accuracy"],
                                 "fit": {"dataset": str(root), "images": [str(it.image) for it in chosen],
                                         "examples_from": summary["examples_from"]}}
    return summary
