"""Regions, boxes and 3×3 cells from anomaly maps, checked against hand-made maps."""

import dataclasses

import numpy as np
import pytest

from lineguard.runtime.stages.findings import CELLS, grid_cell, hottest_region, regions


@pytest.mark.parametrize("r, c", [(r, c) for r in range(3) for c in range(3)])
def test_grid_cell_of_a_square_in_each_cell(r, c):
    mask = np.zeros((90, 120), np.uint8)
    mask[r * 30 + 5 : r * 30 + 20, c * 40 + 5 : c * 40 + 30] = 1
    assert grid_cell(mask) == CELLS[r * 3 + c]


def test_grid_cell_takes_the_largest_share():
    mask = np.zeros((90, 90), np.uint8)
    mask[0:10, 0:10] = 1  # 100 px top-left
    mask[40:55, 40:55] = 1  # 225 px center
    assert grid_cell(mask) == "center"


def test_hottest_region_box_in_frame_pixels():
    amap = np.zeros((64, 64), np.float32)
    amap[8:16, 40:56] = 5.0  # map is a quarter of the frame's size
    amap[50:52, 2:4] = 3.0
    reg = hottest_region(amap, (256, 256))
    assert reg.box == [160, 32, 224, 64]
    assert reg.cell == "top-right" and reg.peak == 5.0
    assert reg.area_px == 8 * 16 * 16 and reg.area_frac == pytest.approx(128 / 4096)
    both = regions(amap, (256, 256), level=1.0)
    assert [x.peak for x in both] == [5.0, 3.0] and both[1].cell == "bottom-left"


def test_calibrated_pixel_threshold_sets_the_level():
    amap = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    assert hottest_region(amap, (10, 10), pixel_threshold=0.9).box == [0, 9, 10, 10]
    # a threshold above the peak (a good part) falls back to the relative level: the box still
    # shows where the map looks, never a single pixel or nothing
    above = hottest_region(amap, (10, 10), pixel_threshold=5.0)
    assert above.area_px == 25 and above.box == hottest_region(amap, (10, 10)).box


# ---- the verdict path's own cost (issue 23): the fast paths give what numpy's slow ones gave ----------------------

def _reference_regions(amap, frame_hw, level, top_k=5):
    """The first implementation, kept as the reference: statistics from OpenCV, peaks by np.maximum.at,
    np.percentile/np.median for the levels."""
    import cv2

    from lineguard.runtime.stages.findings import Region, cell_shares

    fh, fw = frame_hw
    mh, mw = amap.shape
    n, labels, stats, _ = cv2.connectedComponentsWithStats((amap >= level).astype(np.uint8), connectivity=8)
    sx, sy = fw / mw, fh / mh
    peaks = np.full(n, -np.inf, np.float64)
    np.maximum.at(peaks, labels.ravel(), amap.ravel().astype(np.float64))
    out = []
    for lab in [int(k) for k in np.argsort(-peaks[1:], kind="stable")[:top_k] + 1]:
        x, y, w, h, area = (int(v) for v in stats[lab])
        sel = labels == lab
        vals = amap[sel]
        yy, xx = np.nonzero(sel)
        top = int(np.argmax(vals))
        shares = cell_shares(sel)
        out.append(Region(
            box=[int(np.floor(x * sx)), int(np.floor(y * sy)), int(np.ceil((x + w) * sx)), int(np.ceil((y + h) * sy))],
            area_px=int(round(area * sx * sy)), area_frac=float(area / (mh * mw)),
            centroid=[float((xx.mean() + 0.5) * sx), float((yy.mean() + 0.5) * sy)],
            cell=max(CELLS, key=lambda c: shares[c]), peak=float(vals.max()), mean=float(vals.mean()),
            peak_xy=[float((xx[top] + 0.5) * sx), float((yy[top] + 0.5) * sy)]))
    out.sort(key=lambda r: -r.peak)
    return out[:top_k]


def _maps(seed: int):
    import cv2

    rng = np.random.default_rng(seed)
    for shape in ((32, 32), (64, 48), (256, 256), (7, 300)):
        for sigma in (0.0, 1.5, 4.0):
            m = rng.random(shape).astype(np.float32)
            yield cv2.GaussianBlur(m, (0, 0), sigma) if sigma else m
    yield np.zeros((32, 32), np.float32)  # a constant map: one region, the whole frame
    clipped = np.clip(rng.random((64, 64)).astype(np.float32) * 2, 0, 1)  # saturated: many pixels share the peak
    yield clipped


def test_the_fast_regions_equal_the_reference():
    from lineguard.runtime.stages.findings import default_level, map_stats

    n = 0
    for amap in _maps(0):
        stats = map_stats(amap)
        assert stats["p99"] == pytest.approx(float(np.percentile(amap, 99)), rel=1e-6, abs=1e-7)
        level = default_level(amap, None)
        med = float(np.median(amap))
        assert level == pytest.approx(med + 0.5 * (float(amap.max()) - med), rel=1e-6, abs=1e-7)
        for frame_hw in ((256, 256), (480, 640)):
            for top_k in (1, 3):
                got = regions(amap, frame_hw, level, top_k)
                want = _reference_regions(amap, frame_hw, level, top_k)
                assert [r.to_dict() for r in got] == [dataclasses.asdict(r) for r in want]
                n += 1
            t = float(np.percentile(amap, 90))
            assert hottest_region(amap, frame_hw, t).to_dict() == _reference_regions(amap, frame_hw, t, 1)[0].to_dict()
    assert n > 50


def test_a_batch_summary_equals_each_maps_own():
    """The station summarizes a batch's maps together (mixed shapes where a graph takes any size)."""
    from lineguard.runtime.stages.findings import summarize

    maps = list(_maps(1)) + list(_maps(2))
    for m, s in zip(maps, summarize(maps)):
        assert s.min == float(m.min()) and s.max == float(m.max())
        assert s.mean == pytest.approx(float(m.mean()), rel=1e-6)
        assert s.p50 == pytest.approx(float(np.median(m)), rel=1e-6, abs=1e-7)
        assert s.p99 == pytest.approx(float(np.percentile(m, 99)), rel=1e-6, abs=1e-7)
        assert summarize([m])[0] == s  # alone or in a batch: the same figures
