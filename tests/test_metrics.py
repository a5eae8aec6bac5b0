"""calibration.metrics against scikit-learn (AUROC, AP, F1-max) and a brute-force AUPRO written plainly here."""

from __future__ import annotations

import numpy as np
import pytest

from lineguard.calibration.metrics import (
    UndefinedMetric,
    aupro,
    auroc,
    average_precision,
    evaluate,
    f1_max,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
)


@pytest.fixture(scope="module")
def sk():
    return pytest.importorskip("sklearn.metrics")


def sk_f1_max(sk, y, s) -> float:
    p, r, _ = sk.precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmax(2 * p * r / (p + r)))


def cases():
    """(name, labels, scores): random, heavily tied, perfectly separated, and float32 scores."""
    out = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 2, 200)
        s = rng.normal(size=200) + y
        out += [(f"random{seed}", y, s), (f"tied{seed}", y, np.round(s, 1))]
    rng = np.random.default_rng(10)
    y = rng.integers(0, 2, 100)
    out.append(("separated", y, rng.random(100) + 2 * y))
    out.append(("tied_separated", y, y.astype(float)))
    out.append(("float32", y, (rng.normal(size=100) + y).astype(np.float32)))
    out.append(("few", np.array([1, 0, 0, 1]), np.array([4.0, 3.0, 2.0, 1.0])))
    return out


CASES = cases()
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name,y,s", CASES, ids=IDS)
def test_auroc_ap_f1_match_sklearn(sk, name, y, s):
    assert auroc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)
    f1, _ = f1_max(y, s)
    assert f1 == pytest.approx(sk_f1_max(sk, y, s), abs=1e-12)
    if name.startswith("separated") or name == "tied_separated":
        assert auroc(y, s) == 1.0 and average_precision(y, s) == 1.0 and f1 == 1.0


@pytest.mark.parametrize("name,y,s", CASES, ids=IDS)
def test_f1_threshold_reproduces_f1_and_is_the_smallest_best(sk, name, y, s):
    f1, t = f1_max(y, s)
    assert sk.f1_score(y, s >= t) == pytest.approx(f1, abs=1e-15)
    y = y.astype(bool)
    per_t = {}  # F1 of every distinct threshold, by plain counting
    for u in np.unique(s):
        hit = s >= u
        tp, fp, fn = np.sum(hit & y), np.sum(hit & ~y), np.sum(~hit & y)
        per_t[float(u)] = 2 * tp / (2 * tp + fp + fn)
    best = max(per_t.values())
    assert f1 == pytest.approx(best, abs=1e-15)
    assert t == min(u for u, v in per_t.items() if v == pytest.approx(best, abs=1e-15))


def test_f1_tie_between_thresholds_returns_the_smallest():
    # t=4 gives TP1 FP0 and t=1 gives TP2 FP2: both F1 = 2/3
    assert f1_max([1, 0, 0, 1], [4.0, 3.0, 2.0, 1.0]) == (pytest.approx(2 / 3), 1.0)


def test_perfect_separation_threshold_is_the_lowest_defect_score():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.3, 0.5, 0.9, 0.2, 0.7])
    assert f1_max(y, s) == (1.0, 0.5)


def test_all_normal_is_undefined():
    y, s = np.zeros(6), np.arange(6.0)
    for fn in (auroc, average_precision, f1_max):
        with pytest.raises(UndefinedMetric, match="0 positive, 6 negative"):
            fn(y, s)


def test_all_defect_ap_and_f1_match_sklearn(sk):
    y, s = np.ones(6, int), np.array([0.5, 0.1, 0.1, 0.9, 0.3, 0.5])
    with pytest.raises(UndefinedMetric, match="6 positive, 0 negative"):
        auroc(y, s)
    assert average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s)) == 1.0
    assert f1_max(y, s) == (pytest.approx(sk_f1_max(sk, y, s)), 0.1)


