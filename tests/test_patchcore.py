"""PatchCore: the ONNX graph against PyTorch, the bank search against brute force, real accuracy on drawn defects."""

from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export tests need the export extra (torch)")

from lineguard.export.patchcore.backbone import load_backbone  # noqa: E402
from lineguard.export.patchcore.coreset import greedy_coreset  # noqa: E402
from lineguard.export.patchcore.fit import PatchCoreConfig, fit_patchcore, input_spec  # noqa: E402
from lineguard.export.patchcore.model import PatchCore  # noqa: E402
from lineguard.runtime.bundle import Bundle  # noqa: E402
from lineguard.runtime.bundle.engine import Engine  # noqa: E402
from lineguard.runtime.errors import LineguardError  # noqa: E402
from lineguard.runtime.imageio import list_images, read_image  # noqa: E402
from lineguard.runtime.stages.expert import Expert  # noqa: E402
from lineguard.runtime.stages.findings import hottest_region  # noqa: E402
from lineguard.runtime.stages.preprocess import to_batch  # noqa: E402


def _model(bundle_dir: Path, synth: Path) -> PatchCore:
    """Refit the bundle's model in PyTorch (fitting is deterministic for a seed)."""
    images = [read_image(p) for p in list_images(synth / "train" / "good")]
    model, _ = fit_patchcore(images, PatchCoreConfig(size=128, coreset=0.25, seed=0), progress=False)
    return model.requires_grad_(False)


def test_onnx_matches_pytorch_on_real_and_random_frames(bundle_dir, synth):
    model = _model(bundle_dir, synth)
    engine = Engine(Bundle.load(bundle_dir).variant_path("expert", "fp32"))
    spec = input_spec(128)
    real = to_batch([read_image(p) for p in sorted((synth / "test").glob("*/*.png"))], spec)
    noise = np.random.default_rng(1).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    for x in (real, noise, real[:1]):  # dynamic batch: 8, 3 and 1
        with torch.no_grad():
            ref_map, ref_score = (t.numpy() for t in model(torch.from_numpy(x)))
        out = engine.run({"image": x})
        assert out["anomaly_map"].shape == (len(x), 1, 128, 128)
        corr = np.corrcoef(ref_map.ravel(), out["anomaly_map"].ravel())[0, 1]
        assert corr > 0.9999
        np.testing.assert_allclose(out["score"], ref_score, rtol=1e-3)


def test_chunked_nearest_neighbour_equals_cdist():
    torch.manual_seed(0)
    backbone, _ = load_backbone("resnet18", None, 0)
    bank = torch.randn(1000, 384)
    model = PatchCore(backbone, (64, 64), bank, chunk=300)  # 4 chunks, the last one short
    e = torch.randn(2, 50, 384)
    d2, idx = model.nearest(e)
    ref = torch.cdist(e, bank)
    np.testing.assert_allclose(d2.sqrt(), ref.min(-1).values, rtol=1e-4, atol=1e-3)
    assert torch.equal(idx, ref.argmin(-1))


def test_reweighted_score_matches_the_paper_formula():
    torch.manual_seed(0)
    backbone, _ = load_backbone("resnet18", None, 0)
    bank = torch.randn(200, 384)
    model = PatchCore(backbone, (64, 64), bank, score_mode="reweight", num_neighbors=5)
    e = torch.randn(3, 40, 384)
    d = torch.cdist(e, bank)
    patch, nn_idx = d.min(-1)
    got = model.image_score(e, patch, nn_idx)
    for n in range(3):
        p = int(patch[n].argmax())
        m_test, m_star = e[n, p], bank[nn_idx[n, p]]
        support = torch.cdist(m_star[None], bank)[0].argsort()[:5]  # N_b(m*), m* itself first
        dist = torch.cdist(m_test[None], bank[support])[0]
        weight = 1 - torch.exp(dist[0]) / torch.exp(dist).sum()
        assert float(got[n]) == pytest.approx(float(weight * patch[n, p]), rel=1e-4)


