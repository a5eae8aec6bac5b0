"""Regions, boxes and 3×3 cells from anomaly maps, checked against hand-made maps."""

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
