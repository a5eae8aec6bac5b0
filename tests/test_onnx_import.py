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


def test_fixed_batch_graph_is_fed_one_frame_at_a_time(tmp_path, synth):
    _export_foreign(tmp_path / "fixed.onnx", batch_dynamic=False)
    b = Bundle.load(import_onnx_expert(tmp_path / "fixed.onnx", tmp_path / "b"))
    expert = Expert(b)
    assert expert.max_batch == 1
    frames = [read_image(p) for p in sorted((synth / "test").glob("*/*.png"))[:3]]
    assert len(expert(frames)) == 3


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


def test_imported_expert_calibrates_by_its_own_normal_maximum(tmp_path, synth):
    from lineguard.calibration.calibrate import calibrate
    from lineguard.calibration.dataset import read_frames
    from lineguard.calibration.evaluate import score_frames
    from lineguard.runtime.imageio import normal_images

    _export_foreign(tmp_path / "foreign.onnx")
    out = import_onnx_expert(tmp_path / "foreign.onnx", tmp_path / "b", mean=MEAN, std=STD)
    rep = calibrate(out, normal=str(synth), progress=False)
    t = rep["thresholds"]
    assert t["rule"] == "myriad" and t["folds"] is None and "not refitted" in t["note"]
    b = Bundle.load(out)
    scores = score_frames(Expert(b), read_frames(normal_images(synth), progress=False), progress=False).scores
    assert b.thresholds["image"] == pytest.approx(scores.max())