def test_malformed_input_is_a_value_error():
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        average_precision([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        f1_max([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="same 2-D shape"):
        aupro([np.ones((4, 4), bool)], [np.zeros((4, 5))])


def test_pixel_wrappers_flatten_frames_of_any_size(sk):
    rng = np.random.default_rng(5)
    masks = [rng.random((8, 8)) > 0.7, rng.random((6, 10)) > 0.7]
    maps = [np.round(rng.random(m.shape) + m, 1).astype(np.float32) for m in masks]
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([a.ravel() for a in maps])
    assert pixel_auroc(masks, maps) == auroc(y, s)
    assert pixel_ap(masks, maps) == average_precision(y, s)
    assert pixel_f1_max(masks, maps) == f1_max(y, s)
    assert pixel_ap(masks, maps) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)


# ---- AUPRO against a brute-force reference ----------------------------------------------------------


def label_regions(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a 2-D mask by flood fill, each as a boolean mask."""
    seen, regions = np.zeros_like(mask, bool), []
    h, w = mask.shape
    for i0, j0 in zip(*np.nonzero(mask)):
        if seen[i0, j0]:
            continue
        region, stack = np.zeros_like(mask, bool), [(i0, j0)]
        seen[i0, j0] = True
        while stack:
            i, j = stack.pop()
            region[i, j] = True
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    a, b = i + di, j + dj
                    if 0 <= a < h and 0 <= b < w and mask[a, b] and not seen[a, b]:
                        seen[a, b] = True
                        stack.append((a, b))
        regions.append(region)
    return regions


def aupro_reference(masks, maps, fpr_limit: float) -> float:
    normal = np.concatenate([a[~m] for m, a in zip(masks, maps)])
    regions = [a[r] for m, a in zip(masks, maps) for r in label_regions(m)]
    xs, ys = [0.0], [0.0]
    for t in sorted({float(v) for a in maps for v in a.ravel()}, reverse=True):
        xs.append(np.mean(normal >= t))
        ys.append(np.mean([np.mean(r >= t) for r in regions]))
    area = 0.0
    for k in range(1, len(xs)):
        x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
        if x1 > fpr_limit:
            area += (fpr_limit - x0) * (y0 + (y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0))) / 2
            break
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def blob_frames(seed: int, shapes=((16, 16), (16, 16), (16, 16)), decimals: int | None = None):
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for h, w in shapes:
        m = np.zeros((h, w), bool)
        for _ in range(rng.integers(0, 4)):  # some frames have no defect
            i, j = rng.integers(0, h - 3), rng.integers(0, w - 3)
            m[i : i + rng.integers(1, 5), j : j + rng.integers(1, 5)] = True
        m[rng.random((h, w)) > 0.98] = True  # single pixels, some touching blobs only diagonally
        a = rng.random((h, w)) + m * rng.uniform(0.0, 1.0)
        masks.append(m)
        maps.append((np.round(a, decimals) if decimals is not None else a).astype(np.float32))
    return masks, maps


@pytest.mark.parametrize("fpr_limit", [0.3, 0.1, 1.0, 0.05])
@pytest.mark.parametrize("seed,decimals", [(0, None), (1, None), (2, 1), (3, 2)])
def test_aupro_matches_brute_force(seed, decimals, fpr_limit):
    masks, maps = blob_frames(seed, decimals=decimals)
    expected = aupro_reference(masks, maps, fpr_limit)
    assert aupro(np.stack(masks), np.stack(maps), fpr_limit) == pytest.approx(expected, abs=1e-12)
    assert aupro(masks, maps, fpr_limit) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("fpr_limit", [0.3, 1.0])
def test_aupro_frames_of_different_sizes_match_brute_force(fpr_limit):
    masks, maps = blob_frames(7, shapes=((16, 16), (12, 20), (9, 14)), decimals=1)
    assert aupro(masks, maps, fpr_limit) == pytest.approx(aupro_reference(masks, maps, fpr_limit), abs=1e-12)


@pytest.mark.parametrize("fpr_limit", [0.3, 0.1, 1.0])
def test_aupro_perfect_detector_is_one(fpr_limit):
    masks, _ = blob_frames(4)
    rng = np.random.default_rng(0)
    maps = [rng.random(m.shape) + 2 * m for m in masks]
    assert aupro(masks, maps, fpr_limit) == pytest.approx(1.0, abs=1e-12)


def test_aupro_weighs_regions_not_pixels_and_uses_8_connectivity():
    m = np.zeros((5, 5), bool)
    m[0, 0] = m[1, 1] = True  # one region: diagonal neighbours
    m[3, 3] = m[3, 4] = m[4, 3] = m[4, 4] = True  # a second region of 4 pixels
    a = np.where(m, 0.0, 1.0)
    a[0, 0] = 2.0  # half of the first region found before any false positive; the second never
    # curve (0,0) (0,0.25) (1,0.25) (1,1): 4-connectivity would give three regions and 1/3
    assert aupro(m, a) == pytest.approx(0.25)
    assert aupro(m, a, fpr_limit=1.0) == pytest.approx(0.25)


def test_aupro_undefined_without_regions_or_normal_pixels():
    maps = np.random.default_rng(0).random((2, 8, 8))
    with pytest.raises(UndefinedMetric, match="0 regions"):
        aupro(np.zeros((2, 8, 8), bool), maps)
    with pytest.raises(UndefinedMetric, match="0 normal pixels"):
        aupro(np.ones((2, 8, 8), bool), maps)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(np.ones((2, 8, 8), bool), maps, fpr_limit=0.0)


# ---- evaluate() -------------------------------------------------------------------------------------

IMAGE_KEYS = {"image_auroc", "image_ap", "image_f1_max", "image_f1_threshold"}
PIXEL_KEYS = {"pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_f1_threshold", "aupro"}


def test_evaluate_image_and_pixel_metrics():
    masks, maps = blob_frames(2, shapes=((16, 16),) * 4, decimals=1)
    masks[1][:] = False  # one good frame
    labels = np.array([m.any() for m in masks], int)
    scores = np.array([a.max() for a in maps])
    out = evaluate(labels, scores)
    assert set(out) == IMAGE_KEYS | {"undefined"}
    out = evaluate(labels, scores, masks, maps)
    assert set(out) == IMAGE_KEYS | PIXEL_KEYS | {"undefined"}
    assert out["undefined"] == {}
    assert out["image_ap"] == average_precision(labels, scores)
    assert (out["pixel_f1_max"], out["pixel_f1_threshold"]) == pixel_f1_max(masks, maps)
    assert out["aupro"] == aupro(masks, maps)
    assert evaluate(labels, scores, masks, maps, fpr_limit=0.1)["aupro"] == aupro(masks, maps, 0.1)


def test_evaluate_reports_undefined_metrics_as_none_with_reason():
    labels, scores = np.zeros(3, int), np.array([0.1, 0.5, 0.2])
    maps = np.random.default_rng(0).random((3, 8, 8))
    out = evaluate(labels, scores, np.zeros((3, 8, 8), bool), maps)
    assert set(out) == IMAGE_KEYS | PIXEL_KEYS | {"undefined"}
    assert all(out[k] is None for k in IMAGE_KEYS | PIXEL_KEYS)
    assert set(out["undefined"]) == IMAGE_KEYS | PIXEL_KEYS
    assert "needs both classes" in out["undefined"]["image_auroc"]
    assert "0 regions" in out["undefined"]["aupro"]

    labels = np.ones(3, int)  # all defective: AUROC undefined, AP and F1 defined
    out = evaluate(labels, scores)
    assert out["image_auroc"] is None and set(out["undefined"]) == {"image_auroc"}
    assert out["image_ap"] == 1.0 and out["image_f1_max"] == 1.0 and out["image_f1_threshold"] == 0.1

    with pytest.raises(ValueError, match="both masks and maps"):
        evaluate(labels, scores, masks=np.zeros((3, 8, 8), bool))
