"""An ONNX expert from elsewhere (anomalib-style: float NCHW RGB in, anomaly_map + pred_score out) serves like ours."""

from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export tests need the export extra (torch)")

from lineguard.export.onnx_import import import_onnx_expert  # noqa: E402
from lineguard.runtime.bundle import Bundle  # noqa: E402
from lineguard.runtime.errors import LineguardError  # noqa: E402
from lineguard.runtime.imageio import read_image  # noqa: E402
from lineguard.runtime.stages.expert import Expert  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Foreign(torch.nn.Module):
    """Stands in for an anomalib export: distance of each pixel from a fixed colour."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = ((x - 0.5) ** 2).sum(1, keepdim=True)
        return amap, amap.flatten(1).amax(1)


def _export_foreign(path: Path, batch_dynamic: bool = True) -> None:
    x = torch.rand(1, 3, 64, 64)
    axes = {"input": {0: "N"}, "anomaly_map": {0: "N"}, "pred_score": {0: "N"}} if batch_dynamic else None
    torch.onnx.export(Foreign(), (x,), str(path), dynamo=False, input_names=["input"],
                      output_names=["anomaly_map", "pred_score"], dynamic_axes=axes)


def test_imported_expert_matches_its_source(tmp_path, synth):
    _export_foreign(tmp_path / "foreign.onnx")
    out = import_onnx_expert(tmp_path / "foreign.onnx", tmp_path / "b", mean=MEAN, std=STD)
    b = Bundle.load(out)
    spec = b.input_spec("expert")
    assert (spec.layout, spec.dtype, spec.color, spec.normalize) == ("NCHW", "float32", "RGB", "runtime")
    assert b.stage("expert")["roles"] == {"anomaly_map": "anomaly_map", "score": "pred_score"}
    frames = [read_image(p) for p in sorted((synth / "test").glob("*/*.png"))[:3]]
    got = Expert(b)(frames)
    for frame, r in zip(frames, got):
        # the reference: the source module on the same frame, preprocessed by hand
        rgb = torch.from_numpy(cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA)[..., ::-1].copy()).float() / 255
        x = ((rgb - torch.tensor(MEAN)) / torch.tensor(STD)).permute(2, 0, 1)[None]
        ref_map, ref_score = Foreign()(x)
        np.testing.assert_allclose(r.anomaly_map, ref_map[0, 0].numpy(), rtol=1e-5, atol=1e-5)
        assert r.score == pytest.approx(float(ref_score), rel=1e-5)


class Anomalib(torch.nn.Module):
    """Shaped as anomalib 2.x exports: any input size, resized inside the graph to 64 px; scores
    normalised so that its threshold is 0.5, and the graph applies it (pred_label, pred_mask)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
        amap = ((x - 0.5) ** 2).sum(1, keepdim=True).clamp(0, 1)
        score = amap.flatten(1).amax(1)
        return score, score > 0.5, amap, amap > 0.5


def _export_anomalib(path: Path, batch: int | None) -> None:
    """``batch`` None: dynamic (PaDiM's export); an int: fixed (PatchCore's export is fixed at 2)."""
    names = ["pred_score", "pred_label", "anomaly_map", "pred_mask"]
    dims = {0: torch.export.Dim("N", min=1, max=64)} if not batch else {}
    dims |= {2: torch.export.Dim("height", min=16, max=2048), 3: torch.export.Dim("width", min=16, max=2048)}
    # the dynamo exporter, as anomalib 2.7 calls it: it writes the map's static size into the graph
    torch.onnx.export(Anomalib().eval(), (torch.rand(batch or 2, 3, 80, 96),), str(path), dynamo=True,
                      input_names=["input"], output_names=names, dynamic_shapes=(dims,))


def _frames(synth: Path, n: int) -> list[np.ndarray]:
    return [read_image(p) for p in sorted((synth / "test").glob("*/*.png"))[:n]]


@pytest.mark.parametrize("batch", [None, 1, 2, 3])
def test_anomalib_shaped_exports_import_as_written(tmp_path, synth, batch):
    """Dynamic H/W (the map says the size), fixed or dynamic batch, and the graph's own threshold."""
    _export_anomalib(tmp_path / "model.onnx", batch)
    b = Bundle.load(import_onnx_expert(tmp_path / "model.onnx", tmp_path / "b"))
    spec = b.input_spec("expert")
    assert (spec.height, spec.width, spec.batch) == (64, 64, batch)
    assert b.stage("expert")["options"]["batch"] == (batch or "dynamic")
    # frames of different sizes: each run of one size is fed as it is
    mixed = Expert(b)([_frames(synth, 1)[0], np.zeros((50, 70, 3), np.uint8)])
    assert [m.anomaly_map.shape for m in (x for x in mixed)] == [(64, 64), (64, 64)]
    assert b.thresholds == {"image": 0.5, "pixel": 0.5, "strict": True} and b.manifest["calibration"]["rule"] == "model"
    frames = _frames(synth, 5)  # 5 frames: a short last batch for every fixed batch here
    expert = Expert(b)
    assert expert.max_batch == (batch or 64)
    got = expert(frames)
    assert len(got) == 5
    assert spec.any_size  # the graph resizes: frames of one size go in as they are
    for frame, r in zip(frames, got):
        rgb = frame[..., ::-1].copy()  # the source module on the frame as it is, as anomalib's inferencer feeds it
        ref_score, ref_label, ref_map, _ = Anomalib()(torch.from_numpy(rgb).float().permute(2, 0, 1)[None] / 255)
        np.testing.assert_allclose(r.anomaly_map, ref_map[0, 0].numpy(), rtol=1e-5, atol=1e-6)
        assert r.score == pytest.approx(float(ref_score), rel=1e-5, abs=1e-7)
        assert r.verdict == ("defect" if bool(ref_label) else "good") and r.score_norm == pytest.approx(r.score)


