"""The generated product line: deterministic, every defect masked, readable as MVTec and as video."""

from __future__ import annotations

import csv
import hashlib

import cv2
import numpy as np
import pytest
from helpers import lg

from lineguard.ddqa.dataset import walk
from lineguard.synth.defects import DEFECTS
from lineguard.synth.line import make_line, sample
from lineguard.synth.parts import PARTS


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def test_same_seed_same_line_other_seed_other_line(tmp_path):
    a = make_line(tmp_path / "a", n=4, size=96, seed=3, video=False, progress=False)
    make_line(tmp_path / "b", n=4, size=96, seed=3, video=False, progress=False)
    make_line(tmp_path / "c", n=4, size=96, seed=4, video=False, progress=False)
    da, db, dc = (_digest(tmp_path / k) for k in "abc")
    assert da == db and da.keys() == dc.keys() and da != dc
    assert a["images"]["disc/test/chip"] == 1 and a["images"]["label/train/good"] == 4


def test_every_defect_is_masked_on_its_part_and_the_layout_reads_as_mvtec(tmp_path):
    make_line(tmp_path, n=8, size=128, seed=0, video=False, progress=False)
    for part in PARTS:
        items, problems = walk(tmp_path / part)
        assert problems == [], problems
        assert {i.defect for i in items} == {"good", *DEFECTS}
        for it in items:
            assert (it.mask is not None) == (it.defect != "good") and (it.mask is None or it.mask.any())
            img = cv2.imread(str(tmp_path / part / it.image))
            assert img.shape == (128, 128, 3)


def test_defects_range_from_a_few_pixels_up_and_change_the_image():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(30):
        img, mask = sample("disc", "hole", rng, 256)
        areas.append(int(mask.sum()))
    assert min(areas) <= 30 and max(areas) >= 300  # log-uniform sizes: specks and large pits
    for part in PARTS:
        for d in DEFECTS:
            r1, r2 = np.random.default_rng(7), np.random.default_rng(7)
            good, _ = PARTS[part](r1, 128)
            bad, mask = sample(part, d, r2, 128)
            diff = np.abs(bad.astype(int) - good.astype(int)).sum(axis=2) > 0
            assert mask.any() and diff[mask].mean() > 0.5, (part, d)  # the masked pixels really changed


def test_line_video_and_its_ground_truth(tmp_path):
    rep = make_line(tmp_path, n=4, parts="disc,label", defects="hole,stain", size=96, seed=1, progress=False)
    v = rep["video"]
    cap = cv2.VideoCapture(v["file"])
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (96, 144, 3)
        frames += 1
    rows = list(csv.DictReader(open(v["truth"])))
    assert frames == v["frames"] == len(rows) == v["parts"] * 14  # 6 in, 2 centred, 6 out
    assert v["parts"] == 2 * (1 + 2)  # per part type: test/good plus one per defect type
    assert {r["defect"] for r in rows} == {"good", "hole", "stain"}
    assert sum(int(r["centred"]) for r in rows) == 2 * v["parts"]
    centre = [r for r in rows if r["centred"] == "1"][0]
    assert int(centre["x"]) == (144 - 96) // 2  # where the part's left edge is in the frame


def test_triggered_line_is_one_centred_frame_per_part(tmp_path):
    rep = make_line(tmp_path, n=4, parts="tile", defects="crack", size=64, seed=2, progress=False, trigger=True)
    v = rep["video"]
    rows = list(csv.DictReader(open(v["truth"])))
    assert v["triggered"] and v["frames"] == v["parts"] == len(rows) == 2 and (v["width"], v["height"]) == (64, 64)
    assert all(r["centred"] == "1" and r["x"] == "0" for r in rows)
    cap = cv2.VideoCapture(v["file"])
    for r in rows:  # each frame is its part's image (up to MJPG's loss)
        ok, frame = cap.read()
        assert ok and frame.shape == (64, 64, 3)
        assert np.abs(frame.astype(int) - cv2.imread(r["source"]).astype(int)).mean() < 6


def test_bad_arguments_are_one_line(tmp_path):
    r = lg("synth", "--out", tmp_path / "x", "--parts", "disc,gear")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "use a comma list of tile, disc, label" in r.stderr
    r = lg("synth", "--out", tmp_path / "x", "--n", "2")
    assert r.returncode == 1 and "need at least 4" in r.stderr
    r = lg("synth", "--out", tmp_path / "ok", "--n", "4", "--size", "64", "--parts", "tile", "--no-video")
    assert r.returncode == 0 and (tmp_path / "ok" / "tile" / "ground_truth" / "chip").is_dir()


@pytest.mark.parametrize("part", list(PARTS))
def test_parts_vary_with_the_seed(part):
    a, _ = PARTS[part](np.random.default_rng(1), 96)
    b, _ = PARTS[part](np.random.default_rng(2), 96)
    assert a.shape == b.shape == (96, 96, 3) and np.abs(a.astype(int) - b.astype(int)).mean() > 2
