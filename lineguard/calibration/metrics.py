"""Evaluation metrics of anomaly detection, written against numpy and OpenCV only and tested against
scikit-learn (image and pixel AUROC, AP, F1-max) and a brute-force reference (AUPRO).

Labels and masks are read as booleans (nonzero = defect); scores and maps are anomaly scores, higher
meaning more anomalous. Pixel metrics take masks and maps either as ``[N, H, W]`` arrays or as
sequences of 2-D frames of possibly different sizes (each map the size of its mask). A metric with no
value for its input raises ``UndefinedMetric``; malformed input (shape mismatch, NaN) raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

Frames = np.ndarray | Sequence[np.ndarray]


class UndefinedMetric(ValueError):
    """The metric has no value for these labels (e.g. AUROC with one class only)."""


def _score_dtype(*dtypes: np.dtype) -> np.dtype:
    # float32 maps stay float32 (half the memory of float64, and exact); wider types keep their precision
    return np.promote_types(np.result_type(*dtypes), np.float32)


def _check_scores(s: np.ndarray, what: str) -> None:
    if np.isnan(s).any():
        raise ValueError(f"{what} contain NaN")


@dataclass(frozen=True)
class _Counts:
    """Counts of a binary score ranking at each distinct defect score t (descending).

    Enough for AUROC, AP and F1-max: recall changes only at defect scores, and lowering a threshold
    from a defect score to a normal-only one adds false positives and no true positive.
    """

    n_pos: int
    n_neg: int
    t: np.ndarray  # distinct defect scores, descending
    pos_eq: np.ndarray  # defects scoring exactly t
    neg_ge: np.ndarray  # normals scoring >= t
    neg_gt: np.ndarray  # normals scoring > t

    @property
    def tps(self) -> np.ndarray:
        return np.cumsum(self.pos_eq)


def _counts(labels: np.ndarray, scores: np.ndarray) -> _Counts:
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores)
    s = s.astype(_score_dtype(s.dtype), copy=False).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    _check_scores(s, "scores")
    # two in-place sorts of the class-wise copies: no argsort (int64 per pixel) over millions of pixels
    pos, neg = s[y], s[~y]
    pos.sort()
    neg.sort()
    pos = pos[::-1]
    last = np.flatnonzero(np.r_[pos[1:] != pos[:-1], pos.size > 0])  # last index of each run of equal scores
    t = pos[last]
    return _Counts(pos.size, neg.size, t, np.diff(last, prepend=-1),
                   neg.size - np.searchsorted(neg, t, side="left"), neg.size - np.searchsorted(neg, t, side="right"))


def _auroc(c: _Counts) -> float:
    if c.n_pos == 0 or c.n_neg == 0:
        raise UndefinedMetric(f"AUROC needs both classes (got {c.n_pos} positive, {c.n_neg} negative)")
    # Mann–Whitney: each defect beats the normals below it and ties the equal ones (one half);
    # twice U is an exact integer
    twice_u = int(np.sum(c.pos_eq * (2 * c.n_neg - c.neg_ge - c.neg_gt)))
    return twice_u / (2 * c.n_pos * c.n_neg)


def _average_precision(c: _Counts) -> float:
    if c.n_pos == 0:
        raise UndefinedMetric(f"AP needs positives (got 0 positive, {c.n_neg} negative)")
    tps = c.tps
    return float(np.sum(c.pos_eq * (tps / (tps + c.neg_ge))) / c.n_pos)


def _f1_max(c: _Counts) -> tuple[float, float]:
    if c.n_pos == 0:
        raise UndefinedMetric(f"F1 needs positives (got 0 positive, {c.n_neg} negative)")
    tps = c.tps
    # 2TP / (2TP + FP + FN) from integers: equal F1 values are equal floats, so the tie rule is exact
    f1 = 2.0 * tps / (tps + c.neg_ge + c.n_pos)
    best = f1.size - 1 - int(np.argmax(f1[::-1]))  # last maximum = smallest threshold
    return float(f1[best]), float(c.t[best])


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the Mann–Whitney U statistic; ties count one half."""
    return _auroc(_counts(labels, scores))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision as scikit-learn defines it: sum over distinct thresholds of (R_k - R_k-1) * P_k."""
    return _average_precision(_counts(labels, scores))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 of "score >= t" over the distinct scores t, and that t.

    When several thresholds reach the same best F1, the smallest of them is returned.
    """
    return _f1_max(_counts(labels, scores))


def _frames(masks: Frames, maps: Frames) -> list[tuple[np.ndarray, np.ndarray]]:
    """(bool mask, map) per frame; an [N, H, W] array is N frames, a 2-D array one frame."""
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = masks[None]
    if isinstance(maps, np.ndarray) and maps.ndim == 2:
        maps = maps[None]
    if len(masks) != len(maps):
        raise ValueError(f"{len(masks)} masks but {len(maps)} maps")
    out = []
    for i, (m, a) in enumerate(zip(masks, maps)):
        m, a = np.asarray(m), np.asarray(a)
        if m.ndim != 2 or m.shape != a.shape:
            raise ValueError(f"frame {i}: mask {m.shape} and map {a.shape} must be the same 2-D shape")
        out.append((m.astype(bool, copy=False), a))
    return out


def _pixels(masks: Frames, maps: Frames) -> tuple[np.ndarray, np.ndarray]:
    frames = _frames(masks, maps)
    if not frames:
        return np.zeros(0, bool), np.zeros(0, np.float32)
    return np.concatenate([m.ravel() for m, _ in frames]), np.concatenate([a.ravel() for _, a in frames])


