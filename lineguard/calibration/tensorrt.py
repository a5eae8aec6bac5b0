"""TensorRT INT8: the calibration table the TensorRT EP reads, written from real frames.

TensorRT quantizes the fp32 graph itself (symmetric int8 per tensor) from per-tensor ranges.
ONNX Runtime's calibrator collects those ranges here, on the CPU, so a GPU station never
has to calibrate; the TensorRT EP reads ``calibration.flatbuffers`` from its engine cache
folder (``trt_int8_calibration_table_name``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, create_calibrator, write_calibration_table

from lineguard.calibration.quantize import FrameReader, tail_nodes
from lineguard.runtime.bundle.manifest import InputSpec

TABLE = "calibration.flatbuffers"
FILES = (TABLE, "calibration.cache", "calibration.json")


def write_trt_table(fp32_graph: str | Path, frames: Sequence[np.ndarray], spec: InputSpec,
                    out_dir: str | Path) -> dict[str, Any]:
    """Collect min/max of every tensor over ``frames`` and write the three table files to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cal = create_calibrator(str(fp32_graph), None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                calibrate_method=CalibrationMethod.MinMax, providers=["CPUExecutionProvider"])
        cal.collect_data(FrameReader(frames, spec))
        ranges = cal.compute_data()
    # tensors of the bank tail get no range: TensorRT then keeps those layers in fp16/fp32,
    # as the CPU path keeps them out of static int8
    model = onnx.load(str(fp32_graph))
    tail = set(tail_nodes(model))
    tail_tensors = {o for n in model.graph.node if n.name in tail for o in n.output}
    table = {name: ranges[name] for name in ranges.data if name not in tail_tensors}
    write_calibration_table(table, dir=str(out))
    return {"tensors": len(table), "tail_tensors_without_range": len(tail_tensors), "calibration_frames": len(frames),
            "method": "minmax", "calibration_table_name": TABLE, "int8": True, "fp16": True}
