"""What the check builds: the sizes (real ones on a GPU, tiny ones in the dry run) and the bundles,
built as steps that a rerun skips."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """What the check builds: the real sizes on a GPU, tiny ones in the dry run (same steps)."""

    backbone: str
    sam_arch: str
    sam_sizes: tuple[int, ...]  # the first one goes into the served bundle
    llm: str  # "qwen2-0.5b" (benchmarks.llm_speed's shape) or "tiny" (lineguard.export.llm.tiny)
    n_train: int  # generated normal tiles the PatchCore is fitted to (its coreset search grows with them)


REAL = Sizes("wide_resnet50_2", "vit_b", (1024, 512), "qwen2-0.5b", 30)
DRY = Sizes("resnet18", "custom:64:2:2:1", (256, 128), "tiny", 10)


@dataclass
class Built:
    """The bundles the check measures: the served one (expert, SAM at the first size, LLM) and SAM-only ones."""

    bundle: Path
    data: Path
    sam_checkpoint: Path
    llm: Path
    sam_bundles: dict[int, Path] = field(default_factory=dict)


def build_steps(work: Path, sizes: Sizes) -> tuple[Built, list[tuple[str, Callable[[], Any]]]]:
    """The build as steps, each skipped when its output exists (a rerun measures at once)."""
    station = work / "station"  # serve_threads.expert_bundle wipes its folder: only the expert's files in it
    ck = work / f"sam_{sizes.sam_arch.replace(':', '_')}.pth"
    b = Built(station / "bundle", station / "data" / "tile", ck, work / f"llm_{sizes.llm}")
    b.sam_bundles = {s: b.bundle if i == 0 else work / f"sam_{s}" for i, s in enumerate(sizes.sam_sizes)}

    def expert() -> None:
        from ..serve_threads import expert_bundle

        if not has_stage(b.bundle, "expert"):
            expert_bundle(station, sizes.backbone, sizes.n_train)

    def trt_table() -> None:
        from lineguard.calibration.variants import build_variants

        if "trt" not in stage_of(b.bundle, "expert").get("variants", {}):
            build_variants(b.bundle, str(b.data), str(b.data), ("trt",), calib_images=16, progress=False)

    def sam(size: int) -> Callable[[], None]:
        def run() -> None:
            import torch

            from lineguard.export.sam.checkpoint import build_sam, parse_arch
            from lineguard.export.sam.export import export_sam

            if not ck.is_file():
                torch.manual_seed(0)  # random weights in the official layout, saved at the largest size
                torch.save(build_sam(parse_arch(sizes.sam_arch), max(sizes.sam_sizes)).state_dict(), ck)
            if not has_stage(b.sam_bundles[size], "sam"):
                export_sam(ck, sizes.sam_arch, b.sam_bundles[size], image_size=size)
        return run

    def llm() -> None:
        from lineguard.export.llm.export import export_llm

        if not has_stage(b.bundle, "llm"):
            export_llm(llm_checkpoint(b.llm, sizes.llm), b.bundle, ("int4",))

    steps = [(f"build: expert ({sizes.backbone} PatchCore, 256 px, calibrated)", expert),
             ("build: TensorRT INT8 calibration table", trt_table),
             *((f"build: SAM {sizes.sam_arch} at {s} px", sam(s)) for s in sizes.sam_sizes),
             (f"build: LLM {sizes.llm} INT4", llm)]
    return b, steps


def llm_checkpoint(out: Path, shape: str) -> Path:
    if shape == "tiny":
        from lineguard.export.llm.tiny import build_tiny

        return out if (out / "config.json").is_file() else build_tiny(out, "qwen2")
    from ..llm_speed import build_shape

    return build_shape(shape, out)


def stage_of(bundle: Path, name: str) -> dict[str, Any]:
    m = bundle / "manifest.json"
    return json.loads(m.read_text()).get("stages", {}).get(name, {}) if m.is_file() else {}


def has_stage(bundle: Path, name: str) -> bool:
    return bool(stage_of(bundle, name))
