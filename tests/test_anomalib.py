"""anomalib's own PatchCore and PaDiM exports, imported unmodified, against anomalib's own inference.

Fitted with anomalib's ``Engine`` on generated parts (random resnet18: seconds, no download),
exported with anomalib's default ONNX call, imported with the README's one-liner, and compared
with anomalib's ``TorchInferencer`` in-process and through ``serve`` in batches of 1 and of the
graph's own fixed batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import Station, lg

pytest.importorskip("anomalib", reason="the interop extra is not installed: pip install 'lineguard[interop]'")

from benchmarks.anomalib_interop import (  # noqa: E402
    anomalib_inference,
    category_images,
    compare,
    fit_and_export,
    lineguard_inference,
)
from lineguard.runtime.bundle import Bundle  # noqa: E402
from lineguard.runtime.imageio import read_image  # noqa: E402
from lineguard.runtime.station.protocol import encode_frame  # noqa: E402
from lineguard.synth.tiles import make_dataset  # noqa: E402


@pytest.fixture(scope="module")
def category(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("anomalib-data"), "tile", n_train=8, n_good=3, n_defect=4,
                        size=128, seed=5)


@pytest.fixture(scope="module", params=["patchcore", "padim"])
def exported(request, category, tmp_path_factory) -> dict:
    """One anomalib model: its exports, imported by the README's command, and anomalib's own answers."""
    work = tmp_path_factory.mktemp(request.param)
    paths = fit_and_export(request.param, category, work / request.param)
    bundle = work / "bundle"
    r = lg("export", "expert", "--kind", "onnx", "--model", paths["onnx"], "--out", bundle)
    assert r.returncode == 0, r.stderr
    files, _ = category_images(category)
    return {"kind": request.param, "paths": paths, "bundle": bundle, "stdout": r.stdout, "files": files,
            "reference": anomalib_inference(paths["torch"], files)}


def test_the_readme_one_liner_takes_the_export_as_written(exported):
    assert exported["paths"]["onnx"].name == "model.onnx"  # anomalib's name for every export
    b = Bundle.load(exported["bundle"])
    assert b.product == exported["kind"]  # the folder, not "model"
    spec = b.input_spec("expert")
    assert (spec.height, spec.width) == (256, 256)  # from the map: the graph resizes any input to it
    # anomalib 2.7's PatchCore export has a fixed batch of 2; PaDiM's is dynamic
    assert spec.batch == (2 if exported["kind"] == "patchcore" else None)
    assert b.thresholds == {"image": 0.5, "pixel": 0.5, "strict": True} and b.manifest["calibration"]["rule"] == "model"
    assert "from the model itself" in exported["stdout"]


def test_scores_and_maps_match_anomalibs_torch_inferencer(exported):
    ref = exported["reference"]
    ours = lineguard_inference(exported["bundle"], exported["files"])
    p = compare(ref, ours)
    assert p["images"] == len(exported["files"]) == 7
    assert p["score_pearson"] >= 0.99 and p["map_pearson"] >= 0.99, p
    # the same verdict wherever the two scores are not both within their difference of the threshold
    # (lineguard resizes the uint8 frame, anomalib the float tensor: a few thousandths apart)
    clear = np.abs(ref["scores"] - 0.5) > p["max_abs_score_diff"]
    assert clear.sum() >= 4 and (ref["labels"] == ours["labels"])[clear].all(), p


@pytest.mark.parametrize("max_batch", [1, 8])
def test_served_in_batches_of_one_and_of_the_graph(exported, tmp_path, max_batch):
    """Through the real server: every frame gets its verdict, scored as anomalib scores it, whether the
    station batches 1 frame (padded to the graph's 2) or 8 (cut into the graph's batches, the last padded)."""
    files, ref = exported["files"], exported["reference"]
    st = Station(exported["bundle"], tmp_path, "--max-batch", str(max_batch), "--no-explain")
    try:
        for i, f in enumerate(files):
            st.send(encode_frame(f"f{i}", "cam", image=read_image(f)))
        def first(g):
            return {b["frame_id"]: b for t, b, _ in g if t == "verdict" and not b.get("update")}
        got = st.collect(lambda g: len(first(g)) >= len(files))
    finally:
        rc, summary = st.stop()
    verdicts = first(got)
    assert sorted(verdicts) == sorted(f"f{i}" for i in range(len(files))), summary["stderr"]
    served = np.array([verdicts[f"f{i}"]["score"] for i in range(len(files))])
    assert np.corrcoef(served, ref["scores"])[0, 1] >= 0.99
    assert np.abs(served - ref["scores"]).max() < 0.02
