"""Quantization sensitivity, to choose which nodes a retry keeps in fp32.

Every activation of the QDQ graph is compared with the same tensor of the fp32 graph on
validation frames (signal-to-quantization-noise ratio, dB). Noise accumulates with depth, so
a tensor's sensitivity is what it loses against the tensors it is computed from. The nodes
around the tensors that lose the most are the ones a retry keeps fp32.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.qdq_loss_debug import (
    collect_activations,
    compute_signal_to_quantization_noice_ratio,
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)

from lineguard.calibration.quantize import BODY_OPS, FrameReader, tail_nodes
from lineguard.runtime.bundle.manifest import InputSpec


def _activations(model: str | Path, frames: Sequence[np.ndarray], spec: InputSpec, tmp: Path) -> dict:
    aug = tmp / f"{Path(model).stem}.augmented.onnx"
    modify_model_output_intermediate_tensors(str(model), str(aug))
    return collect_activations(str(aug), FrameReader(frames, spec), execution_providers=["CPUExecutionProvider"])


def tensor_sensitivity(fp32_model: str | Path, qdq_model: str | Path, frames: Sequence[np.ndarray],
                       spec: InputSpec) -> list[dict[str, object]]:
    """Quantized tensors by dB lost, most sensitive first, each with the nodes to keep fp32 for it.

    A tensor's loss is the SQNR of its nearest measured ancestors minus its own (fused patterns
    such as Conv→Relu quantize only the Relu's output, so the walk goes up through the Conv).
    Keeping it fp32 means keeping that producer chain and its quantized consumers fp32.
    """
    with tempfile.TemporaryDirectory() as tmp:
        ref = _activations(fp32_model, frames, spec, Path(tmp))
        qdq = _activations(qdq_model, frames, spec, Path(tmp))
    matched = create_activation_matching(qdq, ref)
    sqnr = {name: float(compute_signal_to_quantization_noice_ratio(m["float"], m["post_qdq"]))
            for name, m in matched.items() if m.get("float") and m.get("post_qdq")}
    sqnr = {k: v for k, v in sqnr.items() if np.isfinite(v)}
    model = onnx.load(str(fp32_model))
    tail = set(tail_nodes(model))
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    op = {n.name: n.op_type for n in model.graph.node}
    out = []
    for t, own in sqnr.items():
        chain, bases, todo, seen = [], [], [t], set()
        while todo:  # walk up to the nearest measured tensors
            node = producer.get(todo.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            chain.append(node.name)
            for i in node.input:
                if i in sqnr:
                    bases.append(sqnr[i])
                elif i in producer:
                    todo.append(i)
        group = {n for n in chain + consumers.get(t, []) if op[n] in BODY_OPS and n not in tail}
        if group:
            out.append({"tensor": t, "loss_db": (min(bases) if bases else own) - own, "nodes": sorted(group)})
    return sorted(out, key=lambda d: -d["loss_db"])
