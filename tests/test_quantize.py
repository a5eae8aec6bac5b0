"""Quantized variants: QDQ INT8 with the bank tail, FP16, the TensorRT table, and the gate that admits them."""

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import lg
from sklearn.metrics import roc_auc_score

from lineguard.calibration.dataset import load_labelled
from lineguard.calibration.evaluate import Scored, score_frames
from lineguard.calibration.gate import Gate
from lineguard.calibration.quantize import tail_nodes
from lineguard.calibration.variants import build_variants
from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import tensorrt_available
from lineguard.runtime.bundle.tensorrt_native import trt_cache_from_table
from lineguard.runtime.errors import LineguardError
from lineguard.runtime.stages.expert import Expert


@pytest.fixture(scope="module")
def quantized(bundle_dir: Path, synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    b = Path(shutil.copytree(bundle_dir, tmp_path_factory.mktemp("q") / "bundle"))
    # a generous gate: 8 test images make one swapped pair worth 6 points; the gate's own
    # decisions are tested below with strict settings
    r = lg("quantize", b, "--normal", synth, "--dataset", synth, "--max-drop", "20", "--calib-images", "12")
    assert r.returncode == 0, r.stderr
    return b


def test_int8_variant_is_qdq_with_an_int8_tail_and_tracks_fp32(quantized, synth):
    b = Bundle.load(quantized)
    var = b.stage("expert")["variants"]["int8"]
    g = onnx.load(str(b.variant_path("expert", "int8")))
    ops = {n.op_type for n in g.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger"}  # the bank products, dynamically quantized
    assert var["provenance"]["tail"] == "int8 dynamic" and var["parity"]["passed"]
    data = load_labelled(synth, progress=False)
    ref = score_frames(Expert(b, "fp32"), data.frames, progress=False)
    q = score_frames(Expert(b, "int8"), data.frames, progress=False)
    # random-weight features at 128 px are harsh on int8 (real photos: test_mtd.py holds it to 0.95)
    assert np.corrcoef(ref.scores, q.scores)[0, 1] > 0.7
    assert var["parity"]["image_auroc"] == pytest.approx(roc_auc_score(data.labels, q.scores))


def test_fp16_keeps_the_tail_fp32(quantized):
    b = Bundle.load(quantized)
    stage = b.stage("expert")
    assert stage["variants"]["fp16"]["parity"]["passed"]
    g = onnx.load(str(b.variant_path("expert", "fp16")))
    halves = {i.name for i in g.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert len(halves) > 10  # the backbone's weights
    bank = {n.input[1] for n in g.graph.node if n.op_type == "Gemm"}
    assert bank and not bank & halves


def test_trt_table_and_options_are_in_the_bundle(quantized):
    b = Bundle.load(quantized)
    trt = b.stage("expert")["variants"]["trt"]
    assert trt["trt_options"]["calibration_table_name"] == "calibration.flatbuffers"
    assert (quantized / "expert" / "trt" / "calibration.flatbuffers").stat().st_size > 0
    table = json.loads((quantized / "expert" / "trt" / "calibration.json").read_text())
    g = onnx.load(str(b.variant_path("expert", "fp32")))
    tail_out = {o for n in g.graph.node if n.name in set(tail_nodes(g)) for o in n.output}
    conv_out = {n.output[0] for n in g.graph.node if n.op_type == "Conv" and n.name.startswith("/backbone")}
    assert conv_out <= set(table) and not tail_out & set(table)  # body ranged, bank tail left to fp16/fp32
    # the table ORT wrote converts to TensorRT's own cache (the native builder's input)
    cache = trt_cache_from_table(table, "TRT-100000-EntropyCalibration2").decode().splitlines()
    assert len(cache) == len(table) + 1
    name, hexscale = cache[1].split(": ")
    r = table[name]
    absmax = max(abs(r["lowest"]["data"][0] if isinstance(r["lowest"], dict) else r["lowest"]),
                 abs(r["highest"]["data"][0] if isinstance(r["highest"], dict) else r["highest"]))
    assert struct.unpack(">f", bytes.fromhex(hexscale))[0] == pytest.approx(absmax / 127, rel=1e-6)
    if not tensorrt_available():
        with pytest.raises(LineguardError, match="precision trt needs onnxruntime-gpu with TensorRT"):
            Expert(b, "trt")


def test_tail_is_every_bank_product_and_no_conv(bundle_dir):
    g = onnx.load(str(Bundle.load(bundle_dir).variant_path("expert", "fp32")))
    tail = set(tail_nodes(g))
    kinds = {n.name: n.op_type for n in g.graph.node}
    assert {n for n, k in kinds.items() if k == "Gemm"} <= tail
    assert not any(n.startswith("/backbone") for n in tail)
    assert any(kinds[n] == "Conv" for n in tail)  # the Gaussian smoothing of the map comes after the bank


def test_gate_rejects_and_keeps_fp32_after_sensitivity_retries(bundle_dir, synth, tmp_path):
    b = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    files = {p: p.read_bytes() for p in b.rglob("*") if p.is_file() and p.name != "manifest.json"}
    # a negative allowance fails every candidate: all four tries run, nothing is written
    summary = build_variants(b, str(synth), str(synth), ("int8",), max_drop=-1.0, calib_images=8, progress=False)
    tries = summary["int8"]["tries"]
    assert len(tries) == 4 and not summary["int8"]["written"]
    assert tries[0]["provenance"]["tail"] == "int8 dynamic" and tries[1]["provenance"]["tail"] == "fp32"
    q = [t["provenance"]["quantize_linear_nodes"] for t in tries]
    assert q[1] > q[2] > q[3]  # each sensitivity retry really keeps more of the graph fp32
    assert all(p.read_bytes() == data for p, data in files.items())
    bundle = Bundle.load(b)
    assert "int8" not in bundle.stage("expert")["variants"]
    assert "image_auroc drops" in bundle.stage("expert")["rejected"]["int8"]["reason"]


def test_gate_on_labels_and_on_normal_only(synth):
    data = load_labelled(synth, progress=False)
    rng = np.random.default_rng(0)
    maps = [rng.random(m.shape, np.float32) + 3 * m for m in data.masks]
    good = Scored(data.labels + rng.random(len(data.labels)) * 0.1, maps, 1.0)
    same = Gate().check(good, good, data)
    assert same["passed"] and same["image_auroc_drop_points"] == 0.0
    flipped = Scored(-good.scores, maps, 1.0)
    bad = Gate().check(good, flipped, data)
    assert not bad["passed"] and "image_auroc drops 100.00 points" in bad["reason"]
    noisy = Scored(good.scores, [rng.random(m.shape, np.float32) for m in data.masks], 1.0)
    normal_only = Gate(min_pearson=0.98).check(good, noisy, None)
    assert not normal_only["passed"] and "map Pearson" in normal_only["reason"]


def test_evaluate_cli_reports_each_variant(quantized, synth, tmp_path):
    r = lg("evaluate", quantized, "--dataset", synth, "--json", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "e.json").read_text())
    assert set(res["variants"]) >= {"fp32", "int8"}
    data = load_labelled(synth, progress=False)
    scores = score_frames(Expert(Bundle.load(quantized)), data.frames, progress=False).scores
    assert res["variants"]["fp32"]["image_auroc"] == pytest.approx(roc_auc_score(data.labels, scores))
    assert res["variants"]["fp32"]["speedup_vs_fp32"] == 1.0
    assert "int8" in r.stdout and "aupro" in r.stdout
    assert (tmp_path / "e.png").stat().st_size > 0
    bad = lg("evaluate", quantized, "--dataset", synth, "--precisions", "int4")
    assert bad.returncode == 1 and "has no int4 variant" in bad.stderr


@pytest.mark.parametrize("case", ["empty_normal", "bad_precision", "missing_dataset"])
def test_quantize_and_evaluate_bad_input_is_one_line(case, bundle_dir, synth, tmp_path):
    if case == "empty_normal":
        (tmp_path / "empty").mkdir()
        r, want = lg("quantize", bundle_dir, "--normal", tmp_path / "empty"), f"{tmp_path / 'empty'}: no image files"
    elif case == "bad_precision":
        r, want = lg("quantize", bundle_dir, "--normal", synth, "--precision", "int3"), "--precision int3: use some of"
    else:
        r, want = lg("evaluate", bundle_dir, "--dataset", tmp_path / "nope"), f"{tmp_path / 'nope' / 'test'}: no such folder"
    assert r.returncode == 1 and want in r.stderr and "Traceback" not in r.stderr


def test_trt_cache_conversion_is_absmax_over_127():
    cache = trt_cache_from_table({"x": {"lowest": -2.54, "highest": 1.0}}, "TRT-10000-EntropyCalibration2")
    header, line = cache.decode().splitlines()
    name, hexscale = line.split(": ")
    assert header.startswith("TRT-") and name == "x"
    assert struct.unpack(">f", bytes.fromhex(hexscale))[0] == pytest.approx(2.54 / 127, rel=1e-6)


@pytest.mark.gpu
def test_native_tensorrt_engine_builds(bundle_dir, tmp_path):
    if not tensorrt_available():
        pytest.skip("no GPU with TensorRT here: the native TensorRT builder runs only on a GPU station")
    from lineguard.runtime.bundle.engine import EngineOptions, native_trt_engine

    path = Bundle.load(bundle_dir).variant_path("expert", "fp32")
    out = native_trt_engine(path, EngineOptions(trt_fp16=True, trt_cache_dir=str(tmp_path)), max_batch=4)
    again = native_trt_engine(path, EngineOptions(trt_fp16=True, trt_cache_dir=str(tmp_path)), max_batch=4)
    assert out.stat().st_size > 0 and again == out  # cached, not rebuilt


def test_tail_holds_every_chunk_of_a_chunked_bank_search():
    from onnx import TensorProto, helper

    f = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    nodes = [helper.make_node("Relu", ["x"], ["feat"], name="body"),
             helper.make_node("MatMul", ["feat", "b0"], ["d0"], name="chunk0"),
             helper.make_node("MatMul", ["feat", "b1"], ["d1"], name="chunk1"),  # a sibling, not a descendant
             helper.make_node("Min", ["d0", "d1"], ["y"], name="min")]
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [4, 2], [0.0] * 8) for n in ("b0", "b1")]
    g = helper.make_model(helper.make_graph(nodes, "g", [f], [y], inits))
    assert tail_nodes(g) == ["chunk0", "chunk1", "min"]
