"""Calibration report: JSON for machines, a PNG for the line engineer (histogram + ROC)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FPR and TPR at every distinct threshold, from (0, 0) to (1, 1)."""
    y = np.asarray(labels, bool)
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    s, y = np.asarray(scores, np.float64)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each run of equal scores
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def plot(path: Path, normal: np.ndarray, defect: np.ndarray, threshold: float, rule: str,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    both = len(normal) > 0 and len(defect) > 0
    fig, axes = plt.subplots(1, 2 if both else 1, figsize=(11 if both else 6, 4), squeeze=False)
    ax = axes[0, 0]
    every = np.r_[normal, defect, threshold]
    bins = np.linspace(every.min(), every.max() + 1e-9, 40)
    if len(normal):
        ax.hist(normal, bins=bins, alpha=0.6, label=f"normal ({len(normal)})", color="tab:green")
    if len(defect):
        ax.hist(defect, bins=bins, alpha=0.6, label=f"defect ({len(defect)})", color="tab:red")
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.4g} ({rule})")
    ax.set_xlabel("raw image score")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    if both:
        labels = np.r_[np.zeros(len(normal)), np.ones(len(defect))]
        fpr, tpr = roc_points(labels, np.r_[normal, defect])
        ax = axes[0, 1]
        ax.plot(fpr, tpr, color="tab:blue")
        ax.plot([0, 1], [0, 1], color="0.7", linestyle=":")
        at = (np.r_[normal] >= threshold).mean(), (np.r_[defect] >= threshold).mean()
        ax.plot(*at, "ko", label=f"threshold: FPR {at[0]:.2f}, TPR {at[1]:.2f}")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("image ROC", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(js: Path, png: Path, report: dict[str, Any], normal: np.ndarray, defect: np.ndarray) -> None:
    """The report as JSON at ``js`` and its plot at ``png``."""
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(report, indent=2) + "\n")
    t = report["thresholds"]
    plot(png, normal, defect, t["image"], t["rule"], f"{report['product']}: image scores")


def plot_variants(results: dict[str, Any], path: Path) -> None:
    """Metrics side by side per variant, and frames/s: what `lineguard evaluate --json` also draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["image_auroc", "pixel_auroc", "image_f1_max", "pixel_f1_max", "aupro"]
    variants = results["variants"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(len(variants), 1)
    for i, (name, r) in enumerate(variants.items()):
        vals = [r.get(k) or 0.0 for k in keys]
        ax.bar(np.arange(len(keys)) + i * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(keys)) + width * (len(variants) - 1) / 2, [k.replace("_max", "") for k in keys])
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(f"{Path(results['dataset']).name}: metrics per variant", fontsize=10)
    bx.bar(list(variants), [r["frames_per_s"] for r in variants.values()], color="0.4")
    bx.set_ylabel("frames/s (batch 1)")
    bx.set_title("speed", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
