"""One session factory for every stage: TensorRT EP → CUDA EP → CPU EP, chosen at run time.

The provider reported is the one the session really uses (``session.get_providers()``):
onnxruntime-gpu lists CUDA in ``get_available_providers()`` even where no GPU exists.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lineguard.runtime.errors import BundleError, LineguardError

log = logging.getLogger("lineguard.engine")

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
_ORDER = {
    "auto": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "cpu": ["CPUExecutionProvider"],
}
_NP_DTYPES = {
    "tensor(uint8)": np.uint8,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise LineguardError(
            "onnxruntime is not installed: pip install 'lineguard[cpu]' (or '[gpu]' on a CUDA station)"
        ) from None
    _preload_cuda(ort)
    return ort


@functools.cache
def _preload_cuda(ort: Any) -> None:
    """Load CUDA's and cuDNN's libraries from their pip wheels (the ``[gpu]`` extra installs them):
    onnxruntime-gpu does not look there by itself, and without this a pip-only GPU station's CUDA
    session silently falls back to the CPU. Once per process; a no-op where onnxruntime has no
    CUDA or the libraries come from the system."""
    if "CUDAExecutionProvider" in ort.get_available_providers() and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as e:  # the system's CUDA may still serve: ONNX Runtime says if it does not
            log.warning("could not preload CUDA's pip libraries: %s", e)


@dataclass
class EngineOptions:
    """How to build a session. ``threads=0`` lets ONNX Runtime use every core."""

    device: str = "auto"
    threads: int = 0
    spinning: bool = False  # spinning threads steal cores from the other stages' sessions
    warmup: int = 1
    warmup_batch: int = 1  # symbolic dimensions of the warm-up's zeros (the station: its largest batch)
    # ONNX Runtime's memory pattern keeps a plan (and its arena block) per set of input shapes: the
    # default expert's session held 410 MB after two batches of 8 with it, 251 MB without, at the
    # same speed (and an LLM's cache grows a step a token: a new shape every step)
    mem_pattern: bool = False
    trt_cache_dir: str | None = None  # TensorRT engine cache, inside the bundle by default
    trt_fp16: bool = False
    trt_int8: bool = False
    trt_calibration_table: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def provider_list(opts: EngineOptions) -> list[Any]:
    """The providers to ask for, in order, limited to those this onnxruntime build has."""
    if opts.device not in DEVICES:
        raise LineguardError(f"unknown device {opts.device!r}: use one of {', '.join(DEVICES)}")
    available = set(_ort().get_available_providers())
    wanted = [p for p in _ORDER[opts.device] if p in available]
    if opts.device in ("cuda", "tensorrt") and wanted[0] == "CPUExecutionProvider":
        raise LineguardError(
            f"--device {opts.device}: this onnxruntime has no {_ORDER[opts.device][0]} "
            "(install onnxruntime-gpu: pip install 'lineguard[gpu]')"
        )
    out: list[Any] = []
    for p in wanted:
        if p == "TensorrtExecutionProvider":
            trt: dict[str, Any] = {"trt_fp16_enable": opts.trt_fp16, "trt_int8_enable": opts.trt_int8}
            if opts.trt_cache_dir:
                trt |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": opts.trt_cache_dir}
            if opts.trt_int8 and opts.trt_calibration_table:
                trt["trt_int8_calibration_table_name"] = opts.trt_calibration_table
            out.append((p, trt))
        else:
            out.append(p)
    return out


class Engine:
    """An ONNX Runtime session with its I/O described and its real provider recorded."""

    def __init__(self, path: str | os.PathLike, opts: EngineOptions | None = None) -> None:
        ort = _ort()
        self.path = Path(path)
        self.opts = opts or EngineOptions()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.opts.threads:
            so.intra_op_num_threads = self.opts.threads
        so.inter_op_num_threads = 1
        so.enable_mem_pattern = self.opts.mem_pattern
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.opts.spinning else "0")
        so.log_severity_level = 3
        providers = provider_list(self.opts)
        t0 = time.perf_counter()
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        except Exception as e:  # ORT raises its own exception types; all mean "cannot load this file"
            raise BundleError(f"{self.path}: ONNX Runtime cannot load it ({str(e).splitlines()[0]})") from None
        self.load_seconds = time.perf_counter() - t0
        self.provider = self.session.get_providers()[0]
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        log.debug("%s: provider %s (asked %s), loaded in %.2fs", self.path.name, self.provider,
                  [p if isinstance(p, str) else p[0] for p in providers], self.load_seconds)
        for _ in range(self.opts.warmup):
            self.run(self.dummy_feeds(self.opts.warmup_batch))

    def dummy_feeds(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Zeros of every input's shape, symbolic dimensions set to ``batch``."""
        feeds = {}
        for name, i in self.inputs.items():
            shape = [d if isinstance(d, int) and d > 0 else batch for d in i.shape]
            feeds[name] = np.zeros(shape, dtype=_NP_DTYPES.get(i.type, np.float32))
        return feeds

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or self.outputs
        return dict(zip(names, self.session.run(names, feeds)))

    def io_specs(self, which: str) -> list[dict[str, Any]]:
        """Names, dtypes and shapes of the graph's ``inputs`` or ``outputs``, for the manifest."""
        metas = self.session.get_inputs() if which == "inputs" else self.session.get_outputs()
        return [{"name": m.name, "dtype": np.dtype(_NP_DTYPES.get(m.type, np.float32)).name,
                 "shape": [d if isinstance(d, int) else str(d) for d in m.shape]} for m in metas]

    def describe(self) -> dict[str, Any]:
        return {"file": self.path.name, "provider": self.provider, "load_seconds": round(self.load_seconds, 3)}


