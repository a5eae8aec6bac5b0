"""`lineguard export expert`: fit PatchCore or import an ONNX expert, check it, write a bundle."""

from __future__ import annotations

import logging
import shutil
import warnings as pywarnings  # a parameter below is called `warnings`
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lineguard.export.onnx_export import export_onnx
from lineguard.export.parity import torch_vs_onnx
from lineguard.export.patchcore.fit import PatchCoreConfig, fit_patchcore, input_spec
from lineguard.export.versions import library_versions
from lineguard.runtime.bundle import BundleWriter
from lineguard.runtime.bundle.engine import Engine, EngineOptions
from lineguard.runtime.bundle.manifest import InputSpec
from lineguard.runtime.errors import LineguardError
from lineguard.runtime.imageio import normal_images, read_image
from lineguard.runtime.stages.preprocess import to_batch

log = logging.getLogger("lineguard.export")

MIN_PEARSON = 0.999
EXPERT_FILE = "expert/model.fp32.onnx"


def training_images(folder: str | Path) -> tuple[list[Path], str]:
    """Image files for fitting, and a product name guessed from the folder.

    Accepts a flat folder of images or an MVTec-layout category root (uses ``train/good``).
    """
    files = normal_images(folder)
    root = files[0].parent
    product = root.parent.parent.name if root.parts[-2:] == ("train", "good") else root.name
    return files, product


def _check_target(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise LineguardError(f"{out}: already exists (pass --force to replace it)")


def write_expert_stage(writer: BundleWriter, kind: str, spec: InputSpec, onnx_src: Path,
                       roles: dict[str, str | None], engine: Engine, options: dict[str, Any],
                       parity: dict[str, Any], provenance: dict[str, Any], warnings: list[str]) -> None:
    """Put an expert graph and its description into the bundle being written."""
    shutil.copyfile(onnx_src, writer.path(EXPERT_FILE))
    writer.add_file(EXPERT_FILE, role="expert")
    writer.manifest["stages"]["expert"] = {
        "kind": kind,
        "inputs": engine.io_specs("inputs"),
        "outputs": engine.io_specs("outputs"),
        "input_spec": spec.to_dict(),
        "roles": roles,
        "options": options,
        "warnings": warnings,
        "variants": {"fp32": {"file": EXPERT_FILE, "parity": parity, "provenance": provenance}},
    }
    writer.manifest["provenance"] = {"libraries": library_versions()}


def export_patchcore(train: str | Path, out: str | Path, cfg: PatchCoreConfig, product: str | None = None,
                     force: bool = False, progress: bool = True) -> Path:
    out = Path(out)
    _check_target(out, force)
    files, guessed = training_images(train)
    images = [read_image(p) for p in files]
    with pywarnings.catch_warnings(record=True) as caught:
        pywarnings.simplefilter("always")
        model, record = fit_patchcore(images, cfg, progress=progress)
    warns = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    for w in warns:
        log.warning(w)
    model.requires_grad_(False)
    spec = input_spec(cfg.size)
    # parity on real frames (the last training images) and on uniform noise
    rng = np.random.default_rng(cfg.seed)
    real = to_batch(images[-4:], spec)
    noise = rng.integers(0, 256, (2, cfg.size, cfg.size, 3), dtype=np.uint8)
    with BundleWriter(out, product=product or guessed) as writer:
        onnx_path = writer.tmp / "_export.onnx"
        prov = export_onnx(model, (torch.from_numpy(real[:2]),), onnx_path, ["image"], ["anomaly_map", "score"],
                           {"image": {0: "N"}, "anomaly_map": {0: "N"}, "score": {0: "N"}},
                           {"anomaly_map": ["N", 1, cfg.size, cfg.size], "score": ["N"]})
        engine = Engine(onnx_path, EngineOptions(device="cpu"))
        parity = torch_vs_onnx(model, engine, {"real": real, "random": noise})
        parity["reference"] = "PyTorch eager fp32 (same module)"
        if parity["map_pearson"] < MIN_PEARSON:
            raise LineguardError(
                f"exported expert disagrees with PyTorch: map Pearson {parity['map_pearson']:.5f} < {MIN_PEARSON}"
            )
        fitted = {k: v for k, v in record.items() if k != "backbone"}
        options = {k: v for k, v in vars(cfg).items() if k != "weights"} | fitted | {
            "layers": ["layer2", "layer3"], "feature": "3x3 avg-pooled, layer3 upsampled to layer2"}
        prov |= {"source": record["backbone"], "train_dir": str(files[0].parent.resolve()),
                 "train_images": len(images)}
        write_expert_stage(writer, "patchcore", spec, onnx_path, {"anomaly_map": "anomaly_map", "score": "score"},
                           engine, options, parity, prov, warns)
        onnx_path.unlink()
    return out
