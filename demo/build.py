"""The embedded default bundle: generated parts → a self-supervised expert, trained here →
imported, calibrated, classes fitted, INT8-quantized. Cached under ``~/.cache/lineguard`` (or
``--cache`` / ``LINEGUARD_CACHE``) by a key over its settings and the code that makes it, so a
change to either rebuilds it and an unchanged one is reused in a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from runtime.bundle import Bundle
from runtime.errors import BundleError, LineguardError

from .dataset import merge_parts

# One product, as on a real line (a bundle is per product). The tile is the default: a textured
# surface like the magnetic tiles of ../shared/data/mtd. Per-part figures: BENCHMARKS.md.
PARTS = "tile"
# The code whose change changes the default bundle (the key hashes these packages' sources).
SOURCES = ("synth", "train", "demo/build.py", "demo/dataset.py", "export/onnx_import.py", "calibration")


@dataclass(frozen=True)
class DefaultConfig:
    parts: str = PARTS
    n: int = 60  # normal parts per type (a fifth held out for calibration); test: n/4 per defect type
    size: int = 256
    seed: int = 0
    expert_steps: int = 700
    expert_minutes: float = 6.0  # a cap for slow machines: 700 steps take about 4 minutes on 2 cores
    shots: int = 5  # labelled examples per defect type for the classifier


def cache_root(cache: str | Path | None) -> Path:
    return Path(cache or os.environ.get("LINEGUARD_CACHE") or Path.home() / ".cache" / "lineguard")


def build_key(cfg: DefaultConfig) -> str:
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    repo = Path(__file__).resolve().parents[1]
    for name in SOURCES:
        p = repo / name
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(f.relative_to(repo).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_default(cache: str | Path | None = None, cfg: DefaultConfig | None = None, rebuild: bool = False,
                  progress: bool = True) -> Path:
    """The default bundle's folder, built if missing or stale; each step is kept, so an
    interrupted build resumes where it stopped."""
    cfg = cfg or DefaultConfig()
    key = build_key(cfg)
    home = cache_root(cache) / f"default-{key}"
    bundle = home / "bundle"
    if rebuild:
        shutil.rmtree(home, ignore_errors=True)
    try:
        Bundle.load(bundle)
        return bundle
    except BundleError:
        pass
    try:
        from synth.line import make_line
        from train.expert import ExpertTrainConfig, train_expert
    except ImportError:
        raise LineguardError("building the default bundle needs the export extra: pip install 'lineguard[export]'") \
            from None
    home.mkdir(parents=True, exist_ok=True)
    _say(f"building the default bundle in {home} (once; later runs reuse it)")
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    data, line = home / "data", home / "data" / "line"
    if not (data / "synth.json").is_file():
        t = time.perf_counter()
        _say(f"[1/4] generating the product line ({cfg.parts.replace(',', ', ')}) ...")
        make_line(data, n=cfg.n, parts=cfg.parts, size=cfg.size, seed=cfg.seed, progress=progress, trigger=True)
        merge_parts(data, cfg.parts.split(","), line)
        times["data"] = time.perf_counter() - t

    onnx = home / "expert.onnx"
    if not onnx.with_suffix(".json").is_file():
        t = time.perf_counter()
        _say("[2/4] training the expert from scratch: synthetic anomalies on normal parts (no pretrained weights) ...")
        train_expert(line / "train" / "good", onnx,
                     ExpertTrainConfig(size=cfg.size, crop=min(128, cfg.size), steps=cfg.expert_steps,
                                       minutes=cfg.expert_minutes,
                                       seed=cfg.seed), progress=progress)
        times["expert"] = time.perf_counter() - t

    t = time.perf_counter()
    _say("[3/4] bundling: import, calibrate on held-out normal parts, fit defect classes, INT8 ...")
    work = home / "bundle.partial"
    shutil.rmtree(work, ignore_errors=True)
    _assemble(work, onnx, line, cfg, progress)
    times["bundle"] = time.perf_counter() - t

    shutil.rmtree(bundle, ignore_errors=True)
    work.rename(bundle)
    times["total"] = time.perf_counter() - t_all
    (home / "build.json").write_text(json.dumps({"key": key, "config": asdict(cfg),
                                                 "seconds": {k: round(v, 1) for k, v in times.items()}}, indent=2))
    for old in cache_root(cache).glob("default-*"):  # stale builds: their inputs changed
        if old != home and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    _say(f"[4/4] default bundle ready in {times['total']:.0f} s: {bundle}")
    return bundle


def _assemble(out: Path, onnx: Path, line: Path, cfg: DefaultConfig, progress: bool) -> None:
    from calibration.calibrate import calibrate
    from calibration.classes import fit_classes
    from calibration.variants import build_variants
    from export.onnx_import import import_onnx_expert

    import_onnx_expert(onnx, out, product="line", color="BGR")
    calibrate(out, normal=str(line / "calib" / "good"), rule="myriad", progress=progress)
    fit_classes(out, line, shots=cfg.shots, seed=cfg.seed, progress=progress)
    build_variants(out, str(line / "calib" / "good"), str(line), ("int8",), progress=progress)
