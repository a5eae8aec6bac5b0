"""`lineguard export triton`: a bundle's models as a Triton Inference Server model repository.

    REPO/lineguard.json                      which bundle (its hash), what each model is
    REPO/lineguard_expert/config.pbtxt       inputs/outputs as in the manifest, dynamic batching, instances
    REPO/lineguard_expert/<version>/...      python: model.py + the bundle; onnxruntime: model.onnx
    REPO/lineguard_sam_encoder/, REPO/lineguard_sam_decoder/   the same for SAM's graphs, where the bundle has SAM

The version directory is a number derived from the bundle's hash (Triton's versions are
integers); the full hash is in ``lineguard.json`` and in each config's parameters, so a station can
refuse a repository built from another bundle. ``--backend python`` runs the bundle's ONNX graphs
through ``lineguard.runtime``'s engine inside Triton's Python backend (any Triton, CPU or GPU);
``--backend onnxruntime`` hands them to Triton's own ONNX Runtime backend, with the TensorRT
accelerator set from the bundle's precision (for GPU servers). The LLM is not exported: its token
loop would cross the network once per token, with its KV cache (DESIGN.md).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lineguard.runtime.bundle import Bundle, BundleWriter
from lineguard.runtime.bundle.engine import Engine, EngineOptions
from lineguard.runtime.errors import InputError
from lineguard.runtime.inspection import sam_precision
from lineguard.runtime.station.triton_pool import EXPERT_MODEL, SAM_MODELS

TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64",
         "int32": "TYPE_INT32", "bool": "TYPE_BOOL"}

MODEL_PY = '''"""One graph of a lineguard bundle in Triton's Python backend (written by `lineguard export triton`)."""
import ctypes
import json
import os
import sys

# Triton's embedded interpreter does not read PYTHONPATH; `lineguard triton` sets it to the
# folders where lineguard and onnxruntime are installed
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from lineguard.runtime.bundle import Bundle  # noqa: E402
from lineguard.runtime.bundle.engine import Engine, EngineOptions  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.dirname(__file__)
        bundle = Bundle.load(os.path.join(here, "bundle"))
        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config["parameters"].items()}
        stage, graph, precision = p["stage"], p["graph"], p["precision"]
        path = bundle.variant_path(stage, precision) if graph == "model" else \
            bundle.root / bundle.stage(stage)["variants"][precision]["graphs"][graph]
        device = "cuda" if args.get("model_instance_kind") == "GPU" else "cpu"
        self.engine = Engine(path, EngineOptions(device=device))
        self.inputs = list(self.engine.inputs)
        self.outputs = list(self.engine.outputs)
        self.batched = int(config.get("max_batch_size", 0)) > 0

    def execute(self, requests):
        feeds = [{n: np.from_dlpack(pb_utils.get_input_tensor_by_name(r, n)) for n in self.inputs} for r in requests]
        if self.batched and len(feeds) > 1:  # the dynamic batcher's requests: one run over all their frames
            ends = np.cumsum([len(f[self.inputs[0]]) for f in feeds])[:-1]
            res = self.engine.run({n: np.concatenate([f[n] for f in feeds]) for n in self.inputs})
            parts = {n: np.split(res[n], ends) for n in self.outputs}
            results = [{n: parts[n][i] for n in self.outputs} for i in range(len(feeds))]
        else:
            results = [self.engine.run(f) for f in feeds]
        return [pb_utils.InferenceResponse([_tensor(n, r[n]) for n in self.outputs]) for r in results]


_USED = ctypes.c_char_p(b"used_dltensor")  # lives as long as the module: capsules keep a pointer to it
_GET_NAME = ctypes.pythonapi.PyCapsule_GetName
_GET_NAME.restype, _GET_NAME.argtypes = ctypes.c_char_p, [ctypes.py_object]


def _tensor(name, array):
    """By DLPack, not as a numpy array: the backend's stub was built against numpy 1, and numpy 2
    arrays reached the client empty that way. The stub marks a capsule it took "used_dlpack", not
    DLPack's "used_dltensor", so numpy's capsule destructor would print a traceback per tensor
    (harmless: the stub frees the tensor); the standard name tells it the tensor was taken."""
    capsule = np.ascontiguousarray(array).__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    if _GET_NAME(capsule) == b"used_dlpack":  # only where the stub took it under that name
        ctypes.pythonapi.PyCapsule_SetName(ctypes.py_object(capsule), _USED)
    return tensor
