"""Static INT8 (ONNX Runtime QDQ) and FP16 variants of an expert graph.

Calibration frames go through the runtime's own preprocessing, so the ranges are those of
the frames the station will feed. The distance-to-memory-bank tail (everything from the
first Gemm/MatMul on) stays fp32 unless asked: ``‖e‖² − 2e·b + ‖b‖²`` cancels badly in
8 or 16 bits, and the gate decides whether a quantized tail is acceptable. When it is, the
tail's bank products run as dynamically quantized MatMuls (int8 bank, uint8 features with a
per-frame range, fp32 distances out): static output ranges would crush the small gaps between
nearest distances that the map is made of.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from lineguard.export.quiet import quiet_root_logger
from lineguard.runtime.bundle.manifest import InputSpec
from lineguard.runtime.stages.preprocess import to_batch

log = logging.getLogger("lineguard.quantize")

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
# ops whose int8 kernels pay on the CPU EP; the rest run fp32 between DequantizeLinear/QuantizeLinear
BODY_OPS = ["Conv", "Add", "Relu", "MaxPool"]
TAIL_OPS = ("Gemm", "MatMul")


@dataclass
class QuantConfig:
    method: str = "minmax"
    activations: str = "uint8"  # uint8 is what VNNI CPUs run fast; TensorRT wants symmetric int8
    per_channel: bool = True
    quantize_tail: bool = True  # build_variants tries the tail int8 first; the gate decides
    exclude: list[str] = field(default_factory=list)  # node names kept fp32 (from the sensitivity search)
    batch: int = 1


class FrameReader(CalibrationDataReader):
    """Feeds calibration frames to the quantizer through the runtime's preprocessing."""

    def __init__(self, frames: Sequence[np.ndarray], spec: InputSpec, batch: int = 1) -> None:
        self.frames, self.spec, self.batch = frames, spec, batch
        self._it = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.frames), self.batch):
            yield {self.spec.name: to_batch(self.frames[i : i + self.batch], self.spec)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Every Gemm/MatMul node and everything downstream of any of them (graphs are topologically sorted).

    A chunked bank search has one product per chunk, siblings on the same features: each must
    be in the tail, not only the first one and its descendants.
    """
    tainted: set[str] = set()
    names = []
    for n in model.graph.node:
        if n.op_type in TAIL_OPS or any(i in tainted for i in n.input):
            tainted.update(n.output)
            names.append(n.name)
    return names


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name: exclusion lists and sensitivity reports refer to them."""
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)
    return model


def _dedupe(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop exact duplicate nodes: the fp16 converter emits one Cast per consumer, all named alike."""
    seen: set[bytes] = set()
    keep = []
    for n in model.graph.node:
        key = onnx.NodeProto(op_type=n.op_type, input=n.input, output=n.output,
                             attribute=n.attribute).SerializeToString()
        if key not in seen:
            seen.add(key)
            keep.append(n)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def preprocess(src: str | Path, dst: str | Path) -> Path:
    """Shape inference and graph clean-up the quantizer needs (ORT's quant_pre_process)."""
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    model = _named(onnx.load(str(dst)))
    onnx.save(model, str(dst))
    return Path(dst)


def _gemm_as_matmul(model: onnx.ModelProto, names: set[str]) -> list[str]:
    """Rewrite plain Gemms (no transpose, alpha = beta = 1) as MatMul + Add, which ORT can
    quantize dynamically; returns the new MatMul names."""
    out, mms = [], []
    for n in model.graph.node:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        plain = (a.get("transA", 0), a.get("transB", 0), a.get("alpha", 1.0), a.get("beta", 1.0)) == (0, 0, 1.0, 1.0)
        if n.op_type == "Gemm" and n.name in names and plain and len(n.input) == 3:
            t = f"{n.output[0]}_mm"
            out += [helper.make_node("MatMul", n.input[:2], [t], name=f"{n.name}_mm"),
                    helper.make_node("Add", [t, n.input[2]], [n.output[0]], name=f"{n.name}_bias")]
            mms.append(f"{n.name}_mm")
        else:
            if n.op_type == "MatMul" and n.name in names:
                mms.append(n.name)
            out.append(n)
    del model.graph.node[:]
    model.graph.node.extend(out)
    return mms


def quantize_int8(src: str | Path, dst: str | Path, frames: Sequence[np.ndarray], spec: InputSpec,
                  cfg: QuantConfig) -> dict[str, Any]:
    """Write a QDQ INT8 graph of ``src`` (already preprocessed) to ``dst``; return its provenance."""
    if cfg.method not in METHODS:
        raise ValueError(f"calibration method {cfg.method!r}: use one of {', '.join(METHODS)}")
    model = onnx.load(str(src))
    tail = tail_nodes(model)
    exclude = sorted(set(cfg.exclude) | set(tail))
    act = QuantType.QUInt8 if cfg.activations == "uint8" else QuantType.QInt8
    extra = {"ActivationSymmetric": cfg.activations == "int8", "WeightSymmetric": True}
    dst = Path(dst)
    quantize_static(str(src), str(dst), FrameReader(frames, spec, cfg.batch), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=BODY_OPS, per_channel=cfg.per_channel, activation_type=act,
                    weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                    calibrate_method=METHODS[cfg.method], extra_options=extra,
                    calibration_providers=["CPUExecutionProvider"])
    tail_q: list[str] = []
    if cfg.quantize_tail:
        body = onnx.load(str(dst))
        products = {n.name for n in body.graph.node if n.op_type in TAIL_OPS and n.name in set(tail)}
        tail_q = _gemm_as_matmul(body, products - set(cfg.exclude))
    # an empty nodes_to_quantize means "every node" to ONNX Runtime: a graph without a product
    # tail (a pure CNN expert) would get its already-quantized body quantized again
    if tail_q:
        staged = dst.with_suffix(".tail.onnx")
        onnx.save(body, str(staged))
        with quiet_root_logger():  # it warns the graph "is already quantized": on purpose, its body is
            quantize_dynamic(str(staged), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                             nodes_to_quantize=tail_q, extra_options={"MatMulConstBOnly": True})
        staged.unlink()
    return {
        "method": cfg.method,
        "format": "QDQ",
        "quantize_linear_nodes": sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(dst)).graph.node),
        "activations": cfg.activations,
        "weights": "int8 per-channel" if cfg.per_channel else "int8 per-tensor",
        "calibration_frames": len(frames),
        "tail": "int8 dynamic" if cfg.quantize_tail else "fp32",
        "tail_int8_nodes": tail_q,
        "fp32_nodes": sorted(set(exclude) - {t.removesuffix("_mm") for t in tail_q}),
        "sensitive_fp32_nodes": sorted(cfg.exclude),
    }


def convert_fp16(src: str | Path, dst: str | Path, keep_tail: bool = True) -> dict[str, Any]:
    """FP16 weights and activations for GPUs; inputs/outputs keep their types. ``keep_tail``: the
    bank tail (first Gemm/MatMul on) stays fp32 — right for PatchCore, not for a transformer."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = _named(onnx.load(str(src)))
    tail = tail_nodes(model) if keep_tail else []
    half = convert_float_to_float16(model, keep_io_types=True, node_block_list=tail)
    onnx.save(_named(_dedupe(half)), str(dst))
    return {"format": "fp16", "fp32_nodes": tail}
