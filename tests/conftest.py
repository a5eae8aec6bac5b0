"""Shared fixtures: generated parts with known defects, and a small PatchCore bundle built from them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lineguard.synth.tiles import make_dataset

REPO = Path(__file__).resolve().parents[1]
SIZE = 128


def mtd_root() -> Path | None:
    """The Magnetic Tile Defect dataset: $LINEGUARD_MTD, else ../shared/data/mtd beside the checkout."""
    for cand in (os.environ.get("LINEGUARD_MTD"), REPO.parent / "shared" / "data" / "mtd"):
        if cand and (Path(cand) / "magnetic_tile" / "train" / "good").is_dir():
            return Path(cand) / "magnetic_tile"
    return None


@pytest.fixture(scope="session")
def mtd() -> Path:
    root = mtd_root()
    if root is None:
        pytest.skip("Magnetic Tile Defect dataset not found: set LINEGUARD_MTD to its folder")
    return root


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MVTec-layout generated parts: 16 train/good, 4 test/good, 2 blobs + 2 scratches with masks."""
    return make_dataset(tmp_path_factory.mktemp("synth"), "tile", n_train=16, n_good=4, n_defect=4, size=SIZE, seed=3)


@pytest.fixture(scope="session")
def bundle_dir(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="export tests need the export extra (torch)")
    from lineguard.export.expert import export_patchcore
    from lineguard.export.patchcore.fit import PatchCoreConfig

    out = tmp_path_factory.mktemp("bundles") / "tile"
    return export_patchcore(synth, out, PatchCoreConfig(size=SIZE, coreset=0.25, seed=0), progress=False)


@pytest.fixture(scope="session")
def served_bundle(bundle_dir: Path, synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The expert bundle calibrated (F1 rule on the generated test set): it gives verdicts."""
    import shutil

    from helpers import lg

    b = tmp_path_factory.mktemp("serve") / "bundle"
    shutil.copytree(bundle_dir, b)
    r = lg("calibrate", b, "--dataset", synth, "--rule", "f1")
    assert r.returncode == 0, r.stderr
    return b


@pytest.fixture(scope="session")
def full_bundle(served_bundle, tmp_path_factory) -> Path:
    """Expert + tiny SAM + tiny LLM: all three stages, as a station runs them."""
    torch = pytest.importorskip("torch")
    from lineguard.export.llm.export import export_llm
    from lineguard.export.llm.tiny import build_tiny
    from lineguard.export.sam.checkpoint import build_sam, parse_arch
    from lineguard.export.sam.export import export_sam

    root = tmp_path_factory.mktemp("full")
    b = root / "bundle"
    shutil.copytree(served_bundle, b)
    torch.manual_seed(0)
    ck = root / "sam.pth"
    torch.save(build_sam(parse_arch("custom:64:2:2:1"), 256).state_dict(), ck)
    export_sam(ck, "custom:64:2:2:1", b, image_size=256)
    export_llm(build_tiny(root / "llm", "qwen2"), b, ("int4",))
    m = json.loads((b / "manifest.json").read_text())
    m["stages"]["llm"]["prompt"]["sampling"]["max_new_tokens"] = 12  # a short explanation keeps the test quick
    (b / "manifest.json").write_text(json.dumps(m))
    return b
