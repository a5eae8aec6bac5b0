"""`lineguard demo`: the default bundle's build and cache, the live run over real processes,
Ctrl-C, and the scoring against the line's ground truth."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import lg

from lineguard.demo.truth import FrameTruth, ddqa_answers


def _truth(tmp_path: Path, x: int, defect: str = "scratch") -> FrameTruth:
    """A 64-px part whose mask is a 6×4 block at rows 10-13, columns 40-45 of the part."""
    src = tmp_path / "cat" / "test" / defect / "000.png"
    src.parent.mkdir(parents=True)
    cv2.imwrite(str(src), np.zeros((64, 64, 3), np.uint8))
    m = np.zeros((64, 64), np.uint8)
    m[10:14, 40:46] = 255
    mp = tmp_path / "cat" / "ground_truth" / defect / "000_mask.png"
    mp.parent.mkdir(parents=True)
    cv2.imwrite(str(mp), m)
    return FrameTruth(0, 0, "tile", defect, src, True, x)


def test_truth_places_the_mask_where_the_part_is_in_the_frame(tmp_path):
    t = _truth(tmp_path, 16)
    m = t.mask((64, 96))
    assert m.sum() == 24 and m[10:14, 56:62].all()
    t.x = -42  # leaving on the left: only the last 4 of its 6 columns are in view
    assert t.mask((64, 96)).sum() == 16


def test_ddqa_answers_use_the_parts_own_cells_and_boxes(tmp_path):
    t = _truth(tmp_path, 16)
    found = t.mask((64, 96))
    ok = ddqa_answers(t, True, found, "scratch", 64)
    assert ok["AD"] and ok["RDL"] and ok["DFM"] and ok["DC"] and ok["DFM_iou"] == 1.0
    shifted = np.roll(found, 30, axis=0)  # same shape, wrong place: another cell, no box overlap
    bad = ddqa_answers(t, True, shifted, "crack", 64)
    assert not bad["RDL"] and not bad["DFM"] and not bad["DC"]
    missed = ddqa_answers(t, False, None, None, 64)
    assert missed == {"AD": False, "RDL": False, "DFM": False, "DFM_iou": 0.0, "DC": False}


def test_pixel_f1_matches_scikit_learn(tmp_path):
    from sklearn.metrics import f1_score

    from lineguard.demo.report import FrameResult, summarize

    t = _truth(tmp_path, 16)
    truth = [t, FrameTruth(1, 1, "tile", "good", t.source, True, 16)]
    rng = np.random.default_rng(0)
    results = []
    for i in range(2):
        r = FrameResult(i, sent=1.0, verdict="defect", score=0.9 - 0.5 * i, verdict_at=1.05 + i)
        r.mask = rng.random((64, 96)) < 0.01
        r.mask[10:14, 56:60] = i == 0
        results.append(r)
    s = summarize(results, truth, {"sent": 2, "failed": 0}, {}, 1.0, False, (64, 96), 64)
    y = np.concatenate([truth[i].mask((64, 96)).ravel() for i in range(2)])
    p = np.concatenate([r.mask.ravel() for r in results])
    assert s["pixel_f1"] == pytest.approx(f1_score(y, p), abs=1e-4)
    assert s["image_auroc"] == 1.0 and s["verdicts"] == 2 and s["unanswered"] == 0


@pytest.mark.slow
def test_default_build_is_cached_and_rebuilt_when_its_inputs_change(tmp_path):
    pytest.importorskip("torch")
    from lineguard.demo.build import EXPLAINER_PROMPT, DefaultConfig, build_default
    from lineguard.runtime.bundle import Bundle

    small = {"parts": "tile", "n": 8, "size": 96, "expert_steps": 3, "shots": 1, "lot": 8,
             "sam_arch": "custom:32:1:2:0", "sam_size": 64, "sam_steps": 2, "explainer_steps": 3}
    cfg = DefaultConfig(**small)
    b = build_default(tmp_path, cfg, progress=False)
    bundle = Bundle.load(b)
    assert bundle.stage("expert")["kind"] == "onnx" and "image" in bundle.thresholds
    # all three models, trained here: SAM prompted by the expert's map too, the explainer with its prompt
    assert bundle.stage("sam")["options"]["mask_prompt"] == "expert_map"
    assert bundle.stage("sam")["variants"]["fp32"]["provenance"]["adapted"]["steps"] == 2
    assert bundle.stage("llm")["prompt"] == EXPLAINER_PROMPT and "int4" in bundle.stage("llm")["variants"]
    built = json.loads((b.parent / "build.json").read_text())
    assert set(built["masks_on_line"]["arms"]) == {"expert", "sam_roi"}
    assert (b.parent / "data" / "line.avi").is_file() and (b.parent / "build.json").is_file()
    stamp = (b / "manifest.json").stat().st_mtime_ns
    assert build_default(tmp_path, cfg, progress=False) == b  # reused, not rebuilt
    assert (b / "manifest.json").stat().st_mtime_ns == stamp
    b2 = build_default(tmp_path, DefaultConfig(**small, seed=1), progress=False)
    assert b2 != b and Bundle.load(b2) and not b.parent.exists()  # the stale build is removed


@pytest.mark.slow
def test_demo_serves_the_line_live_and_scores_it(full_bundle, tmp_path):
    out = tmp_path / "report"
    r = lg("demo", "--bundle", full_bundle, "--duration", "3", "--rate", "8", "--out", out, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout[r.stdout.index("{"):])
    assert s["frames_sent"] == 24 and s["unanswered"] == 0 and s["verdicts"] + s["errors"] == 24
    assert s["latency_ms"]["p50"] is not None and s["rate_fps"] > 0
    assert set(s["ddqa_accuracy"]) == {"AD", "RDL", "DFM", "DC"}
    assert s["server"].get("drained") is True  # the server was stopped cleanly, its queues drained
    for f in ("summary.json", "summary.png", "results.jsonl", "serve.log"):
        assert (out / f).is_file(), f
    topics = {json.loads(x)["topic"] for x in (out / "results.jsonl").read_text().splitlines()}
    assert "verdict" in topics


def _terminal_sigint() -> None:
    """Ctrl-C as in a terminal: a test run in the background (CI, `cmd &`) inherits SIGINT
    ignored, and Python then never raises KeyboardInterrupt in the child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_stops_camera_and_server_and_still_reports(full_bundle, tmp_path):
    out = tmp_path / "report"
    p = subprocess.Popen([sys.executable, "-m", "lineguard", "demo", "--bundle", str(full_bundle), "--duration",
                          "120", "--rate", "5", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=_terminal_sigint)
    deadline = time.time() + 120
    line = ""
    while time.time() < deadline and not line.startswith("frame"):
        line = p.stdout.readline()
        assert line or p.poll() is None, p.stderr.read()[-2000:]
    p.send_signal(signal.SIGINT)
    try:
        rest, err = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        p.kill()
        log = out / "serve.log"
        pytest.fail("the demo did not stop after Ctrl-C; serve.log ends: "
                    + (log.read_text()[-1500:] if log.is_file() else "(none)"))
    assert p.returncode == 130, err[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["interrupted"] and s["frames_sent"] < 600 and s["verdicts"] >= 1
    assert s["server"].get("drained") is not None  # the server reported its own clean stop
    left = subprocess.run(["pgrep", "-f", str(full_bundle)], capture_output=True, text=True).stdout.split()
    assert not left, "a served process outlived the demo"


def test_demo_refuses_a_bad_bundle_in_one_line(tmp_path):
    r = lg("demo", "--bundle", tmp_path / "nope", "--out", tmp_path / "o")
    assert r.returncode != 0 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = lg("demo", "--duration", "0")
    assert r.returncode != 0 and "--duration" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_sigterm_stops_the_demo_like_ctrl_c(full_bundle, tmp_path):
    """`kill` (a service manager, a CI timeout) must not orphan the server: SIGTERM cleans up too."""
    out = tmp_path / "report"
    p = subprocess.Popen([sys.executable, "-m", "lineguard", "demo", "--bundle", str(full_bundle), "--duration",
                          "120", "--rate", "5", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    line = ""
    deadline = time.time() + 120
    while time.time() < deadline and not line.startswith("frame"):
        line = p.stdout.readline()
        assert line or p.poll() is None, p.stderr.read()[-2000:]
    p.terminate()
    _, err = p.communicate(timeout=240)
    assert p.returncode == 130, err[-2000:]
    assert json.loads((out / "summary.json").read_text())["interrupted"]
    left = subprocess.run(["pgrep", "-f", str(full_bundle)], capture_output=True, text=True).stdout.split()
    assert not left, "a served process outlived the demo"
