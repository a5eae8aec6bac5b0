"""The default bundle comes out the same everywhere: two builds of one key, one of them on a loaded
machine and under another Python hash seed, give the same models, thresholds and figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="building the default bundle needs the export extra (torch)")

# a reduced default: the same steps and code, small enough for a test (about 45 s a build on 2 cores)
BUILD = """
import json, sys
from pathlib import Path
from lineguard.demo.build import DefaultConfig, build_default
cfg = DefaultConfig(n=8, lot=8, size=128, expert_steps=6, explainer_steps=6, sam_steps=2, shots=1,
                    sam_arch="custom:64:2:2:1", sam_size=128)
b = build_default(sys.argv[1], cfg, progress=False)
m = json.loads((b / "manifest.json").read_text())
rec = json.loads((b.parent / "build.json").read_text())
print(json.dumps({"files": {k: v["sha256"] for k, v in m["files"].items()}, "thresholds": m["thresholds"],
                  "normalization": m["normalization"], "trained": rec["trained"], "masks": rec["masks_on_line"]}))
"""


def _build(cache: Path, hash_seed: str) -> dict:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    r = subprocess.run([sys.executable, "-c", BUILD, str(cache)], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])


def _without_timings(masks: dict) -> dict:
    return {a: {k: v for k, v in m.items() if k != "ms_per_image"} for a, m in masks["arms"].items()}


def test_two_builds_one_on_a_busy_machine_are_the_same(tmp_path):
    idle = _build(tmp_path / "a", "1")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # one of the cores kept busy
    try:
        loaded = _build(tmp_path / "b", "2")
    finally:
        busy.kill()
        busy.wait()
    # the report records the paths it was made from; everything else is byte for byte the same
    report = "calibration/calibration.json"
    assert {k: v for k, v in idle["files"].items() if k != report} == \
           {k: v for k, v in loaded["files"].items() if k != report}
    assert {"expert/model.fp32.onnx", "sam/encoder.fp32.onnx", "llm/model.int4.onnx"} <= set(idle["files"])
    assert idle["thresholds"] == loaded["thresholds"] and idle["normalization"] == loaded["normalization"]
    for t in (idle["trained"], loaded["trained"]):  # every model trained for exactly its steps
        assert all(m["steps"] == m["of"] for m in t.values()), t
    strip = {k: {x: y for x, y in v.items() if x != "seconds"} for k, v in idle["trained"].items()}
    assert strip == {k: {x: y for x, y in v.items() if x != "seconds"} for k, v in loaded["trained"].items()}
    assert _without_timings(idle["masks"]) == _without_timings(loaded["masks"])


def test_a_time_limit_fails_the_training_instead_of_cutting_it(tmp_path):
    from helpers import lg

    from lineguard.synth.tiles import make_dataset

    data = make_dataset(tmp_path / "d", n_train=4, n_good=1, n_defect=2, size=64)
    r = lg("train", "expert", "--train", data, "--out", tmp_path / "e.onnx", "--size", "64", "--crop", "64",
           "--steps", "100000", "--minutes", "0.01")
    assert r.returncode == 1 and not (tmp_path / "e.onnx").exists()
    last = r.stderr.strip().splitlines()[-1]  # after the progress bars, one line says why
    assert last.startswith("lineguard train: error: train expert: the 0.01-minute limit was reached after "), last
