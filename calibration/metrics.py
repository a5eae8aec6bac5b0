"""Evaluation metrics, written against numpy only and tested against scikit-learn."""

from __future__ import annotations

import numpy as np


class UndefinedMetric(ValueError):
    """The metric has no value for these labels (e.g. AUROC with one class only)."""


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the Mann–Whitney U statistic; ties count one half."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise UndefinedMetric(f"AUROC needs both classes (got {n_pos} positive, {n_neg} negative)")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # average rank over runs of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
