"""The native TensorRT path: ONNX parser → builder (fp16/int8) → serialized engine, and running it.

An alternative to the TensorRT EP for stations that want a plain ``.engine`` file. It only
runs where the ``tensorrt`` package and a GPU are present; INT8 uses the bundle's calibration
table (ranges collected by ``lineguard quantize``), converted to TensorRT's own cache format.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from lineguard.runtime.errors import LineguardError


def _trt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise LineguardError("the native TensorRT path needs the tensorrt package and a GPU "
                             "(pip install 'lineguard[gpu]' from NVIDIA's index)") from None
    return trt


def trt_cache_from_table(table_json: dict[str, Any], header: str) -> bytes:
    """ORT's calibration.json ranges → TensorRT's calibration cache (scale = absmax/127, big-endian hex)."""
    def value(v: Any) -> float:  # ORT writes numpy scalars as {"data": [x], "dtype": ..., "CLS": "numpy.array"}
        while isinstance(v, dict):
            v = v.get("data", 0.0)
        while isinstance(v, list):
            v = v[0] if v else 0.0
        return float(v)

    lines = [header]
    for name, r in sorted(table_json.items()):
        lo, hi = value(r.get("lowest", 0.0)), value(r.get("highest", 0.0))
        scale = max(abs(lo), abs(hi)) / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return ("\n".join(lines) + "\n").encode()


def build_engine(onnx_path: str | Path, engine_path: str | Path, fp16: bool = True,
                 int8_cache: bytes | None = None, workspace_mb: int = 1024,
                 shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None = None) -> Path:
    """Build and serialize an engine. ``shapes``: input → (min, opt, max) for dynamic dimensions."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise LineguardError(f"{onnx_path}: TensorRT cannot parse it ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8_cache is not None:
        config.set_flag(trt.BuilderFlag.INT8)

        class Cached(trt.IInt8EntropyCalibrator2):  # no batches: every range comes from the cache
            def __init__(self) -> None:
                trt.IInt8EntropyCalibrator2.__init__(self)  # the bindings require the base initialiser

            def get_batch_size(self) -> int:
                return 1

            def get_batch(self, names: list[str]) -> None:
                return None

            def read_calibration_cache(self) -> bytes:
                return int8_cache

            def write_calibration_cache(self, cache: bytes) -> None:
                return None

        config.int8_calibrator = Cached()
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise LineguardError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    out = Path(engine_path)
    out.write_bytes(bytes(blob))
    return out
