"""The bundle manifest (format v1): schema, validation and the input spec.

A bundle is a directory with ``manifest.json`` at its root. Export writes it, calibration
updates it, the runtime reads it. Every check here names the field that is wrong, because
a line engineer edits thresholds in this file by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lineguard.runtime.errors import BundleError

FORMAT = "lineguard-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8", "int4", "trt")


@dataclass(frozen=True)
class InputSpec:
    """What a stage's image input expects, so the runtime can feed any frame to it.

    ``normalize == "in_graph"`` means scaling and mean/std live inside the graph and the
    runtime feeds raw uint8 pixels; otherwise the runtime applies ``scale``, ``mean``, ``std``.
    """

    name: str
    height: int
    width: int
    layout: str = "NHWC"  # or "NCHW"
    dtype: str = "uint8"  # or "float32"
    color: str = "BGR"  # channel order the graph expects: BGR (OpenCV's), RGB or GRAY
    normalize: str = "in_graph"  # or "runtime"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    batch: int | None = None  # a graph exported with a fixed batch is fed exactly this many frames
    # the graph takes any size and resizes inside (anomalib's exports): frames of one size are
    # fed as they are, and scored exactly as their source scores them
    any_size: bool = False

    @property
    def channels(self) -> int:
        return 1 if self.color == "GRAY" else 3

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.batch is None:  # dynamic, as almost every graph: manifests stay as they were
            del d["batch"]
        if not self.any_size:
            del d["any_size"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "input_spec") -> InputSpec:
        try:
            spec = cls(
                name=str(d["name"]),
                height=int(d["height"]),
                width=int(d["width"]),
                layout=str(d.get("layout", "NHWC")),
                dtype=str(d.get("dtype", "uint8")),
                color=str(d.get("color", "BGR")),
                normalize=str(d.get("normalize", "in_graph")),
                scale=float(d.get("scale", 1.0 / 255.0)),
                mean=tuple(float(v) for v in d.get("mean", (0.485, 0.456, 0.406))),
                std=tuple(float(v) for v in d.get("std", (0.229, 0.224, 0.225))),
                batch=None if d.get("batch") is None else int(d["batch"]),
                any_size=bool(d.get("any_size", False)),
            )
        except KeyError as e:
            raise BundleError(f"manifest.json: {where} lacks {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise BundleError(f"manifest.json: {where} is malformed: {e}") from None
        for key, value, allowed in (
            ("layout", spec.layout, ("NHWC", "NCHW")),
            ("dtype", spec.dtype, ("uint8", "float32")),
            ("color", spec.color, ("BGR", "RGB", "GRAY")),
            ("normalize", spec.normalize, ("in_graph", "runtime")),
        ):
            if value not in allowed:
                raise BundleError(f"manifest.json: {where}.{key} is {value!r}, expected one of {allowed}")
        if spec.batch is not None and spec.batch <= 0:
            raise BundleError(f"manifest.json: {where}.batch is {spec.batch}, expected a positive batch or null")
        if spec.height <= 0 or spec.width <= 0:
            raise BundleError(f"manifest.json: {where} size {spec.height}x{spec.width} is not positive")
        if spec.normalize == "runtime" and len(spec.mean) != len(spec.std):
            raise BundleError(f"manifest.json: {where}.mean and .std differ in length")
        return spec


def _require(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise BundleError(f"manifest.json: {where} lacks {key!r}")
    if not isinstance(d[key], kind):
        raise BundleError(f"manifest.json: {where}.{key} should be {getattr(kind, '__name__', kind)}")
    return d[key]


def validate(m: Any) -> None:
    """Raise BundleError naming the first thing wrong with a parsed manifest."""
    if not isinstance(m, dict):
        raise BundleError("manifest.json: top level is not a JSON object")
    fmt = _require(m, "format", str, "manifest")
    if fmt != FORMAT:
        raise BundleError(f"manifest.json: format is {fmt!r}, not {FORMAT!r}")
    version = _require(m, "format_version", int, "manifest")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"manifest.json: format_version {version} is not supported (this lineguard reads {FORMAT_VERSION})"
        )
    _require(m, "product", str, "manifest")
    files = _require(m, "files", dict, "manifest")
    for path, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise BundleError(f"manifest.json: files[{path!r}] lacks its sha256")
    for key in ("thresholds", "normalization"):
        _require(m, key, dict, "manifest")
    stages = _require(m, "stages", dict, "manifest")
    if not stages:
        raise BundleError("manifest.json: no stages")
    for name, stage in stages.items():
        where = f"stages.{name}"
        if not isinstance(stage, dict):
            raise BundleError(f"manifest.json: {where} is not an object")
        _require(stage, "kind", str, where)
        variants = _require(stage, "variants", dict, where)
        if not variants:
            raise BundleError(f"manifest.json: {where}.variants is empty")
        for prec, var in variants.items():
            if prec not in PRECISIONS:
                raise BundleError(f"manifest.json: {where}.variants has unknown precision {prec!r}")
            file = _require(var, "file", str, f"{where}.variants.{prec}")
            if file not in files:
                raise BundleError(f"manifest.json: {where}.variants.{prec}.file {file!r} has no entry in files")
        for key in ("inputs", "outputs"):
            for i, t in enumerate(_require(stage, key, list, where)):
                for k in ("name", "dtype", "shape"):
                    _require(t, k, (str, list), f"{where}.{key}[{i}]")
        if "input_spec" in stage:
            InputSpec.from_dict(stage["input_spec"], f"{where}.input_spec")
