"""Frames of any size and channel count become the tensor the graph expects."""

import cv2
import numpy as np
import pytest

from lineguard.runtime.bundle.manifest import InputSpec
from lineguard.runtime.errors import InputError
from lineguard.runtime.imageio import decode, read_image
from lineguard.runtime.stages.preprocess import convert_color, to_batch

BGR = InputSpec("image", 32, 48)


def test_gray_and_bgra_frames_expand_to_bgr():
    gray = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    out = to_batch([gray, gray[..., None], cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA)], BGR)
    assert out.shape == (3, 32, 48, 3) and out.dtype == np.uint8
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[0], out[2])
    assert np.array_equal(out[0][..., 0], out[0][..., 2])


def test_rgb_nchw_float_normalisation_matches_by_hand():
    spec = InputSpec("x", 8, 8, layout="NCHW", dtype="float32", color="RGB", normalize="runtime",
                     mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    frame = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = to_batch([frame], spec)
    rgb = frame[..., ::-1].astype(np.float32) / 255.0
    want = ((rgb - np.array(spec.mean)) / np.array(spec.std)).transpose(2, 0, 1)[None]
    assert out.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_gray_model_gets_one_channel():
    spec = InputSpec("x", 16, 16, color="GRAY")
    out = to_batch([np.zeros((40, 40, 3), np.uint8)], spec)
    assert out.shape == (1, 16, 16, 1)


def test_bad_frames_are_named():
    with pytest.raises(InputError, match="dtype is float64"):
        convert_color(np.zeros((4, 4)), "BGR")
    with pytest.raises(InputError, match=r"frame shape \(4, 4, 2\)"):
        convert_color(np.zeros((4, 4, 2), np.uint8), "BGR")
    with pytest.raises(InputError, match="not an image"):
        decode(b"\xff\xd8\xff\xe0 truncated jpeg", "cam0/17")


def test_sixteen_bit_png(tmp_path):
    img = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    cv2.imwrite(str(tmp_path / "deep.png"), img)
    out = read_image(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out.shape == (8, 8)
    assert np.array_equal(out, (img >> 8).astype(np.uint8))