def gpu_available() -> bool:
    """True where this onnxruntime can really run CUDA (a session on CUDA comes up on CUDA)."""
    ort = _ort()
    return "CUDAExecutionProvider" in ort.get_available_providers() and bool(ort.get_device() == "GPU")


def tensorrt_available() -> bool:
    """True where the TensorRT EP is built in and a GPU is present."""
    return "TensorrtExecutionProvider" in _ort().get_available_providers() and gpu_available()


def native_trt_engine(onnx_path: str | os.PathLike, opts: EngineOptions, max_batch: int = 8,
                      int8_cache: bytes | None = None, dims: dict[str, int] | None = None) -> Path:
    """The factory's native TensorRT route: a serialized ``.engine`` built (once, then cached in
    ``opts.trt_cache_dir``) from an ONNX graph, with a batch profile 1..``max_batch``. ``dims`` fixes
    named symbolic dimensions that are no batch (SAM's encoder takes ``h`` and ``w``); every other
    symbolic dimension gets the batch profile."""
    from lineguard.runtime.bundle.tensorrt_native import build_engine

    if not tensorrt_available():
        raise LineguardError("the native TensorRT engine needs the tensorrt package, onnxruntime-gpu and a GPU")
    src = Path(onnx_path)
    cache = Path(opts.trt_cache_dir or src.parent)
    cache.mkdir(parents=True, exist_ok=True)
    kind = "int8" if int8_cache is not None else "fp16" if opts.trt_fp16 else "fp32"
    fixed = dims or {}
    sizes = "".join(f".{k}{v}" for k, v in sorted(fixed.items()))
    out = cache / f"{src.stem}.b{max_batch}{sizes}.{kind}.engine"
    if out.is_file() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    session = Engine(src, EngineOptions(device="cpu", warmup=0))  # only to read the input shapes
    shapes = {}
    for name, i in session.inputs.items():
        known = [d if isinstance(d, int) and d > 0 else fixed.get(d) for d in i.shape]
        lo, opt, hi = ([d or b for d in known] for b in (1, max(1, max_batch // 2), max_batch))
        shapes[name] = (tuple(lo), tuple(opt), tuple(hi))
    return build_engine(src, out, fp16=opts.trt_fp16 or int8_cache is not None, int8_cache=int8_cache, shapes=shapes)
