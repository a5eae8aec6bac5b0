"""Real photos: the Magnetic Tile Defect dataset, where it is present (LINEGUARD_MTD or ../shared/data/mtd)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export tests need the export extra (torch)")

from benchmarks.mvtec import read_mask  # noqa: E402
from benchmarks.mvtec import test_samples as mvtec_samples  # noqa: E402  (alias: pytest would collect it)
from export.expert import export_patchcore  # noqa: E402
from export.patchcore.fit import PatchCoreConfig  # noqa: E402
from runtime.bundle import Bundle  # noqa: E402
from runtime.expert import Expert  # noqa: E402
from runtime.findings import hottest_region  # noqa: E402
from runtime.imageio import list_images, read_image  # noqa: E402


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
