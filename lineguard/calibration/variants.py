"""`lineguard quantize`: INT8, FP16 and TensorRT variants of a bundle's expert, each through the gate.

INT8 tries, in order: the whole graph (bank tail as dynamic int8 MatMuls), the body only
(tail fp32), then the body with the most sensitive tensors' nodes kept fp32. The first that
passes the gate is written; if none does, fp32 stays the only CPU variant and the manifest
says why. Every variant's measured deltas against fp32 go into the manifest.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from lineguard.calibration.dataset import Labelled, load_labelled, read_frames
from lineguard.calibration.evaluate import Scored, evaluate_scored, score_frames
from lineguard.calibration.gate import Gate
from lineguard.calibration.quantize import QuantConfig, convert_fp16, preprocess, quantize_int8
from lineguard.calibration.sensitivity import tensor_sensitivity
from lineguard.calibration.tensorrt import FILES as TRT_FILES
from lineguard.calibration.tensorrt import write_trt_table
from lineguard.runtime.bundle import Bundle, BundleWriter
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.errors import InputError
from lineguard.runtime.imageio import normal_images
from lineguard.runtime.stages.expert import Expert

log = logging.getLogger("lineguard.quantize")
PRECISIONS = ("int8", "fp16", "trt")
RETRY_EXCLUDE = (2, 6)  # most sensitive tensors kept fp32 in the successive retries


def _spread(items: list[Any], n: int) -> list[Any]:
    """``n`` items evenly spread over the list (calibration should see the whole set, not its start)."""
    if len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


class _Candidates:
    """Scores candidate graphs on the validation frames, against the fp32 reference."""

    def __init__(self, bundle: Bundle, val: list, data: Labelled | None, gate: Gate, progress: bool) -> None:
        self.bundle, self.val, self.data, self.gate, self.progress = bundle, val, data, gate, progress
        opts = EngineOptions(device="cpu")
        self.opts = opts
        self.ref = self._score(None, "fp32")
        self.ref_metrics = evaluate_scored(data, self.ref) if data is not None else None

    def _score(self, graph: Path | None, name: str) -> Scored:
        expert = Expert(self.bundle, "fp32", self.opts, graph=graph)
        return score_frames(expert, self.val, desc=f"gate {name}", progress=self.progress)

    def check(self, graph: Path, name: str) -> dict[str, Any]:
        cand = self._score(graph, name)
        out = self.gate.check(self.ref, cand, self.data, self.ref_metrics)
        out["frames_per_s"], out["frames_per_s_fp32"] = round(cand.fps, 2), round(self.ref.fps, 2)
        out["speedup"] = round(cand.fps / self.ref.fps, 2) if self.ref.fps else None
        log.info("%s: %s (%s)", name, "pass" if out["passed"] else "FAIL", out["reason"])
        return out


def build_variants(bundle_path: str | Path, normal: str, dataset: str | None = None,
                   precisions: tuple[str, ...] = ("int8", "fp16", "trt"), cfg: QuantConfig | None = None,
                   max_drop: float = 0.5, calib_images: int = 32, val_every: int = 1,
                   progress: bool = True) -> dict[str, Any]:
    """Write the gated variants into the bundle; returns what was tried and measured, per precision."""
    for p in precisions:
        if p not in PRECISIONS:
            raise InputError(f"--precision {p}: use some of {', '.join(PRECISIONS)}")
    cfg = cfg or QuantConfig()
    bundle = Bundle.load(bundle_path)
    spec = bundle.input_spec("expert")
    fp32 = bundle.variant_path("expert", "fp32")
    files = normal_images(normal)
    data = load_labelled(dataset, every=val_every, progress=progress) if dataset else None
    held: list[Path] = []
    if data is None and len(files) >= 8:  # normal-only: every 4th image is held out of calibration
        held = files[::4][:32]
    pool = [f for f in files if f not in set(held)]
    calib = read_frames(_spread(pool, calib_images), "read calibration", progress)
    if data is not None:
        val = data.frames
    elif held:
        val = read_frames(held, "read validation", progress)
    else:
        log.warning("%s: only %d normal images; the gate validates on the calibration frames", normal, len(files))
        val = calib
    gate = Gate(max_drop=max_drop, thresholds=bundle.thresholds)
    cands = _Candidates(bundle, val, data, gate, progress)
    summary: dict[str, Any] = {"validation": gate_basis(data, val, bool(held)), "calibration_frames": len(calib)}
    with tempfile.TemporaryDirectory() as tmp, BundleWriter(bundle.root, base=bundle) as w:
        stage = w.manifest["stages"]["expert"]
        rejected = stage.setdefault("rejected", {})
        if "int8" in precisions:
            pre = preprocess(fp32, Path(tmp) / "pre.onnx")
            tries = []
            attempts = [replace(cfg, quantize_tail=True), replace(cfg, quantize_tail=False)]
            if not cfg.quantize_tail:
                attempts = attempts[1:]
            chosen = None
            for i, c in enumerate(attempts + [None] * len(RETRY_EXCLUDE)):
                if c is None:  # sensitivity retry: keep the worst tensors' nodes fp32
                    if "sensitivity" not in summary:
                        summary["sensitivity"] = tensor_sensitivity(pre, Path(tmp) / "int8.onnx", val[:8], spec)
                    worst = summary["sensitivity"][: RETRY_EXCLUDE[i - len(attempts)]]
                    c = replace(attempts[-1], exclude=sorted({n for w in worst for n in w["nodes"]}))
                prov = quantize_int8(pre, Path(tmp) / "int8.onnx", calib, spec, c)
                result = cands.check(Path(tmp) / "int8.onnx", f"int8 try {i + 1}")
                tries.append({"provenance": prov, "gate": result})
                if result["passed"]:
                    chosen = (prov, result)
                    break
            summary["int8"] = {"tries": tries, "written": chosen is not None}
            if chosen:
                rel = "expert/model.int8.onnx"
                shutil.move(Path(tmp, "int8.onnx"), w.path(rel))  # /tmp may be another filesystem
                w.add_file(rel, "expert int8", chosen[0])
                stage["variants"]["int8"] = {"file": rel, "parity": chosen[1], "provenance": chosen[0]}
                rejected.pop("int8", None)
            else:
                rejected["int8"] = {"reason": tries[-1]["gate"]["reason"], "tries": len(tries),
                                    "last": tries[-1]["gate"]}
                _drop_variant(w, stage, "int8")
                log.warning("int8: no candidate passed the gate; fp32 stays (%s)", tries[-1]["gate"]["reason"])
        if "fp16" in precisions:
            prov = convert_fp16(fp32, Path(tmp) / "fp16.onnx")
            result = cands.check(Path(tmp) / "fp16.onnx", "fp16")
            summary["fp16"] = {"provenance": prov, "gate": result, "written": result["passed"]}
            if result["passed"]:
                rel = "expert/model.fp16.onnx"
                shutil.move(Path(tmp, "fp16.onnx"), w.path(rel))
                w.add_file(rel, "expert fp16", prov)
                stage["variants"]["fp16"] = {"file": rel, "parity": result | {"checked_on": "CPU EP"},
                                             "provenance": prov}
                rejected.pop("fp16", None)
            else:
                rejected["fp16"] = {"reason": result["reason"], "last": result}
                _drop_variant(w, stage, "fp16")
        if "trt" in precisions:
            info = write_trt_table(fp32, calib, spec, Path(tmp) / "trt")
            for name in TRT_FILES:
                shutil.move(Path(tmp, "trt", name), w.path(f"expert/trt/{name}"))
                w.add_file(f"expert/trt/{name}", "TensorRT int8 calibration table")
            stage["variants"]["trt"] = {
                "file": stage["variants"]["fp32"]["file"],
                "trt_options": info | {"cache_dir": "expert/trt"},
                "provenance": {"calibration": info, "note": "TensorRT builds int8/fp16 kernels from the fp32 graph "
                               "with this table; gate it on the GPU with lineguard evaluate --precision trt"},
            }
            summary["trt"] = info
    return summary


def _drop_variant(w: BundleWriter, stage: dict[str, Any], precision: str) -> None:
    old = stage["variants"].pop(precision, None)
    if old:
        w.remove_file(old["file"])


def gate_basis(data: Labelled | None, val: list, held_out: bool) -> str:
    if data is not None:
        return f"{len(data.frames)} labelled test images ({int(data.labels.sum())} defective)"
    return f"{len(val)} normal images " + ("held out of calibration" if held_out else "(the calibration frames)")


def describe(summary: dict[str, Any]) -> str:
    lines = [f"gate on {summary['validation']}; {summary['calibration_frames']} calibration frames"]
    if "int8" in summary:
        for i, t in enumerate(summary["int8"]["tries"], 1):
            g, p = t["gate"], t["provenance"]
            sens = p["sensitive_fp32_nodes"]
            what = f"tail {p['tail']}" + (f", {len(sens)} sensitive nodes kept fp32" if sens else "")
            lines.append(f"int8 try {i} ({what}): {'PASS' if g['passed'] else 'fail'}: {g['reason']}; "
                         f"{g['speedup']}x fp32 frames/s, map Pearson {g['map_pearson']:.4f}")
        lines.append("int8 written" if summary["int8"]["written"] else "int8 NOT written: fp32 stays")
    if "fp16" in summary:
        g = summary["fp16"]["gate"]
        lines.append(f"fp16 {'written' if g['passed'] else 'NOT written'}: {g['reason']}; "
                     f"map Pearson {g['map_pearson']:.4f} (checked on the CPU EP)")
    if "trt" in summary:
        lines.append(f"trt  calibration table for {summary['trt']['tensors']} tensors written "
                     "(used by the TensorRT EP on a GPU station)")
    return "\n".join(lines)