def pixel_auroc(masks: Frames, maps: Frames) -> float:
    """AUROC over all pixels of all frames."""
    return auroc(*_pixels(masks, maps))


def pixel_ap(masks: Frames, maps: Frames) -> float:
    """Average precision over all pixels of all frames."""
    return average_precision(*_pixels(masks, maps))


def pixel_f1_max(masks: Frames, maps: Frames) -> tuple[float, float]:
    """Best pixel F1 over all frames and the map threshold reaching it (see ``f1_max``)."""
    return f1_max(*_pixels(masks, maps))


def aupro(masks: Frames, maps: Frames, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (MVTec AD / anomalib).

    Regions are the 8-connected components of each mask. At threshold t, FPR is the fraction of all
    normal pixels with map >= t and PRO the mean over all regions of the fraction of the region's pixels
    with map >= t. The curve has a point at every distinct map value, starts at (0, 0), is cut at
    ``fpr_limit`` by linear interpolation and integrated by the trapezoid rule; dividing by
    ``fpr_limit`` makes a perfect detector score 1.0.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    frames = _frames(masks, maps)
    dtype = _score_dtype(*(a.dtype for _, a in frames)) if frames else np.dtype(np.float32)
    n_neg = sum(m.size - int(np.count_nonzero(m)) for m, _ in frames)
    # normal pixels are most of ~30M: one preallocated array, sorted in place, never argsorted
    neg = np.empty(n_neg, dtype)
    pos, weight, n_regions, at = [], [], 0, 0
    for m, a in frames:
        k = m.size - int(np.count_nonzero(m))
        neg[at : at + k] = a[~m]
        at += k
        if k < m.size:
            n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
            region = lab[m]
            pos.append(a[m].astype(dtype, copy=False))
            weight.append(1.0 / np.bincount(region, minlength=n)[region])
            n_regions += n - 1
    if n_regions == 0 or n_neg == 0:
        raise UndefinedMetric(f"AUPRO needs defect regions and normal pixels "
                              f"(got {n_regions} regions, {n_neg} normal pixels)")
    pos_s, w = np.concatenate(pos), np.concatenate(weight)
    _check_scores(neg, "maps")
    _check_scores(pos_s, "maps")

    neg.sort()
    order = np.argsort(pos_s, kind="stable")
    pos_s, w = pos_s[order], w[order]
    # pro_from[i]: PRO of a threshold admitting pos_s[i:] (suffix sums, accumulated from the top scores)
    pro_from = np.r_[np.cumsum(w[::-1])[::-1], 0.0] / n_regions

    # Only thresholds down to the first one past fpr_limit matter; the +1 keeps one point beyond the
    # limit even if rounding in fpr_limit * n_neg drops a pixel.
    keep = min(int(fpr_limit * n_neg) + 1, n_neg)
    lowest = neg[n_neg - keep - 1] if keep < n_neg else -np.inf
    t = np.unique(np.concatenate([neg[max(n_neg - keep - 1, 0) :], pos_s[pos_s >= lowest]]))[::-1]
    fpr = np.r_[0.0, (n_neg - np.searchsorted(neg, t, side="left")) / n_neg]
    pro = np.r_[0.0, pro_from[np.searchsorted(pos_s, t, side="left")]]

    i = int(np.searchsorted(fpr, fpr_limit, side="right"))  # points with fpr <= limit; fpr is non-decreasing
    x, y = fpr[:i], pro[:i]
    if i < fpr.size:
        x0, x1, y0, y1 = fpr[i - 1], fpr[i], pro[i - 1], pro[i]
        x, y = np.r_[x, fpr_limit], np.r_[y, y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0 / fpr_limit)


def evaluate(labels: np.ndarray, scores: np.ndarray, masks: Frames | None = None, maps: Frames | None = None,
             fpr_limit: float = 0.3) -> dict[str, float | None | dict[str, str]]:
    """Image metrics, and pixel metrics plus AUPRO when masks and maps are given.

    Keys: image_auroc, image_ap, image_f1_max, image_f1_threshold, and with masks pixel_auroc, pixel_ap,
    pixel_f1_max, pixel_f1_threshold, aupro; each a float, or None when undefined for this input, in which
    case ``out["undefined"][key]`` says why. ``out["undefined"]`` is always present (empty if all defined).
    """
    if (masks is None) != (maps is None):
        raise ValueError("pixel metrics need both masks and maps")
    out: dict[str, float | None | dict[str, str]] = {}
    undefined: dict[str, str] = {}

    def put(keys: tuple[str, ...], fn: Callable[..., float | tuple[float, float]], *args: object) -> None:
        try:
            value = fn(*args)
        except UndefinedMetric as e:
            out.update(dict.fromkeys(keys))
            undefined.update(dict.fromkeys(keys, str(e)))
            return
        out.update(zip(keys, value if len(keys) > 1 else (value,)))

    image = _counts(labels, scores)
    put(("image_auroc",), _auroc, image)
    put(("image_ap",), _average_precision, image)
    put(("image_f1_max", "image_f1_threshold"), _f1_max, image)
    if masks is not None:
        pixel = _counts(*_pixels(masks, maps))  # one ranking of all pixels serves three metrics
        put(("pixel_auroc",), _auroc, pixel)
        put(("pixel_ap",), _average_precision, pixel)
        put(("pixel_f1_max", "pixel_f1_threshold"), _f1_max, pixel)
        del pixel
        put(("aupro",), aupro, masks, maps, fpr_limit)
    out["undefined"] = undefined
    return out