def test_the_model_threshold_is_optional_and_calibrate_can_restore_it(tmp_path, synth):
    from helpers import lg

    _export_anomalib(tmp_path / "model.onnx", 2)
    b = tmp_path / "b"
    r = lg("export", "expert", "--kind", "onnx", "--model", tmp_path / "model.onnx", "--out", b,
           "--no-model-threshold")
    assert r.returncode == 0, r.stderr
    assert Bundle.load(b).thresholds == {} and "threshold none yet" in r.stdout
    r = lg("calibrate", b, "--threshold", "0.7", "--normal", synth)
    assert r.returncode == 0, r.stderr
    assert Bundle.load(b).thresholds["image"] == 0.7
    r = lg("calibrate", b, "--rule", "model")
    assert r.returncode == 0, r.stderr
    assert "pred_label = pred_score Greater 0.5" in r.stdout
    assert Bundle.load(b).thresholds == {"image": 0.5, "pixel": 0.5, "strict": True}


def test_rule_model_is_refused_for_a_graph_without_its_own_threshold(tmp_path):
    from helpers import lg

    _export_foreign(tmp_path / "foreign.onnx")
    b = import_onnx_expert(tmp_path / "foreign.onnx", tmp_path / "b")
    assert Bundle.load(b).thresholds == {}
    r = lg("calibrate", b, "--rule", "model")
    assert r.returncode == 1 and "does not threshold its score output" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_fully_dynamic_size_asks_for_input_size(tmp_path):
    _export_foreign(tmp_path / "dyn.onnx")
    import onnx

    m = onnx.load(str(tmp_path / "dyn.onnx"))
    for v in (*m.graph.input, *m.graph.output):
        for d in list(v.type.tensor_type.shape.dim)[2:]:
            d.dim_param = "side"
    onnx.save(m, str(tmp_path / "dyn.onnx"))
    with pytest.raises(LineguardError, match="dynamic .* pass --input-size H W"):
        import_onnx_expert(tmp_path / "dyn.onnx", tmp_path / "b")
    b = Bundle.load(import_onnx_expert(tmp_path / "dyn.onnx", tmp_path / "b", input_size=(48, 40)))
    assert (b.input_spec("expert").height, b.input_spec("expert").width) == (48, 40)


def test_the_product_is_named_after_a_folder_that_says_something():
    from lineguard.export.onnx_import import product_name

    assert product_name(Path("/r/Patchcore/bottle/v0/weights/onnx/model.onnx")) == "bottle"
    assert product_name(Path("/exports/patchcore/weights/onnx/model.onnx")) == "patchcore"
    assert product_name(Path("/m/tiles.onnx")) == "tiles"


def test_unusable_models_are_refused_with_the_file_named(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(LineguardError, match=r"junk\.onnx: not an ONNX model"):
        import_onnx_expert(tmp_path / "junk.onnx", tmp_path / "b1")
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.rand(1, 4),), str(tmp_path / "lin.onnx"), dynamo=False)
    with pytest.raises(LineguardError, match=r"lin\.onnx: input .* expected 4-D"):
        import_onnx_expert(tmp_path / "lin.onnx", tmp_path / "b2")
    _export_foreign(tmp_path / "f.onnx")
    with pytest.raises(LineguardError, match="has no output 'heatmap'"):
        import_onnx_expert(tmp_path / "f.onnx", tmp_path / "b3", map_output="heatmap")
    assert not (tmp_path / "b1").exists() and not (tmp_path / "b2").exists() and not (tmp_path / "b3").exists()


def test_imported_expert_calibrates_by_its_own_normal_maximum(tmp_path, synth, caplog):
    from lineguard.calibration.calibrate import calibrate
    from lineguard.calibration.dataset import read_frames
    from lineguard.calibration.evaluate import score_frames
    from lineguard.runtime.imageio import normal_images

    _export_foreign(tmp_path / "foreign.onnx")
    out = import_onnx_expert(tmp_path / "foreign.onnx", tmp_path / "b", mean=MEAN, std=STD)
    with caplog.at_level("WARNING", logger="lineguard"):
        rep = calibrate(out, normal=str(synth), progress=False)
    assert "must be normal images the model was not trained on" in caplog.text  # on the console, not only in the report
    t = rep["thresholds"]
    assert t["rule"] == "myriad" and t["folds"] is None and "not refitted" in t["note"]
    b = Bundle.load(out)
    scores = score_frames(Expert(b), read_frames(normal_images(synth), progress=False), progress=False).scores
    assert b.thresholds["image"] == pytest.approx(scores.max())


def test_a_graph_copied_without_its_weights_file_names_that_file(tmp_path):
    """anomalib writes model.onnx + model.onnx.data; copying the first alone is a common slip."""
    import onnx

    class Weighted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            amap = self.conv(x)
            return amap, amap.flatten(1).amax(1)

    torch.onnx.export(Weighted(), (torch.rand(1, 3, 32, 32),), str(tmp_path / "model.onnx"), dynamo=False,
                      input_names=["input"], output_names=["anomaly_map", "pred_score"])
    m = onnx.load(str(tmp_path / "model.onnx"))
    onnx.save(m, str(tmp_path / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)
    assert import_onnx_expert(tmp_path / "model.onnx", tmp_path / "ok").is_dir()  # whole: imports
    (tmp_path / "model.onnx.data").unlink()
    with pytest.raises(LineguardError, match=r"model\.onnx\.data: missing .* copy it beside model\.onnx"):
        import_onnx_expert(tmp_path / "model.onnx", tmp_path / "b")
    assert not (tmp_path / "b").exists()