'''


@dataclass
class Model:
    """One Triton model of the repository: a graph of the bundle."""

    name: str
    stage: str
    graph: str  # "model" for the variant's file, else the key in the variant's ``graphs`` (SAM's)
    precision: str
    file: Path
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    batched: bool  # dynamic batch on the first dimension (the expert); SAM's graphs take one frame


def plan(bundle: Bundle, precision: str, stages: tuple[str, ...], sam_asked: str | None = None) -> list[Model]:
    stage = bundle.stage("expert")
    if precision not in stage["variants"]:
        raise InputError(f"--precision {precision}: the bundle's expert has {', '.join(stage['variants'])}")
    batched = not isinstance(stage["inputs"][0]["shape"][0], int)  # a fixed batch (anomalib's 2) is not batched
    models = [Model(EXPERT_MODEL, "expert", "model", precision, bundle.variant_path("expert", precision),
                    stage["inputs"], stage["outputs"], batched)]
    if "sam" in stages and bundle.has_stage("sam"):
        sp = sam_precision(bundle, precision, sam_asked)
        graphs = bundle.stage("sam")["variants"].get(sp, {}).get("graphs")
        if not graphs:
            raise InputError(f"--sam-precision {sp}: the bundle's SAM has {', '.join(bundle.stage('sam')['variants'])}")
        for graph, name in SAM_MODELS.items():
            inputs, outputs = graph_io(bundle.root / graphs[graph])
            models.append(Model(name, "sam", graph, sp, bundle.root / graphs[graph], inputs, outputs, False))
    return models


def graph_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A graph's inputs and outputs as the manifest writes them, read by ONNX Runtime (the station's
    own dependency: a repository is written where the bundle is served)."""
    engine = Engine(path, EngineOptions(device="cpu", threads=1, warmup=0))
    return engine.io_specs("inputs"), engine.io_specs("outputs")


def _dims(spec: dict[str, Any], batched: bool) -> tuple[list[int], list[int] | None]:
    """Triton's dims (without the batch dimension when batching) and, for an output that is only
    a batch, the reshape Triton needs to give it a dimension."""
    shape = [d if isinstance(d, int) else -1 for d in spec["shape"]]
    dims = shape[1:] if batched else shape
    return (dims, None) if dims else ([1], [])


def _tensor(spec: dict[str, Any], batched: bool) -> str:
    dtype = TYPES.get(spec["dtype"])
    if dtype is None:
        raise InputError(f"{spec['name']}: dtype {spec['dtype']} has no Triton type here")
    dims, reshape = _dims(spec, batched)
    extra = f", reshape: {{ shape: [ {', '.join(map(str, reshape))} ] }}" if reshape is not None else ""
    return f'  {{ name: "{spec["name"]}", data_type: {dtype}, dims: [ {", ".join(map(str, dims))} ]{extra} }}'


def config_pbtxt(m: Model, backend: str, digest: str, instances: int, max_batch: int, queue_delay_us: int,
                 kind: str) -> str:
    lines = [f'name: "{m.name}"', f'backend: "{backend}"', f"max_batch_size: {max_batch if m.batched else 0}",
             "input [", ",\n".join(_tensor(s, m.batched) for s in m.inputs), "]",
             "output [", ",\n".join(_tensor(s, m.batched) for s in m.outputs), "]"]
    if m.batched:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}")
    lines.append(f"instance_group [ {{ count: {instances}, kind: {kind} }} ]")
    for key, value in (("lineguard_bundle_hash", digest), ("precision", m.precision), ("stage", m.stage),
                       ("graph", m.graph)):
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    if backend == "onnxruntime" and m.precision in ("fp16", "int8", "trt"):
        mode = "INT8" if m.precision == "int8" else "FP16"
        lines.append('optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt"'
                     f' parameters {{ key: "precision_mode" value: "{mode}" }} }} ] }} }}')
    return "\n".join(lines) + "\n"


def export_triton(bundle_path: str | Path, out: str | Path, backend: str = "python", precision: str = "fp32",
                  instances: int = 1, max_batch: int = 8, queue_delay_us: int = 1000, gpu: bool = False,
                  force: bool = False, stages: tuple[str, ...] = ("expert", "sam"),
                  sam_asked: str | None = None) -> dict[str, Any]:
    """Write the repository; returns what ``lineguard.json`` says."""
    if backend not in ("python", "onnxruntime"):
        raise InputError(f"--backend {backend}: python or onnxruntime")
    unknown = set(stages) - {"expert", "sam"}
    if unknown or "expert" not in stages:
        raise InputError(f"--stages {','.join(stages)}: the expert, and SAM where wanted (expert or expert,sam)")
    bundle = Bundle.load(bundle_path)
    models = plan(bundle, precision, stages, sam_asked)
    out = Path(out)
    if out.exists():
        if not force:
            raise InputError(f"{out} exists (use --force to replace it)")
        shutil.rmtree(out)
    digest = bundle.content_hash()
    version = int(digest[:7], 16) % 10**8 + 1  # Triton versions are positive integers
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    for m in models:
        vdir = out / m.name / str(version)
        vdir.mkdir(parents=True)
        (out / m.name / "config.pbtxt").write_text(config_pbtxt(m, backend, digest, instances, max_batch,
                                                                queue_delay_us, kind))
        if backend == "python":
            (vdir / "model.py").write_text(MODEL_PY)
            for p in bundle.root.rglob("*"):  # hard links where the file system allows: a bundle may hold GBs
                if p.is_file():
                    BundleWriter.link_or_copy(p, vdir / "bundle" / p.relative_to(bundle.root))
        else:
            shutil.copy2(m.file, vdir / "model.onnx")
            data = m.file.with_suffix(".onnx.data")
            if data.is_file():
                shutil.copy2(data, vdir / data.name)
    info = {"format": "lineguard-triton", "bundle_hash": digest, "bundle": str(bundle.root.resolve()),
            "product": bundle.manifest.get("product"), "backend": backend, "precision": precision,
            "models": {f"{m.stage}_{m.graph}" if m.stage == "sam" else m.stage:
                       {"name": m.name, "version": version, "precision": m.precision, "inputs": m.inputs,
                        "outputs": m.outputs, "batched": m.batched} for m in models},
            "manifest": bundle.manifest}
    info["models"]["expert"] |= {"roles": bundle.stage("expert").get("roles", {}),
                                 "input_spec": bundle.stage("expert").get("input_spec")}
    (out / "lineguard.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
