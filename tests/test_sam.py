"""SAM: official-format checkpoints of small SAMs, exported graphs vs segment-anything's SamPredictor."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import lg

torch = pytest.importorskip("torch", reason="SAM export needs the export extra (torch, segment-anything)")
from segment_anything import SamPredictor  # noqa: E402

from lineguard.export.sam.checkpoint import build_sam, load_sam, parse_arch  # noqa: E402
from lineguard.export.sam.export import export_sam, iou, parity_cases  # noqa: E402
from lineguard.runtime.bundle import Bundle  # noqa: E402
from lineguard.runtime.errors import LineguardError  # noqa: E402
from lineguard.runtime.stages.sam import SamStage  # noqa: E402

TINY = "custom:64:2:2:1"  # segment-anything's own classes, encoder 64 wide and 2 blocks deep
SIZE = 256


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    sam = build_sam(parse_arch(TINY), SIZE)
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)  # the official checkpoint format: a plain state dict
    return path


@pytest.fixture(scope="module")
def sam_bundle(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_sam(tiny_ckpt, TINY, tmp_path_factory.mktemp("b") / "bundle", image_size=SIZE)


def test_parity_recorded_and_held(sam_bundle):
    par = Bundle.load(sam_bundle).stage("sam")["variants"]["fp32"]["parity"]
    assert par["min_iou"] >= 0.99 and len(par["cases"]) == 6
    assert all(c["ref_pixels"] > 0 for c in par["cases"])  # masks that are not empty


def test_any_frame_size_matches_sampredictor(sam_bundle, tiny_ckpt):
    sam, _ = load_sam(tiny_ckpt, parse_arch(TINY), SIZE)
    pred = SamPredictor(sam)
    stage = SamStage(Bundle.load(sam_bundle))
    for h, w in ((SIZE, SIZE), (97, SIZE), (SIZE, 131)):  # longest side = encoder size: no resampling
        frame, prompts = parity_cases(h, w, seed=h + w)
        pred.set_image(frame[:, :, ::-1].copy())
        e = stage.encode(frame)
        assert e.input_hw == (h, w)
        for p in prompts:
            ref, ref_iou, ref_low = pred.predict(p.get("points"), p.get("labels"), p.get("box"), multimask_output=False)
            got = stage.segment(e, p.get("points"), p.get("labels"), p.get("box"))
            assert got.mask.shape == (h, w) and iou(ref[0], got.mask) >= 0.99
            assert np.abs(ref_low[0] - got.logits).max() < 1e-3 and abs(ref_iou[0] - got.iou) < 1e-4
    # frames of other sizes, down and up, are resized as SamPredictor does it (PIL bilinear)
    for h, w in ((300, 410), (90, 120)):
        frame, prompts = parity_cases(h, w, seed=7)
        pred.set_image(frame[:, :, ::-1].copy())
        e = stage.encode(frame)
        for p in prompts:  # points are scaled too
            ref, _, _ = pred.predict(p.get("points"), p.get("labels"), p.get("box"), multimask_output=False)
            assert iou(ref[0], stage.segment(e, p.get("points"), p.get("labels"), p.get("box")).mask) >= 0.99
    frame, prompts = parity_cases(300, 410, seed=5)
    pred.set_image(frame[:, :, ::-1].copy())
    e = stage.encode(frame)
    assert e.input_hw == (187, SIZE)
    ref, _, _ = pred.predict(prompts[1].get("points"), None, prompts[1]["box"], multimask_output=False)
    got = stage.segment(e, box=prompts[1]["box"])
    assert got.mask.shape == (300, 410) and iou(ref[0], got.mask) >= 0.99


def test_refine_with_previous_mask_and_multimask(sam_bundle, tiny_ckpt):
    sam, _ = load_sam(tiny_ckpt, parse_arch(TINY), SIZE)
    pred = SamPredictor(sam)
    stage = SamStage(Bundle.load(sam_bundle))
    frame, prompts = parity_cases(SIZE, SIZE, seed=1)
    pred.set_image(frame[:, :, ::-1].copy())
    e = stage.encode(frame)
    p = prompts[0]
    masks, scores, low = pred.predict(p["points"], p["labels"], multimask_output=True)
    best = stage.segment(e, p["points"], p["labels"], multimask=True)
    assert iou(masks[int(np.argmax(scores))], best.mask) >= 0.99
    ref, _, _ = pred.predict(p["points"], p["labels"], mask_input=low[int(np.argmax(scores))][None],
                             multimask_output=False)
    again = stage.segment(e, p["points"], p["labels"], mask_input=best.logits)
    assert iou(ref[0], again.mask) >= 0.99


def test_sparse_entry_equals_prompt_encoder_path(sam_bundle, tiny_ckpt):
    sam, _ = load_sam(tiny_ckpt, parse_arch(TINY), SIZE)
    stage = SamStage(Bundle.load(sam_bundle))
    frame, prompts = parity_cases(SIZE, SIZE, seed=2)
    e = stage.encode(frame)
    box = prompts[1]["box"]
    with torch.no_grad():
        sparse, _ = sam.prompt_encoder(points=None, boxes=torch.from_numpy(box)[None], masks=None)
    via_sparse = stage.segment_sparse(e, sparse[0].numpy())
    via_box = stage.segment(e, box=box)
    assert iou(via_sparse.mask, via_box.mask) >= 0.99


def test_reduced_encoder_size_interpolates_position_embeddings(tiny_ckpt, tmp_path):
    sam, prov = load_sam(tiny_ckpt, parse_arch(TINY), 128)
    assert sam.image_encoder.pos_embed.shape[1:3] == (8, 8)
    assert "image_encoder.pos_embed" in prov["resized_from_checkpoint"]
    assert any(k.endswith("rel_pos_h") for k in prov["resized_from_checkpoint"])  # the global block's
    out = export_sam(tiny_ckpt, TINY, tmp_path / "b", image_size=128)
    assert Bundle.load(out).stage("sam")["variants"]["fp32"]["parity"]["min_iou"] >= 0.99


def test_sam_joins_an_expert_bundle_and_keeps_it(bundle_dir, tiny_ckpt, tmp_path):
    import shutil

    b = Path(shutil.copytree(bundle_dir, tmp_path / "b"))
    r = lg("export", "sam", "--checkpoint", tiny_ckpt, "--model-type", TINY, "--image-size", SIZE, "--bundle", b)
    assert r.returncode == 0, r.stderr
    bundle = Bundle.load(b)
    assert set(bundle.manifest["stages"]) == {"expert", "sam"}
    info = lg("info", b)
    assert "stage    sam: sam" in info.stdout


@pytest.mark.parametrize("case", ["wrong_type", "deeper", "truncated", "not_state_dict", "missing", "bad_type"])
def test_bad_checkpoints_are_one_line_and_leave_the_bundle(case, tiny_ckpt, sam_bundle, tmp_path):
    before = (sam_bundle / "manifest.json").read_bytes()
    ckpt, mtype = tiny_ckpt, TINY
    if case == "wrong_type":  # wider encoder: same keys, other shapes
        mtype, want = "custom:96:2:3:1", "image_encoder.pos_embed has shape (1, 16, 16, 64), SAM custom:96:2:3:1 expects"
    elif case == "deeper":
        mtype, want = "custom:64:3:2:1", "does not match SAM custom:64:3:2:1 (missing key 'image_encoder.blocks.2"
    elif case == "truncated":
        ckpt = tmp_path / "cut.pth"
        ckpt.write_bytes(tiny_ckpt.read_bytes()[:5000])
        want = "not a loadable torch state dict"
    elif case == "not_state_dict":
        ckpt = tmp_path / "list.pth"
        torch.save([1, 2, 3], ckpt)
        want = "not a state dict"
    elif case == "missing":
        ckpt, want = tmp_path / "nope.pth", "no such checkpoint file"
    else:
        mtype, want = "vit_q", "--model-type 'vit_q': use vit_b"
    r = lg("export", "sam", "--checkpoint", ckpt, "--model-type", mtype, "--image-size", SIZE, "--bundle", sam_bundle)
    assert r.returncode == 1 and want in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert (sam_bundle / "manifest.json").read_bytes() == before


def test_shape_mismatch_names_key_and_expected_shape(tiny_ckpt, tmp_path):
    state = torch.load(tiny_ckpt, weights_only=True)
    state["mask_decoder.iou_token.weight"] = torch.zeros(2, 256)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(LineguardError, match=r"mask_decoder.iou_token.weight has shape \(2, 256\), .* expects \(1, 256\)"):
        load_sam(bad, parse_arch(TINY), SIZE)


def test_encoder_takes_gray_frames(sam_bundle):
    stage = SamStage(Bundle.load(sam_bundle))
    frame, _ = parity_cases(SIZE, SIZE, seed=3)
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    e = stage.encode(gray)
    ref = stage.encode(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    assert np.array_equal(e.embeddings, ref.embeddings)
    assert json.loads((sam_bundle / "manifest.json").read_text())["stages"]["sam"]["options"]["mask_size"] == 64


def test_sam_variants_are_gated_on_mask_iou(sam_bundle, tmp_path):
    import shutil

    b = Path(shutil.copytree(sam_bundle, tmp_path / "b"))
    r = lg("quantize", b, "--stage", "sam")
    assert r.returncode == 0, r.stderr
    stage = Bundle.load(b).stage("sam")
    # no either/or: with 7-bit int8 weights the gate's result does not depend on the CPU's int8 kernel
    assert set(stage["variants"]) == {"fp32", "int8", "fp16"}, stage.get("rejected")
    for prec in ("int8", "fp16"):
        g = stage["variants"][prec]["parity"]
        assert g["passed"] and g["mean_iou_vs_fp32"] >= 0.97 and g["min_iou_vs_fp32"] >= 0.97
        s = SamStage(Bundle.load(b), prec)  # the variant really runs
        frame, prompts = parity_cases(SIZE, SIZE, seed=0)
        assert s.segment(s.encode(frame), box=prompts[1]["box"]).mask.any()
    assert "sam int8" in r.stdout
    # an impossible gate rejects both and leaves nothing of them behind
    from lineguard.calibration.sam_variants import build_sam_variants

    gates = build_sam_variants(b, min_iou=1.01)
    stage = Bundle.load(b).stage("sam")
    assert not any(g["passed"] for g in gates.values())
    assert set(stage["variants"]) == {"fp32"} and set(stage["rejected"]) == {"int8", "fp16"}
    assert all(r["reason"].startswith("min mask IoU") for r in stage["rejected"].values())
    assert not [f for f in Bundle.load(b).manifest["files"] if ".int8." in f or ".fp16." in f]
    assert not list((b / "sam").glob("*.int8.onnx")) and not list((b / "sam").glob("*.fp16.onnx"))
