"""Per-node quantization sensitivity, to choose which nodes a retry keeps in fp32.

Every activation of the QDQ graph is compared with the same tensor of the fp32 graph on
validation frames (signal-to-quantization-noise ratio, dB). Noise accumulates with depth, so
a node's sensitivity is what it loses: the SQNR of its inputs minus that of its output. The
nodes that lose the most are the ones a retry keeps fp32.
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

from runtime.manifest import InputSpec

from .quantize import FrameReader


def _activations(model: str | Path, frames: Sequence[np.ndarray], spec: InputSpec, tmp: Path) -> dict:
    aug = tmp / f"{Path(model).stem}.augmented.onnx"
    modify_model_output_intermediate_tensors(str(model), str(aug))
    return collect_activations(str(aug), FrameReader(frames, spec), execution_providers=["CPUExecutionProvider"])


def node_sensitivity(fp32_model: str | Path, qdq_model: str | Path, frames: Sequence[np.ndarray],
                     spec: InputSpec) -> dict[str, float]:
    """dB lost by each node of the fp32 graph once quantized, most sensitive first."""
    with tempfile.TemporaryDirectory() as tmp:
        ref = _activations(fp32_model, frames, spec, Path(tmp))
        qdq = _activations(qdq_model, frames, spec, Path(tmp))
    matched = create_activation_matching(qdq, ref)
    sqnr = {name: float(compute_signal_to_quantization_noice_ratio(m["float"], m["post_qdq"]))
            for name, m in matched.items() if m.get("float") and m.get("post_qdq")}
    loss: dict[str, float] = {}
    for n in onnx.load(str(fp32_model)).graph.node:
        outs = [sqnr[o] for o in n.output if o in sqnr and np.isfinite(sqnr[o])]
        if not outs:
            continue
        ins = [sqnr[i] for i in n.input if i in sqnr and np.isfinite(sqnr[i])]
        loss[n.name] = (min(ins) if ins else max(outs)) - min(outs)
    return dict(sorted(loss.items(), key=lambda kv: -kv[1]))
