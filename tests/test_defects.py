"""Defect masks from the expert's map: prompts, the expert-only fallback, SAM in frame and ROI modes."""

import numpy as np
import pytest

from lineguard.runtime.stages.defects import find_defects, prompts, roi_crop


def blob_map(size: int, centres: list[tuple[int, int, float]], r: float = 3.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    amap = np.zeros((size, size), np.float32)
    for cx, cy, peak in centres:
        amap = np.maximum(amap, peak * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
    return amap


def test_prompts_are_hottest_first_with_padded_boxes_and_peak_points():
    amap = blob_map(64, [(10, 12, 2.0), (40, 50, 5.0)])
    p = prompts(amap, (256, 256), level=1.0, top_k=3)
    assert len(p) == 2
    (box0, pt0, r0), (box1, pt1, r1) = p
    assert r0.peak > r1.peak and r0.cell == "bottom-center"
    assert pt0[0].tolist() == [pytest.approx((40 + 0.5) * 4), pytest.approx((50 + 0.5) * 4)]  # the peak, frame px
    x0, y0, x1, y1 = r0.box
    assert box0[0] < x0 and box0[1] < y0 and box0[2] > x1 and box0[3] > y1  # padded around the region
    assert len(prompts(amap, (256, 256), level=1.0, top_k=1)) == 1
    assert prompts(amap, (256, 256), level=9.0) == []


def test_without_sam_the_mask_is_the_thresholded_map():
    amap = blob_map(64, [(20, 20, 4.0)])
    frame = np.zeros((128, 192, 3), np.uint8)  # not the map's size or aspect
    (d,) = find_defects(frame, amap, {"pixel": 1.0})
    assert d.mask_source == "expert" and d.mask.shape == (128, 192)
    import cv2

    ref = cv2.resize(amap, (192, 128), interpolation=cv2.INTER_LINEAR) >= 1.0
    assert np.array_equal(d.mask, ref)
    assert d.region.box == [int(np.nonzero(ref)[1].min()), int(np.nonzero(ref)[0].min()),
                            int(np.nonzero(ref)[1].max()) + 1, int(np.nonzero(ref)[0].max()) + 1]
    assert d.to_dict()["mask_source"] == "expert" and d.region.cell == "top-left"
    assert find_defects(frame, amap * 0.1, {"pixel": 1.0}, flagged=False) == []  # nothing above the threshold
    # flagged by its image score all the same: the region around the peak is reported
    (peak,) = find_defects(frame, amap * 0.1, {"pixel": 1.0}, flagged=True)
    assert peak.region.cell == "top-left" and peak.mask.any()


def test_flat_maps_and_tiny_frames_do_not_crash():
    frame = np.zeros((1, 1), np.uint8)
    assert find_defects(frame, np.zeros((8, 8), np.float32), {"pixel": 1.0}) == []
    (d,) = find_defects(np.zeros((3, 2), np.uint8), blob_map(8, [(4, 4, 3.0)], r=1.0), {"pixel": 1.0})
    x0, y0, x1, y1 = d.region.box
    assert d.mask.shape == (3, 2) and 0 <= x0 < x1 <= 2 and 0 <= y0 < y1 <= 3


def test_roi_crop_holds_the_boxes_and_stays_in_frame():
    x0, y0, x1, y1 = roi_crop([np.array([10, 20, 30, 40.0]), np.array([50, 60, 70, 65.0])], (100, 200), 64)
    assert (x0, y0) >= (0, 0) and x1 <= 200 and y1 <= 100
    assert x0 <= 10 and y0 <= 20 and x1 >= 70 and y1 >= 65 and x1 - x0 >= 64 and y1 - y0 >= 64
    assert roi_crop([np.array([0, 0, 5, 5.0])], (40, 30), 64) == (0, 0, 30, 40)  # frame smaller than min
    x0, y0, x1, y1 = roi_crop([np.array([10.6, 20.4, 80.5, 90.2])], (300, 300), 8)  # fractional, no growth
    assert (x0, y0) <= (10, 20) and x1 >= 81 and y1 >= 91  # never cuts the padded box
    assert roi_crop([np.array([290, 290, 300, 300.0])], (300, 300), 64) == (236, 236, 300, 300)  # at the border


@pytest.fixture(scope="module")
def sam(tmp_path_factory: pytest.TempPathFactory):
    torch = pytest.importorskip("torch", reason="building the small SAM needs the export extra")
    from lineguard.export.sam.checkpoint import build_sam, parse_arch
    from lineguard.export.sam.export import export_sam
    from lineguard.runtime.bundle import Bundle
    from lineguard.runtime.stages.sam import SamStage

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("sam")
    torch.save(build_sam(parse_arch("custom:64:2:2:1"), 128).state_dict(), tmp / "s.pth")
    return SamStage(Bundle.load(export_sam(tmp / "s.pth", "custom:64:2:2:1", tmp / "b", image_size=128)))


def _scene(offset: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A 300×400 window of one large textured scene with a bright defect, and a frame-sized map of it."""
    rng = np.random.default_rng(0)
    big = rng.integers(60, 120, (500, 600, 3)).astype(np.uint8)
    big[230:250, 300:330] = (240, 240, 60)
    dx, dy = offset
    frame = np.ascontiguousarray(big[dy : dy + 300, dx : dx + 400])
    amap = np.zeros((500, 600), np.float32)
    amap[225:255, 295:335] = 3.0
    amap[238:242, 312:318] = 5.0
    return frame, np.ascontiguousarray(amap[dy : dy + 300, dx : dx + 400])


def test_sam_frame_mode_gives_sam_masks(sam):
    frame, amap = _scene((100, 100))
    defects = find_defects(frame, amap, {"pixel": 2.0}, sam, mode="frame")
    assert len(defects) == 1 and defects[0].mask.shape == (300, 400)
    d = defects[0]
    assert d.mask_source in ("sam", "expert") and d.sam_iou is not None


def test_roi_masks_map_back_to_frame_pixels_exactly(sam):
    # the same content at two positions in the frame: ROI masks are the same mask, shifted
    a_frame, a_map = _scene((100, 100))
    b_frame, b_map = _scene((140, 90))
    (a,) = find_defects(a_frame, a_map, {"pixel": 2.0}, sam, mode="roi", min_roi=96)
    (b,) = find_defects(b_frame, b_map, {"pixel": 2.0}, sam, mode="roi", min_roi=96)
    assert a.mask.any()
    ay, ax = np.nonzero(a.mask)
    by, bx = np.nonzero(b.mask)
    assert np.array_equal(ax - 40, bx) and np.array_equal(ay + 10, by)
    assert a.region.box[0] - 40 == b.region.box[0] and a.region.box[1] + 10 == b.region.box[1]


def test_inspect_reports_sam_masks_for_flagged_frames(bundle_dir, synth, tmp_path):
    """An expert bundle with SAM added and a threshold: flagged frames get SAM masks and a mask PNG."""
    import json
    import shutil
    from pathlib import Path

    torch = pytest.importorskip("torch")
    from helpers import lg

    from lineguard.export.sam.checkpoint import build_sam, parse_arch

    b = Path(shutil.copytree(bundle_dir, tmp_path / "b"))
    torch.manual_seed(0)
    torch.save(build_sam(parse_arch("custom:64:2:2:1"), 128).state_dict(), tmp_path / "s.pth")
    assert lg("export", "sam", "--checkpoint", tmp_path / "s.pth", "--model-type", "custom:64:2:2:1",
              "--image-size", 128, "--bundle", b).returncode == 0
    assert lg("calibrate", b, "--dataset", synth).returncode == 0
    r = lg("inspect", b, synth / "test", "--json", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    flagged = [x for x in res if x["verdict"] == "defect"]
    assert flagged and all("defects" in x for x in flagged)
    assert not any("defects" in x for x in res if x["verdict"] == "good")
    d = flagged[0]["defects"][0]
    assert d["mask_source"] in ("sam", "expert") and set(d) >= {"box", "area_px", "cell", "peak", "mean"}
    import cv2

    mask = cv2.imread(flagged[0]["mask"], cv2.IMREAD_GRAYSCALE)
    assert mask.shape == tuple(flagged[0]["size"][::-1]) and mask.any()
    table = lg("inspect", b, synth / "test")
    assert "defects" in table.stdout.splitlines()[0]
