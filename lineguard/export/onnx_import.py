"""`lineguard export expert --kind onnx`: bring an existing ONNX anomaly model into a bundle.

Any graph with one image input and an anomaly-map output serves. anomalib 2.x's exports are
taken as anomalib writes them: ``input`` float NCHW RGB in [0, 1] of any size (resized and
normalised inside the graph), a fixed batch (PatchCore: 2) or a dynamic one (PaDiM), and
``anomaly_map`` / ``pred_score`` / ``pred_label`` / ``pred_mask`` outputs.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lineguard.export.expert import _check_target, write_expert_stage
from lineguard.export.model_threshold import model_thresholds
from lineguard.export.versions import library_versions
from lineguard.runtime.bundle import BundleWriter, sha256_file
from lineguard.runtime.bundle.engine import Engine, EngineOptions
from lineguard.runtime.bundle.manifest import InputSpec
from lineguard.runtime.errors import LineguardError

log = logging.getLogger("lineguard.export")


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


# folders anomalib and other exporters put every model in: they do not name the product
GENERIC_FOLDERS = {"model", "models", "onnx", "weights", "export", "exports", "openvino", "torch", "latest"}


def product_name(path: Path) -> str:
    """The file's stem, or the nearest folder that says more than "model" (anomalib writes
    every export as ``<root>/<category>/v0/weights/onnx/model.onnx``)."""
    for name in (path.stem, *(p.name for p in path.resolve().parents)):
        if name and name.lower() not in GENERIC_FOLDERS and not re.fullmatch(r"v\d+", name):
            return name
    return "product"


def _static_hw(o: Any) -> list[int] | None:
    hw = _dims(o)[-2:]
    return [int(d) for d in hw] if len(hw) == 2 and all(isinstance(d, int) and d > 0 for d in hw) else None


def _input_size(path: Path, hw: list[int | str], given: Sequence[int] | None, model: onnx.ModelProto,
                map_output: str | None) -> tuple[list[int], str, bool]:
    """The H, W to feed, where they came from (the flag, the graph's input, or its map), and
    whether the graph takes any size (it resizes inside: frames are then fed as they are).

    anomalib's default export takes any size and resizes inside the graph to the size it was
    trained at; that size is the anomaly map's, which it leaves static (or shape inference finds).
    """
    if given:
        return [int(v) for v in given], "--input-size", False
    if all(isinstance(d, int) and d > 0 for d in hw):
        return [int(d) for d in hw], "the graph's input", False
    outputs = list(model.graph.output)
    try:  # not every exporter writes output shapes; inference finds them where the graph fixes them
        outputs += list(onnx.shape_inference.infer_shapes(model).graph.output)
    except Exception:  # noqa: BLE001 - a best effort: the flag remains
        pass
    for o in outputs:
        if (o.name == map_output if map_output else "map" in o.name.lower()) and (size := _static_hw(o)):
            return size, f"output {o.name!r}: the size the graph resizes to", True
    raise LineguardError(f"{path}: input size is dynamic ({hw}) and the anomaly map's is too: "
                         "pass --input-size H W (the size the model was trained at)")


def import_onnx_expert(model: str | Path, out: str | Path, product: str | None = None,
                       map_output: str | None = None, score_output: str | None = None,
                       input_size: Sequence[int] | None = None, color: str | None = None,
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                       force: bool = False, model_threshold: bool = True) -> Path:
    """Bring an ONNX expert into a bundle as it was written: fixed or dynamic batch, dynamic
    size (when the graph says what it resizes to), and its own threshold if it applies one."""
    path, out = Path(model), Path(out)
    _check_target(out, force)
    if not path.is_file():
        raise LineguardError(f"{path}: no such file")
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf decode errors have no common base class
        raise LineguardError(f"{path}: not an ONNX model ({str(e).splitlines()[0][:100]})") from None
    # anomalib (and torch's exporter) keep the weights in a file beside the graph: copied without it,
    # the graph is unusable, and onnx's own message does not say which file is missing
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            name = next((e.value for e in t.external_data if e.key == "location"), "")
            if not (path.parent / name).is_file():
                raise LineguardError(f"{path.parent / name}: missing (the graph keeps its weights there; "
                                     f"copy it beside {path.name})")
    onnx.load_external_data_for_model(m, str(path.parent))
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
    outputs = list(m.graph.output)
    (height, width), size_from, any_size = _input_size(path, hw, input_size, m, map_output)
    fixed = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    record = trained_record(path)
    color = color or record.get("input", {}).get("color") or ("GRAY" if ch == 1 else "RGB")
    if (color == "GRAY") != (ch == 1):
        raise LineguardError(f"{path}: --color {color} does not fit an input with {ch} channel(s)")
    is_float = elem == onnx.TensorProto.FLOAT
    spec = InputSpec(
        name=inp.name, height=height, width=width, layout=layout,
        dtype="float32" if is_float else "uint8", color=color,
        normalize="runtime" if is_float else "in_graph",
        mean=tuple(mean or (0.0,) * ch), std=tuple(std or (1.0,) * ch), batch=fixed,
        any_size=any_size,
    )
    if len(spec.mean) != ch or len(spec.std) != ch:
        raise LineguardError(f"--mean/--std need {ch} value(s) for a {ch}-channel input")
    map_name = _pick(outputs, map_output, ("anomaly_map", "map"), (3, 4), path, "anomaly map")
    if map_name is None:
        ranked = [o.name for o in outputs if len(_dims(o)) in (3, 4)]
        if not ranked:
            raise LineguardError(f"{path}: no 3-D or 4-D output to use as the anomaly map: pass --map-output")
        map_name = ranked[0]
    score_name = _pick(outputs, score_output, ("score",), (1, 2), path, "score")
    own = model_thresholds(m, score_name, map_name) if model_threshold else None

    with BundleWriter(out, product=product or product_name(path)) as writer:
        tmp = writer.tmp / "_import.onnx"
        onnx.save(m, str(tmp))  # folds external data, if any, into one file
        engine = Engine(tmp, EngineOptions(device="cpu", warmup=0))
        batch = fixed or 2  # a dynamic batch is probed with two frames, as the station will batch
        shape = (batch, ch, height, width) if layout == "NCHW" else (batch, height, width, ch)
        rng = np.random.default_rng(0)
        x = rng.random(shape, np.float32) if is_float else rng.integers(0, 256, shape, np.uint8)
        try:
            r = engine.run({inp.name: x}, [map_name] + ([score_name] if score_name else []))
        except Exception as e:  # ORT's errors for shape/type trouble
            raise LineguardError(f"{path}: does not run on a batch of {batch} at {height}x{width} "
                                 f"({str(e)[:160]})") from None
        amap = r[map_name]
        if amap.shape[0] != batch or amap.ndim == 4 and amap.shape[1] != 1:
            raise LineguardError(f"{path}: output {map_name!r} has shape {list(amap.shape)} for a batch of {batch}, "
                                 f"expected [{batch},1,H,W] or [{batch},H,W]")
        if score_name and r[score_name].size != batch:
            raise LineguardError(f"{path}: output {score_name!r} has shape {list(r[score_name].shape)} for a batch "
                                 f"of {batch}, expected one score per image")
        if not np.isfinite(amap).all():
            raise LineguardError(f"{path}: output {map_name!r} is not finite on a test input")
        prov = {"source": {"onnx": str(path.resolve()), "sha256": sha256_file(path)}, "libraries": library_versions()}
        parity = {"reference": "the imported graph itself (not re-exported)", "checked": "runs, finite map"}
        if record:  # trained by `lineguard train expert`: its parity against PyTorch and how it was trained
            parity = record["parity"] | {"reference": "PyTorch eager fp32 (train expert, before export)"}
            prov["trained"] = {"config": record.get("config"), "training": record.get("training")}
        options = {"imported_from": path.name, "input_size_from": size_from, "batch": fixed or "dynamic"}
        write_expert_stage(writer, "onnx", spec, tmp, {"anomaly_map": map_name, "score": score_name}, engine,
                           options, parity, prov, [])
        if own:
            writer.manifest["thresholds"] = own["thresholds"]
            writer.manifest["normalization"] = own["normalization"]
            writer.manifest["calibration"] = own["record"]
        tmp.unlink()
    return out


def describe_import(bundle: str | Path) -> str:
    """What the import decided, for the console: size, batch, threshold."""
    from lineguard.runtime.bundle import Bundle

    b = Bundle.load(bundle)
    spec, opts = b.input_spec("expert"), b.stage("expert")["options"]
    size = (f"any size, {spec.color} {spec.dtype}: the graph resizes to {spec.height}x{spec.width} (its anomaly "
            "map's size), so frames go in as they are" if spec.any_size else
            f"{spec.height}x{spec.width} {spec.color} {spec.dtype} (from {opts['input_size_from']})")
    lines = [f"product   {b.product}", f"input     {size}",
             f"batch     {opts['batch']}" + (" (a short batch is padded and the padding dropped)" if spec.batch else "")]
    if b.manifest.get("calibration", {}).get("rule") == "model":
        c, t = b.manifest["calibration"], b.thresholds
        lines.append(f"threshold image {t['image']:g}" + (f", pixel {t['pixel']:g}" if "pixel" in t else "")
                     + f" from the model itself ({c['image_from']}); `lineguard calibrate` replaces it")
    else:
        lines.append("threshold none yet: `lineguard calibrate` sets it")
    return "\n".join(lines)
