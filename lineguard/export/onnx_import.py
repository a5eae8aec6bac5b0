"""`lineguard export expert --kind onnx`: bring an existing ONNX anomaly model into a bundle.

Any graph with one image input and an anomaly-map output serves (anomalib's exports have
``input`` float NCHW RGB and ``anomaly_map`` / ``pred_score`` outputs). Its input spec is read
from the graph where it is static, otherwise from flags.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lineguard.export.expert import _check_target, write_expert_stage
from lineguard.export.versions import library_versions
from lineguard.runtime.bundle import BundleWriter, sha256_file
from lineguard.runtime.bundle.engine import Engine, EngineOptions
from lineguard.runtime.bundle.manifest import InputSpec
from lineguard.runtime.errors import LineguardError


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def _pick(outputs: list[Any], wanted: str | None, words: tuple[str, ...], ranks: tuple[int, ...],
          path: Path, what: str) -> str | None:
    names = [o.name for o in outputs]
    if wanted:
        if wanted not in names:
            raise LineguardError(f"{path}: has no output {wanted!r} (outputs: {', '.join(names)})")
        return wanted
    for o in outputs:
        if any(w in o.name.lower() for w in words) and len(_dims(o)) in ranks:
            return o.name
    return None


def trained_record(path: Path) -> dict[str, Any]:
    """The ``.json`` that ``lineguard train expert`` writes beside its graph, if this is one."""
    side = path.with_suffix(".json")
    try:
        rec = json.loads(side.read_text())
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) and rec.get("kind") == "segnet" and "parity" in rec else {}


def import_onnx_expert(model: str | Path, out: str | Path, product: str | None = None,
                       map_output: str | None = None, score_output: str | None = None,
                       input_size: Sequence[int] | None = None, color: str | None = None,
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                       force: bool = False) -> Path:
    path, out = Path(model), Path(out)
    _check_target(out, force)
    if not path.is_file():
        raise LineguardError(f"{path}: no such file")
    try:
        m = onnx.load(str(path))
    except Exception as e:  # protobuf decode errors have no common base class
        raise LineguardError(f"{path}: not an ONNX model ({str(e).splitlines()[0][:100]})") from None
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise LineguardError(f"{path}: expected one image input, found {len(inputs)}: {[i.name for i in inputs]}")
    inp = inputs[0]
    dims = _dims(inp)
    if len(dims) != 4:
        raise LineguardError(f"{path}: input {inp.name!r} has shape {dims}, expected 4-D (N,C,H,W or N,H,W,C)")
    if dims[1] in (1, 3):
        layout, ch, hw = "NCHW", dims[1], dims[2:4]
    elif dims[3] in (1, 3):
        layout, ch, hw = "NHWC", dims[3], dims[1:3]
    else:
        raise LineguardError(f"{path}: cannot tell the channel axis of input shape {dims} (1 or 3 channels expected)")
    elem = inp.type.tensor_type.elem_type
    if elem not in (onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT):
        raise LineguardError(f"{path}: input type {onnx.TensorProto.DataType.Name(elem)} is not uint8 or float")
    if input_size:
        hw = list(input_size)
    if not all(isinstance(d, int) and d > 0 for d in hw):
        raise LineguardError(f"{path}: input size is dynamic ({hw}): pass --input-size H W")
    record = trained_record(path)
    color = color or record.get("input", {}).get("color") or ("GRAY" if ch == 1 else "RGB")
    if (color == "GRAY") != (ch == 1):
        raise LineguardError(f"{path}: --color {color} does not fit an input with {ch} channel(s)")
    is_float = elem == onnx.TensorProto.FLOAT
    spec = InputSpec(
        name=inp.name, height=int(hw[0]), width=int(hw[1]), layout=layout,
        dtype="float32" if is_float else "uint8", color=color,
        normalize="runtime" if is_float else "in_graph",
        mean=tuple(mean or (0.0,) * ch), std=tuple(std or (1.0,) * ch),
    )
    if len(spec.mean) != ch or len(spec.std) != ch:
        raise LineguardError(f"--mean/--std need {ch} value(s) for a {ch}-channel input")
    outputs = list(m.graph.output)
    map_name = _pick(outputs, map_output, ("anomaly_map", "map"), (3, 4), path, "anomaly map")
    if map_name is None:
        ranked = [o.name for o in outputs if len(_dims(o)) in (3, 4)]
        if not ranked:
            raise LineguardError(f"{path}: no 3-D or 4-D output to use as the anomaly map: pass --map-output")
        map_name = ranked[0]
    score_name = _pick(outputs, score_output, ("score",), (1, 2), path, "score")

    with BundleWriter(out, product=product or path.stem) as writer:
        tmp = writer.tmp / "_import.onnx"
        onnx.save(m, str(tmp))  # folds external data, if any, into one file
        engine = Engine(tmp, EngineOptions(device="cpu", warmup=0))
        batch = 1 if isinstance(engine.inputs[inp.name].shape[0], int) else 2
        feeds = engine.dummy_feeds(batch)
        feeds[inp.name] = np.random.default_rng(0).random(feeds[inp.name].shape).astype(feeds[inp.name].dtype)
        try:
            r = engine.run(feeds, [map_name] + ([score_name] if score_name else []))
        except Exception as e:  # ORT's errors for shape/type trouble
            raise LineguardError(f"{path}: does not run on a {spec.height}x{spec.width} input ({str(e)[:160]})") from None
        amap = r[map_name]
        if amap.ndim == 4 and amap.shape[1] != 1 or amap.shape[0] != batch:
            raise LineguardError(f"{path}: output {map_name!r} has shape {list(amap.shape)}, expected [N,1,H,W] or [N,H,W]")
        if not np.isfinite(amap).all():
            raise LineguardError(f"{path}: output {map_name!r} is not finite on a test input")
        prov = {"source": {"onnx": str(path.resolve()), "sha256": sha256_file(path)}, "libraries": library_versions()}
        parity = {"reference": "the imported graph itself (not re-exported)", "checked": "runs, finite map"}
        if record:  # trained by `lineguard train expert`: its parity against PyTorch and how it was trained
            parity = record["parity"] | {"reference": "PyTorch eager fp32 (train expert, before export)"}
            prov["trained"] = {"config": record.get("config"), "training": record.get("training")}
        write_expert_stage(writer, "onnx", spec, tmp, {"anomaly_map": map_name, "score": score_name}, engine,
                           {"imported_from": path.name}, parity, prov, [])
        tmp.unlink()
    return out
