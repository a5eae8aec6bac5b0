"""The session factory picks real providers; GPU paths are skipped, not faked, without a GPU."""

import pytest

from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import Engine, EngineOptions, gpu_available, provider_list
from lineguard.runtime.errors import LineguardError


def test_cpu_session_reports_the_provider_it_really_uses(bundle_dir):
    e = Engine(Bundle.load(bundle_dir).variant_path("expert", "fp32"), EngineOptions(device="cpu", threads=1))
    assert e.provider == "CPUExecutionProvider"
    assert e.describe()["provider"] == "CPUExecutionProvider"
    out = e.run(e.dummy_feeds(batch=2))
    assert out["anomaly_map"].shape == (2, 1, 128, 128)
    # no memory plan kept per input shape (each held its own arena block: 410 vs 251 MB at batch 8)
    assert e.session.get_session_options().enable_mem_pattern is False
    planned = Engine(e.path, EngineOptions(device="cpu", threads=1, mem_pattern=True))
    assert planned.session.get_session_options().enable_mem_pattern is True


def test_asking_for_cuda_without_it_is_a_clear_error():
    if gpu_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(LineguardError, match="no CUDAExecutionProvider"):
        provider_list(EngineOptions(device="cuda"))
    assert provider_list(EngineOptions(device="auto"))[-1] == "CPUExecutionProvider"


@pytest.mark.gpu
def test_cuda_session_runs_on_cuda(bundle_dir):
    if not gpu_available():
        pytest.skip("no CUDA device and onnxruntime-gpu here: the CUDA/TensorRT branch is not exercised")
    e = Engine(Bundle.load(bundle_dir).variant_path("expert", "fp32"), EngineOptions(device="cuda"))
    assert e.provider == "CUDAExecutionProvider"
