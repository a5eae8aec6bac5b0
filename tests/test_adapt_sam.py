"""`lineguard adapt sam`: SAM's decoder fitted to defect masks with the expert's own prompts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="adapting SAM needs the export extra (torch)")

from helpers import lg  # noqa: E402

ARCH = "custom:64:2:2:1"


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    from lineguard.export.sam.checkpoint import build_sam, parse_arch

    ck = tmp_path_factory.mktemp("adapt") / "sam.pth"
    torch.manual_seed(0)
    torch.save(build_sam(parse_arch(ARCH), 256).state_dict(), ck)
    return ck


def test_training_fits_the_masks_it_is_shown():
    """A few steps on one blob prompted by its box and a point: the mask loss falls far."""
    from lineguard.export.sam.checkpoint import build_sam, parse_arch
    from lineguard.train.sam import Example, SamAdaptConfig, train_sam

    torch.manual_seed(0)
    sam = build_sam(parse_arch(ARCH), 128)
    rng = np.random.default_rng(0)
    img = rng.integers(80, 120, (128, 128, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:128, :128]
    blob = (yy - 60) ** 2 / 100 + (xx - 70) ** 2 / 300 < 1
    img[blob] = 200
    ex = Example(img, np.array([[[70, 60], [48, 45], [92, 75]]], np.float32), blob[None].astype(np.float32), ["truth"])
    enc_before = {k: v.clone() for k, v in sam.image_encoder.state_dict().items()}
    rec = train_sam(sam, [ex], SamAdaptConfig(steps=40, batch=1, lr=1e-3), progress=False)
    assert rec["final_loss"] < 0.5 * rec["first_loss"]
    assert all(torch.equal(v, sam.image_encoder.state_dict()[k]) for k, v in enc_before.items())  # frozen
    assert ex.embedding is None  # the cache is dropped after training


def test_adapt_sam_cli_exports_into_the_bundle_and_measures_on_held_out_images(served_bundle, synth, tiny_sam,
                                                                               tmp_path):
    from lineguard.runtime.bundle import Bundle

    b = tmp_path / "bundle"
    shutil.copytree(served_bundle, b)
    out = tmp_path / "adapted.pth"
    r = lg("adapt", "sam", "--bundle", b, "--dataset", synth, "--checkpoint", tiny_sam, "--model-type", ARCH,
           "--image-size", 256, "--steps", 3, "--holdout", 0.25, "--out", out, "--mask-prompt")
    assert r.returncode == 0, r.stderr
    stage = Bundle.load(b).stage("sam")
    assert stage["options"]["mask_prompt"] == "expert_map"  # the runtime prompts it with the map, as trained
    rec = stage["variants"]["fp32"]["provenance"]["adapted"]
    assert rec["config"]["mask_prompt"] and rec["steps"] == 3 and rec["holdout_images"] == 1 and rec["images"] >= 1
    assert set(rec["holdout"]["arms"]) == {"expert", "sam_roi"}
    assert 0.0 <= rec["holdout"]["arms"]["sam_roi"]["iou"] <= 1.0
    assert json.loads(r.stdout)["checkpoint"] == str(out)
    # decoder-only: the encoder is the checkpoint's, the decoder moved
    old, new = torch.load(tiny_sam, weights_only=True), torch.load(out, weights_only=True)
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith("image_encoder."))
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("mask_decoder."))
    # a second run starts from the bundle's (adapted) SAM without naming it, and measures "before"
    r = lg("adapt", "sam", "--bundle", b, "--dataset", synth, "--steps", 1, "--out", tmp_path / "again.pth")
    assert r.returncode == 0, r.stderr
    stage = Bundle.load(b).stage("sam")
    assert "before" in stage["variants"]["fp32"]["provenance"]["adapted"]["holdout"]
    assert stage["options"]["mask_prompt"] == "expert_map"  # re-adapted, it keeps the prompts it is served with


@pytest.mark.parametrize("args,needle", [
    (["--holdout", "1.5"], "--holdout 1.5"),
    ([], "--model-type"),
    (["--model-type", "vit_q"], "--model-type 'vit_q'"),
    (["--model-type", ARCH], "--checkpoint"),
    (["--model-type", ARCH, "--scratch", "--checkpoint", "sam.pth"], "--checkpoint and --scratch"),
    (["--model-type", ARCH, "--scratch", "--holdout", "0.9"], "--holdout 0.9: leaves none"),
    (["--minutes", "-1"], "--minutes -1.0: must not be negative"),
])
def test_bad_adapt_arguments_are_one_line(served_bundle, synth, args, needle):
    r = lg("adapt", "sam", "--bundle", served_bundle, "--dataset", synth, *args)
    assert r.returncode != 0
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_map_prompt_is_positive_above_the_level_and_padded_like_sam():
    from lineguard.runtime.stages.sam import map_prompt

    amap = np.zeros((40, 80), np.float32)
    amap[10:30, 20:40] = 1.0
    z = map_prompt(amap, 0.5, (32, 64), 64, 16)  # the crop is 40x80, encoded at 32x64 inside 64x64
    assert z.shape == (16, 16)
    assert z[4, 6] > 0 and z[1, 1] < 0  # inside the hot square / outside it
    assert (z[8:, :] < 0).all()  # the padding below the resized crop is "no defect"
