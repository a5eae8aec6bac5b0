"""Calibration end to end: thresholds by each rule, atomic manifest updates, refusals of bad input."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import lg

pytest.importorskip("torch", reason="calibration refits the expert: needs the export extra")
from sklearn.metrics import f1_score, roc_auc_score  # noqa: E402

from lineguard.calibration.dataset import load_labelled, read_frames  # noqa: E402
from lineguard.calibration.evaluate import score_frames  # noqa: E402
from lineguard.calibration.refit import patchcore_refit  # noqa: E402
from lineguard.calibration.thresholds import folds, myriad_kfold  # noqa: E402
from lineguard.runtime.bundle import Bundle  # noqa: E402
from lineguard.runtime.errors import InputError  # noqa: E402
from lineguard.runtime.imageio import normal_images  # noqa: E402
from lineguard.runtime.stages.expert import Expert  # noqa: E402
from lineguard.runtime.stages.scoring import normalize  # noqa: E402


@pytest.fixture
def fresh(bundle_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the session bundle, so calibration can rewrite it."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def test_folds_are_disjoint_and_cover():
    f = folds(10, 3, seed=1)
    assert sorted(np.concatenate(f).tolist()) == list(range(10))
    assert [len(x) for x in f] == [4, 3, 3]
    with pytest.raises(InputError, match="too few for 3 folds"):
        folds(2, 3)


def test_myriad_threshold_is_the_max_held_out_score_and_above_in_bank_scores(bundle_dir, synth):
    bundle = Bundle.load(bundle_dir)
    frames = read_frames(normal_images(synth), progress=False)
    t = myriad_kfold(frames, patchcore_refit(bundle), k=3, progress=False)
    held = np.array(t["normal_scores"])
    assert t["image"] == pytest.approx(held.max())
    # the bundle's own bank holds every training patch's neighbourhood: scoring them in-bank
    # underestimates normal variation, which is what the folds are for
    in_bank = score_frames(Expert(bundle), frames, progress=False).scores
    assert np.median(held) > np.median(in_bank)


def test_calibrate_myriad_writes_thresholds_normalisation_and_report(fresh, synth):
    r = lg("calibrate", fresh, "--normal", synth / "train" / "good", "--folds", "3")
    assert r.returncode == 0, r.stderr
    assert "rule      myriad (3 folds) on 16 images" in r.stdout
    b = Bundle.load(fresh)  # files verified: the report was hashed into the manifest
    t = b.thresholds["image"]
    assert normalize(t, b.normalization) == pytest.approx(0.5)
    assert b.manifest["calibration"]["rule"] == "myriad"
    rep = json.loads((fresh / "calibration" / "calibration.json").read_text())
    assert rep["thresholds"]["rule"] == "myriad" and rep["thresholds"]["images"] == 16
    assert cv2.imread(str(fresh / "calibration" / "calibration.png")) is not None
    # inspect now gives verdicts, and a normalised score on the same side of 0.5 as the verdict
    out = json.loads(lg("inspect", fresh, synth / "test", "--json").stdout)
    for x in out:
        assert x["verdict"] in ("good", "defect")
        assert (x["score_norm"] >= 0.5) == (x["verdict"] == "defect")


def test_calibrate_f1_matches_sklearn(fresh, synth):
    r = lg("calibrate", fresh, "--dataset", synth)
    assert r.returncode == 0, r.stderr
    b = Bundle.load(fresh)
    data = load_labelled(synth, progress=False)
    scores = score_frames(Expert(b), data.frames, progress=False).scores
    t = b.thresholds["image"]
    best = max(f1_score(data.labels, scores >= s) for s in np.unique(scores))
    assert f1_score(data.labels, scores >= t) == pytest.approx(best)
    rep = json.loads((fresh / "calibration" / "calibration.json").read_text())
    assert rep["metrics"]["image_auroc"] == pytest.approx(roc_auc_score(data.labels, scores))
    assert "pixel" in b.thresholds


def test_manual_threshold_keeps_pixel_threshold_and_a_hand_edit_sits_at_half(fresh, synth):
    assert lg("calibrate", fresh, "--dataset", synth).returncode == 0
    pixel = Bundle.load(fresh).thresholds["pixel"]
    r = lg("calibrate", fresh, "--threshold", "2.5")  # no images: the earlier score range is kept
    assert r.returncode == 0, r.stderr
    b = Bundle.load(fresh)
    assert b.thresholds == {"image": 2.5, "pixel": pixel} and b.manifest["calibration"]["rule"] == "manual"
    # a line engineer edits the threshold in manifest.json by hand: verdicts and score_norm follow it
    m = json.loads((fresh / "manifest.json").read_text())
    m["thresholds"]["image"] = 1.25
    (fresh / "manifest.json").write_text(json.dumps(m))
    r = Expert(Bundle.load(fresh))([cv2.imread(str(next((synth / "test" / "good").iterdir())))])[0]
    assert (r.score_norm >= 0.5) == (r.score >= 1.25) == (r.verdict == "defect")


def _write_bad_mask(synth: Path, tmp_path: Path) -> Path:
    bad = Path(shutil.copytree(synth, tmp_path / "bad"))
    mask = next((bad / "ground_truth").rglob("*_mask.png"))
    cv2.imwrite(str(mask), np.zeros((7, 9), np.uint8))
    return mask


@pytest.mark.parametrize("case", ["empty", "missing", "few", "mask_size", "mask_missing", "not_bundle", "no_expert"])
def test_bad_input_is_one_line_and_leaves_the_bundle(case, fresh, synth, tmp_path):
    before = (fresh / "manifest.json").read_bytes()
    bundle, args = fresh, []
    if case == "empty":
        (tmp_path / "empty").mkdir()
        args, want = ["--normal", tmp_path / "empty"], f"{tmp_path / 'empty'}: no image files"
    elif case == "missing":
        args, want = ["--normal", tmp_path / "nope"], f"{tmp_path / 'nope'}: no such folder"
    elif case == "few":
        few = tmp_path / "few"
        few.mkdir()
        for p in normal_images(synth)[:2]:
            shutil.copy(p, few)
        args, want = ["--normal", few], "2 normal images are too few for 3 folds"
    elif case == "mask_size":
        mask = _write_bad_mask(synth, tmp_path)
        args, want = ["--dataset", tmp_path / "bad"], f"{mask}: mask is 9x7"
    elif case == "mask_missing":
        bad = Path(shutil.copytree(synth, tmp_path / "bad"))
        mask = next((bad / "ground_truth").rglob("*_mask.png"))
        mask.unlink()
        args, want = ["--dataset", bad], f"{mask}: missing mask"
    elif case == "no_expert":  # a bundle with another stage only
        bundle = Path(shutil.copytree(fresh, tmp_path / "other"))
        m = json.loads((bundle / "manifest.json").read_text())
        m["stages"] = {"sam": m["stages"]["expert"] | {"kind": "sam"}}
        (bundle / "manifest.json").write_text(json.dumps(m))
        args, want = ["--normal", synth], "no 'expert' stage (stages: sam)"
    else:
        bundle, args, want = tmp_path, ["--normal", synth], "manifest.json: missing"
    report = fresh / "calibration"
    r = lg("calibrate", bundle, *args)
    assert r.returncode == 1
    assert want in r.stderr
    assert len(r.stderr.strip().splitlines()[-1]) > 0 and "Traceback" not in r.stderr
    assert (fresh / "manifest.json").read_bytes() == before and not report.exists()
    assert not list(fresh.parent.glob(".bundle.tmp-*"))  # no half-written bundle left beside it
