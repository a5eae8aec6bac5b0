"""The self-supervised default expert: synthetic anomalies, training, export and import."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the export extra (torch)")

from helpers import lg  # noqa: E402

from lineguard.train.anomalies import MIN_AREA, VISIBLE, paste_anomaly  # noqa: E402


def test_pasted_anomalies_are_labelled_where_they_visibly_change_the_image():
    rng = np.random.default_rng(0)
    base = np.random.default_rng(1).integers(90, 160, (96, 96, 3), dtype=np.uint8)
    other = np.random.default_rng(2).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    labelled = 0
    for _ in range(60):
        out, label = paste_anomaly(base, other, rng)
        assert out.shape == base.shape and out.dtype == np.uint8 and label.shape == base.shape[:2]
        change = np.abs(out.astype(np.float32) - base).max(axis=2)
        assert (change[label] > VISIBLE).all()  # nothing invisible is called a defect
        if label.any():
            labelled += 1
            assert label.sum() >= 1
    assert labelled > 40  # most pastes leave a visible defect
    # the same seed pastes the same anomaly
    a = paste_anomaly(base, other, np.random.default_rng(7))
    b = paste_anomaly(base, other, np.random.default_rng(7))
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert MIN_AREA > 1


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
    from lineguard.train.expert import ExpertTrainConfig, train_expert

    out = tmp_path_factory.mktemp("selfsup") / "expert.onnx"
    info = train_expert(synth, out, ExpertTrainConfig(size=128, crop=64, batch=4, steps=6, width=8), progress=False)
    return out, info


def test_trained_expert_exports_with_parity_and_a_record(trained):
    out, info = trained
    assert out.is_file()
    assert info["parity"]["map_pearson"] > 0.999
    assert info["training"]["steps"] == 6 and info["training"]["train_images"] == 16
    assert json.loads(out.with_suffix(".json").read_text())["input"] == {"layout": "NHWC", "dtype": "uint8",
                                                                         "color": "BGR", "size": 128}


def test_trained_expert_imports_as_a_bundle_with_its_record(trained, synth, tmp_path):
    """The graph goes through `export expert --kind onnx` as any ONNX expert would; the record
    beside it gives the colour order and the parity against PyTorch measured at training."""
    from lineguard.runtime.bundle import Bundle
    from lineguard.runtime.imageio import read_image
    from lineguard.runtime.stages.expert import Expert

    out, _ = trained
    b = tmp_path / "b"
    r = lg("export", "expert", "--kind", "onnx", "--model", out, "--out", b)
    assert r.returncode == 0, r.stderr
    bundle = Bundle.load(b)
    spec = bundle.stage("expert")["input_spec"]
    assert (spec["layout"], spec["dtype"], spec["color"]) == ("NHWC", "uint8", "BGR")
    fp32 = bundle.stage("expert")["variants"]["fp32"]
    assert fp32["parity"]["map_pearson"] == trained[1]["parity"]["map_pearson"]
    assert fp32["provenance"]["trained"]["training"]["steps"] == 6
    img = read_image(sorted((synth / "test" / "blob").glob("*.png"))[0])
    res = Expert(bundle, "fp32")([img])[0]
    assert res.anomaly_map.shape[-2:] == (128, 128)
    assert 0.0 <= res.anomaly_map.min() and res.anomaly_map.max() <= 1.0  # a probability map
    assert np.isclose(res.score, res.anomaly_map.max(), atol=1e-5)  # DRAEM's score: the map's peak


def test_the_myriad_rule_warns_when_given_the_experts_own_training_images(trained, synth, tmp_path):
    """Its threshold is the highest score of normal images the expert has not seen: say so on the console."""
    out, _ = trained
    b = tmp_path / "b"
    assert lg("export", "expert", "--kind", "onnx", "--model", out, "--out", b).returncode == 0
    r = lg("calibrate", b, "--normal", synth / "train" / "good")
    assert r.returncode == 0, r.stderr
    assert "16 of 16 images" in r.stderr and "own training images" in r.stderr
    r = lg("calibrate", b, "--normal", synth / "test" / "good")  # held out: nothing to say
    assert r.returncode == 0 and "WARNING" not in r.stderr, r.stderr


def test_train_cli_errors_are_one_line(tmp_path):
    r = lg("train", "expert", "--train", tmp_path / "none", "--out", tmp_path / "e.onnx")
    assert r.returncode != 0 and "no such folder" in r.stderr and "Traceback" not in r.stderr
    r = lg("train", "expert", "--train", tmp_path, "--out", tmp_path / "e.onnx", "--crop", "512")
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_a_cnn_expert_without_a_product_tail_quantizes_to_int8(trained, synth, tmp_path):
    """Regression: with no MatMul tail, the tail pass asked ONNX Runtime to quantize an empty
    node list, which it reads as "every node", and it failed on the already-quantized body."""
    from lineguard.runtime.bundle import Bundle

    out, _ = trained
    b = tmp_path / "b"
    assert lg("export", "expert", "--kind", "onnx", "--model", out, "--out", b).returncode == 0
    r = lg("quantize", b, "--normal", synth, "--dataset", synth, "--precision", "int8", "--max-drop", "100")
    assert r.returncode == 0, r.stderr[-1500:]
    assert "int8" in Bundle.load(b).stage("expert")["variants"]
