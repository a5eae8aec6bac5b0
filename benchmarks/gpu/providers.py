"""The providers a stage is measured on (ONNX Runtime's CPU, CUDA and TensorRT EPs, the native TensorRT
engine), why one cannot run here, and each one's engine options and the check that a session got it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Provider:
    key: str
    label: str
    device: str  # EngineOptions.device
    fp16: bool = False
    int8: bool = False  # from the bundle's calibration table
    native: bool = False  # a serialized TensorRT engine instead of an ONNX Runtime session


PROVIDERS = {p.key: p for p in (
    Provider("cpu", "CPU EP", "cpu"),
    Provider("cuda", "CUDA EP", "cuda"),
    Provider("trt-fp16", "TensorRT EP fp16", "tensorrt", fp16=True),
    Provider("trt-int8", "TensorRT EP int8", "tensorrt", fp16=True, int8=True),
    Provider("native-fp16", "TensorRT native fp16", "tensorrt", fp16=True, native=True),
    Provider("native-int8", "TensorRT native int8", "tensorrt", fp16=True, int8=True, native=True),
)}
GPU_PROVIDERS = "cuda,trt-fp16,trt-int8,native-fp16,native-int8"
EP_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def unavailable(p: Provider) -> str | None:
    """Why ``p`` cannot run here, or None."""
    if p.device == "cpu":
        return None
    from lineguard.runtime.bundle.engine import gpu_available, tensorrt_available

    if not gpu_available():
        return "this onnxruntime has no CUDA EP (install onnxruntime-gpu, not onnxruntime)"
    try:
        import torch

        if not torch.cuda.is_available():  # onnxruntime-gpu reports CUDA whether or not a device exists
            return "no CUDA device (torch.cuda.is_available() is False)"
    except ImportError:
        pass
    if p.device == "tensorrt" and not tensorrt_available():
        return "this onnxruntime has no TensorRT EP"
    if p.native:
        try:
            import tensorrt  # noqa: F401
        except ImportError as e:
            return f"no tensorrt package ({e})"
    return None


def skip_reason(p: Provider, dry: bool) -> str | None:
    """Why ``p`` is not measured: the dry run measures the CPU EP only (what stops the others here is
    in the report's environment)."""
    if dry and p.device != "cpu":
        return "dry run: no GPU"
    return unavailable(p)


def engine_options(p: Provider, bundle: Path) -> Any:
    from lineguard.runtime.bundle.engine import EngineOptions

    # each TensorRT flavour caches its engines apart: a cache hit must never hand fp16 kernels to an int8 run
    cache = str(bundle / "engines" / p.key) if p.device == "tensorrt" else None
    return EngineOptions(device=p.device, trt_fp16=p.fp16, trt_cache_dir=cache)


def check_provider(engine: Any, p: Provider) -> None:
    """ONNX Runtime falls back to the next provider when one cannot start: that is a failure here."""
    got = getattr(engine, "provider", None)
    if not p.native and got != EP_NAMES[p.device]:
        raise RuntimeError(f"asked for {EP_NAMES[p.device]}, the session came up on {got}")
