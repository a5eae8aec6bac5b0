"""The session factory picks real providers; GPU paths are skipped, not faked, without a GPU."""

import numpy as np
import pytest

from calibration.metrics import UndefinedMetric, auroc
from runtime.bundle import Bundle
from runtime.engine import Engine, EngineOptions, gpu_available, provider_list
from runtime.errors import LineguardError


def test_cpu_session_reports_the_provider_it_really_uses(bundle_dir):
    e = Engine(Bundle.load(bundle_dir).variant_path("expert", "fp32"), EngineOptions(device="cpu", threads=1))
    assert e.provider == "CPUExecutionProvider"
    assert e.describe()["provider"] == "CPUExecutionProvider"
    out = e.run(e.dummy_feeds(batch=2))
    assert out["anomaly_map"].shape == (2, 1, 128, 128)


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


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounding makes many ties
    assert auroc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)


def test_auroc_undefined_for_one_class():
    with pytest.raises(UndefinedMetric, match="needs both classes"):
        auroc(np.zeros(5), np.arange(5))