@pytest.mark.parametrize("n, k, dim", [(300, 20, 16), (3000, 150, 8)])
def test_greedy_coreset_is_farthest_point_selection(n, k, dim):
    # clustered points, so the triangle-inequality pruning really skips work
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, dim, generator=g) + 5 * torch.randn(10, dim, generator=g).repeat(n // 10, 1)
    got = greedy_coreset(x, k, proj_dim=64, seed=0, progress=False)  # dim < 64: no projection
    # brute force: start where the function starts, then repeatedly take the farthest point
    sel = [int(got[0])]
    for _ in range(k - 1):
        sel.append(int(torch.cdist(x, x[sel]).min(1).values.argmax()))
    assert got.tolist() == sel
    assert len(set(sel)) == k


def test_bank_is_capped_by_bytes(synth):
    images = [read_image(p) for p in list_images(synth / "train" / "good")[:4]]
    _, rec = fit_patchcore(images, PatchCoreConfig(size=64, coreset=1.0, max_bank_mb=0.1), progress=False)
    assert rec["bank_size"] * rec["bank_dim"] * 4 <= 0.1 * 2**20
    assert rec["coreset_capped"]


def test_defects_rank_above_clean_parts_and_hottest_region_is_on_them(bundle_dir, synth):
    expert = Expert(Bundle.load(bundle_dir))
    good = [read_image(p) for p in list_images(synth / "test" / "good")]
    blobs = sorted((synth / "test" / "blob").glob("*.png"))
    good_scores = [r.score for r in expert(good)]
    results = expert([read_image(p) for p in blobs])
    assert min(r.score for r in results) > max(good_scores)
    for p, r in zip(blobs, results):
        mask = cv2.imread(str(synth / "ground_truth" / "blob" / f"{p.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
        region = hottest_region(r.anomaly_map, mask.shape)
        x0, y0, x1, y1 = region.box
        assert mask[y0:y1, x0:x1].any(), f"{p.name}: hottest region {region.box} misses the defect"


def test_weights_from_a_torchvision_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(7)
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    backbone, prov = load_backbone("resnet18", tmp_path / "r18.pth")
    assert torch.equal(backbone.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    assert prov["sha256"] and prov["weights"].endswith("r18.pth")


def test_wrong_or_broken_weights_are_refused(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(LineguardError, match=r"r50\.pth: does not match resnet18 \((unexpected|missing) key"):
        load_backbone("resnet18", tmp_path / "r50.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(LineguardError, match=r"junk\.pth: not a loadable torch state dict"):
        load_backbone("resnet18", tmp_path / "junk.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(LineguardError, match=r"list\.pth: not a state dict"):
        load_backbone("resnet18", tmp_path / "list.pth")


def test_wide_resnet_backbone_exports_with_parity(synth, tmp_path):
    from lineguard.export.expert import export_patchcore

    b = Bundle.load(export_patchcore(synth, tmp_path / "w", PatchCoreConfig(backbone="wide_resnet50_2", size=64,
                                                                             coreset=0.2), progress=False))
    opts = b.stage("expert")["options"]
    assert opts["backbone"] == "wide_resnet50_2" and opts["bank_dim"] == 512 + 1024
    assert b.stage("expert")["variants"]["fp32"]["parity"]["map_pearson"] > 0.999


def test_parity_measure_catches_a_wrong_graph():
    from lineguard.export.parity import map_parity

    rng = np.random.default_rng(0)
    maps = rng.random((2, 1, 16, 16)).astype(np.float32)

    def ref(x):
        return maps, maps.reshape(2, -1).max(1)

    def flipped(x):  # the kind of bug a wrong layout makes: right values, wrong places
        return maps[..., ::-1], maps.reshape(2, -1).max(1)

    p = map_parity(ref, flipped, {"random": np.zeros((2, 16, 16, 3), np.uint8)})
    assert p["map_pearson"] < 0.5 and p["map_max_abs_err"] > 0.5
    assert map_parity(ref, ref, {"random": np.zeros(2)})["map_pearson"] == 1.0
