"""The native TensorRT engine behind Engine's interface: built (or reused) from a stage's graph, int8
from the bundle's ONNX Runtime calibration table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .providers import Provider


class NativeRunner:
    """A serialized TensorRT engine with what Expert and SamStage use of an Engine (``inputs``,
    ``outputs``, ``run``), so they run it unchanged. Device buffers are torch CUDA tensors (no
    pycuda); inputs go up and outputs come back each call, as ONNX Runtime's numpy path does."""

    def __init__(self, path: Path) -> None:
        import numpy as np
        import tensorrt as trt
        import torch

        self.path, self.provider = Path(path), "TensorRT native"
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise RuntimeError(f"{path}: TensorRT cannot deserialize it")
        self._ctx = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = {n: _Spec([d if d >= 0 else "dynamic" for d in self._engine.get_tensor_shape(n)])
                       for n in names if is_input[n]}
        self.outputs = [n for n in names if not is_input[n]]
        self._np = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._torch = {n: torch.from_numpy(np.empty(0, dt)).dtype for n, dt in self._np.items()}
        self._stream = torch.cuda.Stream()

    def run(self, feeds: dict[str, Any], outputs: list[str] | None = None) -> dict[str, Any]:
        import numpy as np
        import torch

        held = []  # the input tensors must live until the stream is done
        with torch.cuda.stream(self._stream):
            for n, a in feeds.items():
                if n not in self.inputs:  # an input TensorRT pruned as unused
                    continue
                t = torch.from_numpy(np.ascontiguousarray(a, self._np[n])).cuda()
                self._ctx.set_input_shape(n, tuple(t.shape))
                self._ctx.set_tensor_address(n, t.data_ptr())
                held.append(t)
            outs = {}
            for n in self.outputs:
                t = torch.empty(tuple(self._ctx.get_tensor_shape(n)), dtype=self._torch[n], device="cuda")
                self._ctx.set_tensor_address(n, t.data_ptr())
                outs[n] = t
            if not self._ctx.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"{self.path}: TensorRT execution failed")
            self._stream.synchronize()
        return {n: outs[n].cpu().numpy() for n in (outputs or self.outputs)}


@dataclass
class _Spec:
    shape: list[Any]


def native_engine(graph: Path, p: Provider, cache: Path, max_batch: int, dims: dict[str, int] | None = None,
                  table: Path | None = None) -> NativeRunner:
    """Build (or reuse) and load the native engine of ``graph``; int8 from the bundle's ORT table, converted."""
    from lineguard.runtime.bundle.engine import EngineOptions, native_trt_engine
    from lineguard.runtime.bundle.tensorrt_native import trt_cache_from_table

    int8 = None
    if p.int8:
        import tensorrt as trt

        major, minor, patch = (int(x) for x in trt.__version__.split(".")[:3])
        header = f"TRT-{major * 10000 + minor * 100 + patch}-EntropyCalibration2"  # NV_TENSORRT_VERSION
        int8 = trt_cache_from_table(json.loads(table.read_text()), header)
    opts = EngineOptions(device="tensorrt", trt_fp16=p.fp16, trt_cache_dir=str(cache))
    return NativeRunner(native_trt_engine(graph, opts, max_batch=max_batch, int8_cache=int8, dims=dims))
