"""`export triton` and `lineguard triton`: the repository loads in a real Triton server (the one in
the nvidia-pytriton wheel, CPU-only, or a system tritonserver) and answers as the local engine does."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import lg

from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import Engine
from lineguard.runtime.clients.tritonserver import pytriton_dist
from lineguard.runtime.imageio import list_images, read_image
from lineguard.runtime.ports import free_ports
from lineguard.runtime.stages.preprocess import to_batch

grpc = pytest.importorskip("tritonclient.grpc", reason="the Triton tests need tritonclient[grpc] (the dev extra)")


def has_server() -> bool:
    import shutil

    return bool(shutil.which("tritonserver") or pytriton_dist())


@pytest.fixture(scope="module")
def repo(served_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    r = lg("export", "triton", served_bundle, "--out", out, "--max-batch", "4")
    assert r.returncode == 0, r.stderr
    return out


def test_the_repository_says_what_it_serves(repo: Path, served_bundle: Path, tmp_path: Path) -> None:
    info = json.loads((repo / "lineguard.json").read_text())
    assert info["bundle_hash"] == Bundle.load(served_bundle).content_hash()
    config = (repo / "lineguard_expert" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "max_batch_size: 4" in config and "dynamic_batching" in config
    assert info["bundle_hash"] in config
    version = repo / "lineguard_expert" / str(info["models"]["expert"]["version"])
    assert (version / "model.py").is_file() and Bundle.load(version / "bundle").manifest == Bundle.load(
        served_bundle).manifest
    # the onnxruntime backend: the graph and a config Triton's own backend reads (structure only here)
    ort = tmp_path / "ort"
    r = lg("export", "triton", served_bundle, "--out", ort, "--backend", "onnxruntime", "--gpu")
    assert r.returncode == 0, r.stderr
    config = (ort / "lineguard_expert" / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in config and "KIND_GPU" in config
    assert next((ort / "lineguard_expert").glob("*/model.onnx")).is_file()
    bad = lg("export", "triton", served_bundle, "--out", tmp_path / "x", "--precision", "int4")
    assert bad.returncode != 0 and "--precision int4" in bad.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(not has_server(), reason="no Triton server here: pip install --no-deps nvidia-pytriton "
                                             "(make test does) or put tritonserver on PATH")
def test_triton_answers_as_the_local_engine(repo: Path, served_bundle: Path, synth: Path) -> None:
    grpc_port, http_port, metrics_port = free_ports(3)
    proc = subprocess.Popen([sys.executable, "-m", "lineguard", "triton", str(repo), "--grpc-port", str(grpc_port),
                             "--http-port", str(http_port), "--metrics-port", str(metrics_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()[-3000:]
        ready = json.loads(line)
        assert ready["event"] == "ready" and ready["bundle_hash"] == json.loads(
            (repo / "lineguard.json").read_text())["bundle_hash"]
        bundle = Bundle.load(served_bundle)
        engine = Engine(bundle.variant_path("expert", "fp32"))
        spec = bundle.input_spec("expert")
        frames = [read_image(p) for p in list_images(synth / "test", recursive=True)[:3]]
        rng = np.random.default_rng(0)
        batches = [to_batch(frames, spec), rng.integers(0, 256, to_batch(frames, spec).shape).astype(np.uint8)]
        client = grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        for x in batches:  # real parts, then random pixels
            inp = grpc.InferInput(spec.name, list(x.shape), "UINT8" if x.dtype == np.uint8 else "FP32")
            inp.set_data_from_numpy(x)
            got = client.infer("lineguard_expert", [inp])
            want = engine.run({spec.name: x})
            for name, w in want.items():
                np.testing.assert_allclose(got.as_numpy(name).reshape(w.shape), w, atol=1e-5, rtol=0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
