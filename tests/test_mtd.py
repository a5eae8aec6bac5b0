"""Real photos: the Magnetic Tile Defect dataset, where it is present (LINEGUARD_MTD or ../shared/data/mtd)."""

import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export tests need the export extra (torch)")

from lineguard.calibration.dataset import read_mask  # noqa: E402
from lineguard.calibration.dataset import test_samples as mvtec_samples  # noqa: E402  (alias: pytest would collect it)
from lineguard.export.expert import export_patchcore  # noqa: E402
from lineguard.export.patchcore.fit import PatchCoreConfig  # noqa: E402
from lineguard.runtime.bundle import Bundle  # noqa: E402
from lineguard.runtime.imageio import list_images, read_image  # noqa: E402
from lineguard.runtime.stages.expert import Expert  # noqa: E402
from lineguard.runtime.stages.findings import hottest_region  # noqa: E402


@pytest.fixture(scope="module")
def mtd_bundle(mtd, tmp_path_factory):
    train = tmp_path_factory.mktemp("mtd_train")
    for p in list_images(mtd / "train" / "good")[:24]:  # a small subset keeps this test quick
        (train / p.name).symlink_to(p)
    return Bundle.load(export_patchcore(train, tmp_path_factory.mktemp("b") / "mtd", PatchCoreConfig(size=128),
                                        progress=False))


def test_export_parity_on_real_grayscale_photos(mtd_bundle):
    parity = mtd_bundle.stage("expert")["variants"]["fp32"]["parity"]
    assert parity["real"]["map_pearson"] > 0.999 and parity["random"]["map_pearson"] > 0.999


def test_real_non_square_gray_frames_run_and_map_back(mtd, mtd_bundle):
    samples = [s for s in mvtec_samples(mtd) if s.defect != "good"][:6]
    frames = [read_image(s.path) for s in samples]
    assert all(f.ndim == 2 for f in frames)  # the dataset is 8-bit grayscale
    for s, f, r in zip(samples, frames, Expert(mtd_bundle)(frames)):
        assert r.anomaly_map.shape == (128, 128) and np.isfinite(r.score)
        region = hottest_region(r.anomaly_map, f.shape[:2])
        x0, y0, x1, y1 = region.box
        assert 0 <= x0 < x1 <= f.shape[1] and 0 <= y0 < y1 <= f.shape[0]
        assert read_mask(s, f.shape[:2]).any()


def test_int8_on_real_photos_tracks_fp32_and_the_gate_decides(mtd, mtd_bundle, tmp_path):
    from lineguard.calibration.variants import build_variants

    train = tmp_path / "normal"
    train.mkdir()
    for p in list_images(mtd / "train" / "good")[24:56]:  # normal frames the bundle was not fitted on
        (train / p.name).symlink_to(p)
    b = Path(shutil.copytree(mtd_bundle.root, tmp_path / "bundle"))
    summary = build_variants(b, str(train), str(mtd), ("int8",), calib_images=16, val_every=6, progress=False)
    first = summary["int8"]["tries"][0]["gate"]
    assert first["map_pearson"] > 0.95 and first["score_pearson"] > 0.95
    written = Bundle.load(b).stage("expert")
    for t in summary["int8"]["tries"]:
        g = t["gate"]
        assert g["passed"] == (g["image_auroc_drop_points"] <= 0.5 and g["pixel_auroc_drop_points"] <= 0.5)
    assert ("int8" in written["variants"]) == summary["int8"]["written"]
