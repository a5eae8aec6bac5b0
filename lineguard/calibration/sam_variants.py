"""FP16 and INT8 variants of a bundle's SAM, gated on mask agreement with fp32.

INT8 quantizes the encoder's MatMuls dynamically (int8 weights per channel, activations with
a per-frame range): SAM's attention activations have outliers that a static range clips.
Weights use 7 bits (``reduce_range``): x86 CPUs without VNNI multiply uint8 by int8 in 16-bit pairs
that saturate with 8-bit weights, so the same variant gave other masks there (and a different
gate result) than on a VNNI CPU; with 7 bits no kernel saturates and every CPU agrees.
The decoders are small and stay fp32. The gate compares masks of the candidate with fp32's on
generated frames and the prompts the parity check uses: every mask's IoU ≥ ``min_iou``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import QuantType, quantize_dynamic

from lineguard.calibration.quantize import convert_fp16
from lineguard.export.parity import mask_iou
from lineguard.export.quiet import quiet_root_logger
from lineguard.runtime.bundle import Bundle, BundleWriter
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.errors import InputError
from lineguard.runtime.stages.sam import SamStage

log = logging.getLogger("lineguard.quantize")
MIN_IOU = 0.97


def _cases(size: int, n: int = 3) -> list[tuple[np.ndarray, dict[str, Any]]]:
    from lineguard.export.sam.export import parity_cases  # the same frames and prompts as the export's parity

    out = []
    for i in range(n):
        frame, prompts = parity_cases(size - 7 * i, size, seed=i)
        out += [(frame, p) for p in prompts]
    return out


def _masks(stage: SamStage, cases: list) -> list[np.ndarray]:
    out, cache = [], {}
    for frame, p in cases:
        key = id(frame)
        if key not in cache:
            cache[key] = stage.encode(frame)
        out.append(stage.segment(cache[key], p.get("points"), p.get("labels"), p.get("box")).mask)
    return out


def build_sam_variants(bundle_path: str | Path, precisions: tuple[str, ...] = ("int8", "fp16"),
                       min_iou: float = MIN_IOU, reduce_range: bool = True) -> dict[str, Any]:
    """Write each variant that passes the gate into the bundle; ``reduce_range=False`` (8-bit weights)
    only to measure what it costs on CPUs without VNNI (benchmarks/sam_int8_gate.py)."""
    for p in precisions:
        if p not in ("int8", "fp16"):
            raise InputError(f"--precision {p}: SAM variants are int8 and fp16")
    bundle = Bundle.load(bundle_path)
    stage = bundle.stage("sam")
    fp32 = stage["variants"]["fp32"]["graphs"]
    opts = EngineOptions(device="cpu")
    cases = _cases(int(stage["input_spec"]["height"]))
    ref = _masks(SamStage(bundle, "fp32", opts), cases)
    summary: dict[str, Any] = {}
    with BundleWriter(bundle.root, base=bundle) as w:
        st = w.manifest["stages"]["sam"]
        for prec in precisions:
            graphs = dict(fp32)
            made = []
            if prec == "int8":
                graphs["encoder"] = "sam/encoder.int8.onnx"
                made.append(graphs["encoder"])
                with quiet_root_logger():
                    quantize_dynamic(str(bundle.root / fp32["encoder"]), str(w.path(graphs["encoder"])),
                                     weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range,
                                     op_types_to_quantize=["MatMul"])
                prov = {"encoder": f"dynamic int8 MatMuls, per-channel {7 if reduce_range else 8}-bit weights"
                                   + (" (reduce_range: no u8s8 saturation on CPUs without VNNI)" if reduce_range else ""),
                        "decoders": "fp32"}
            else:
                for k, src in fp32.items():
                    graphs[k] = src.replace(".fp32.", ".fp16.")
                    made.append(graphs[k])
                    convert_fp16(bundle.root / src, w.path(graphs[k]), keep_tail=False)
                prov = {"format": "fp16 (inputs/outputs fp32)", "checked_on": "CPU EP"}
            st["variants"][prec] = {"file": graphs["encoder"], "graphs": graphs, "provenance": prov}
            ious = [mask_iou(a, b) for a, b in zip(ref, _masks(SamStage(Bundle(w.tmp, w.manifest), prec, opts), cases))]
            gate = {"mean_iou_vs_fp32": float(np.mean(ious)), "min_iou_vs_fp32": float(np.min(ious)),
                    "cases": len(ious), "passed": float(np.min(ious)) >= min_iou,
                    "basis": f"every mask's IoU vs fp32 ≥ {min_iou} on {len(ious)} generated frame/prompt cases "
                             "(fp32 itself matches SamPredictor with IoU 1.0)"}
            summary[prec] = gate
            if gate["passed"]:
                for rel in made:
                    w.add_file(rel, f"sam {prec}")
                st["variants"][prec]["parity"] = gate
                st.setdefault("rejected", {}).pop(prec, None)
            else:
                del st["variants"][prec]
                for rel in made:
                    w.remove_file(rel)
                st.setdefault("rejected", {})[prec] = {"reason": f"min mask IoU {gate['min_iou_vs_fp32']:.3f} "
                                                                 f"< {min_iou}", "last": gate}
                log.warning("sam %s rejected: min IoU %.3f", prec, gate["min_iou_vs_fp32"])
    return summary
