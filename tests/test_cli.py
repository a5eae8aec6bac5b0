"""The `lineguard` command as a user runs it: a real subprocess, real files."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import lg


def test_inspect_json_is_the_only_stdout_and_bad_files_do_not_stop_the_rest(bundle_dir, synth, tmp_path):
    gray = cv2.cvtColor(cv2.imread(str(synth / "test" / "blob" / "000.png")), cv2.COLOR_BGR2GRAY)
    odd = cv2.resize(gray, (301, 97))  # grayscale, not square, not the model's size
    cv2.imwrite(str(tmp_path / "odd.png"), odd)
    (tmp_path / "notes.png").write_text("this is not a picture")
    r = lg("inspect", bundle_dir, tmp_path / "odd.png", tmp_path / "notes.png", synth / "test" / "good",
           "--json", "--out", tmp_path / "ov")
    assert r.returncode == 1  # one file failed
    results = json.loads(r.stdout)  # nothing but JSON on stdout
    assert [Path(x["path"]).name for x in results[:2]] == ["odd.png", "notes.png"]
    assert len(results) == 2 + 4
    assert "not an image" in results[1]["error"]
    assert "notes.png: not an image OpenCV can decode" in r.stderr
    odd_result = results[0]
    assert odd_result["size"] == [301, 97]
    x0, y0, x1, y1 = odd_result["hottest"]["box"]
    assert 0 <= x0 < x1 <= 301 and 0 <= y0 < y1 <= 97
    overlay = cv2.imread(odd_result["overlay"])
    assert overlay.shape == (97, 301, 3)
    assert odd_result["verdict"] is None  # not calibrated: no verdict invented


def test_inspect_table(bundle_dir, synth):
    r = lg("inspect", bundle_dir, synth / "test")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["image", "score", "norm", "verdict"]
    assert any(line.startswith("blob/000.png") and "uncalibrated" in line for line in lines)


@pytest.mark.parametrize("args, reason", [
    (["inspect"], "the following arguments are required"),
    (["inspect", "B", "x.png", "--device", "npu"], "invalid choice: 'npu'"),
    (["export", "expert", "--out", "o", "--size", "-3"], "-3 must be > 0"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_one_line(args, reason):
    r = lg(*args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and reason in r.stderr


def test_broken_bundle_is_refused_naming_the_file(bundle_dir, synth, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundle_dir, b)
    with open(b / "expert" / "model.fp32.onnx", "ab") as f:
        f.write(b"\0")
    r = lg("inspect", b, synth / "test" / "good" / "000.png")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "model.fp32.onnx: changed since it was written" in r.stderr


def test_info(bundle_dir):
    r = lg("info", bundle_dir)
    assert r.returncode == 0 and "files verified" in r.stdout and "map Pearson" in r.stdout
    assert json.loads(lg("info", bundle_dir, "--json").stdout)["format"] == "lineguard-bundle"


def test_export_errors_are_one_line_and_leave_nothing(tmp_path, bundle_dir):
    pytest.importorskip("torch")
    (tmp_path / "empty").mkdir()
    r = lg("export", "expert", "--train", tmp_path / "empty", "--out", tmp_path / "o")
    assert r.returncode == 1 and "empty: no image files" in r.stderr and not (tmp_path / "o").exists()
    r = lg("export", "expert", "--train", tmp_path / "missing", "--out", tmp_path / "o")
    assert r.returncode == 1 and "missing: no such folder" in r.stderr
    r = lg("export", "expert", "--kind", "onnx", "--out", tmp_path / "o")
    assert r.returncode == 1 and "--kind onnx needs --model FILE" in r.stderr
    r = lg("export", "expert", "--train", tmp_path / "empty", "--out", bundle_dir)
    assert r.returncode == 1 and "already exists (pass --force" in r.stderr


def test_export_cli_end_to_end(synth, tmp_path):
    pytest.importorskip("torch")
    r = lg("export", "expert", "--train", synth, "--out", tmp_path / "b", "--size", "64", "--score", "max")
    assert r.returncode == 0, r.stderr
    assert "random weights" in r.stderr  # the warning a user must see
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["product"] == "tile" and m["stages"]["expert"]["options"]["score_mode"] == "max"
    assert np.isfinite(m["stages"]["expert"]["variants"]["fp32"]["parity"]["map_pearson"])


def test_logs_get_no_progress_bars_and_the_table_names_files_as_given(bundle_dir, synth, tmp_path):
    """stderr to a file or a pipe (not a terminal): no carriage-return bars; a symlink keeps its name."""
    r = lg("ddqa", "build", "--dataset", synth, "--out", tmp_path / "q.jsonl")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "%|" not in r.stderr
    src = next((synth / "test" / "blob").iterdir())
    (tmp_path / "alias.png").symlink_to(src)
    r = lg("inspect", bundle_dir, tmp_path / "alias.png")
    assert r.returncode == 0, r.stderr
    assert "alias.png" in r.stdout and src.name not in r.stdout
    assert "\r" not in r.stderr


def test_calibrate_logs_quietly_and_on_a_terminal_only(bundle_dir, synth, tmp_path):
    """`calibrate ... 2>&1 | cat` gets no bars; --quiet keeps warnings only, before or after the command."""
    import shutil

    b = tmp_path / "b"
    shutil.copytree(bundle_dir, b)
    r = lg("calibrate", b, "--normal", synth, "--dataset", synth)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "%|" not in r.stderr and "k-fold" not in r.stderr
    for args in (("-q", "quantize", b), ("quantize", b, "--quiet")):
        r = lg(*args, "--normal", synth, "--precision", "int8", "--calib-images", "4", "--every", "4")
        assert r.returncode == 0, r.stderr
        assert "INFO" not in r.stderr and "\r" not in r.stderr
    r = lg("quantize", b, "--normal", synth, "--precision", "int8", "--calib-images", "4", "--every", "4")
    assert "INFO lineguard" in r.stderr  # a gate's pass or fail is an informational line, shown by default


def test_serve_args_may_start_with_a_dash():
    from lineguard.cli.main import build_parser

    argv = ["bench", "B", "--images", "D", "--rate", "5", "--serve-args", "--no-background-idle", "--json"]
    a = build_parser().parse_args(argv)
    assert a.serve_args == "--no-background-idle" and a.json
    a = build_parser().parse_args(["bench", "B", "--images", "D", "--rate", "5", "--serve-args",
                                   "--max-batch 4 --no-sam"])
    assert a.serve_args == "--max-batch 4 --no-sam"
