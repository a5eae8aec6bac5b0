"""The SAM stage: a frame's embedding once, then masks for any number of prompts.

Frame and prompt geometry follows segment-anything's ``SamPredictor`` exactly: the longest
side is resized to the encoder size (rounded as ``ResizeLongestSide`` does), prompts are scaled
the same way (PIL's bilinear resize, as ``ResizeLongestSide`` uses), and the decoder's low-resolution logits are upscaled to the encoder size, cropped
to the resized frame and resized to the frame (bilinear, half-pixel centres — what
``F.interpolate(align_corners=False)`` and OpenCV's INTER_LINEAR both compute), then cut at 0.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
from PIL import Image

from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import Engine, EngineOptions
from lineguard.runtime.errors import BundleError, InputError
from lineguard.runtime.stages.preprocess import convert_color


@dataclass
class SamEmbedding:
    embeddings: np.ndarray  # [1, 256, E, E]
    frame_hw: tuple[int, int]  # the frame as given
    input_hw: tuple[int, int]  # the frame resized, before padding to the encoder size


@dataclass
class SamMask:
    mask: np.ndarray  # bool [H, W] at the frame's size
    logits: np.ndarray  # float32 [4E, 4E], low resolution: feed back as mask_input to refine
    iou: float  # the decoder's own estimate of the mask's quality


def resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """SAM's ResizeLongestSide target shape (rounded half up)."""
    scale = size / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))  # a 1-px-thin frame stays 1 px


def encoder_input(frame: np.ndarray, size: int) -> np.ndarray:
    """A frame as the encoder graph takes it: BGR, longest side resized to ``size`` with PIL's
    bilinear (antialiased) resize, exactly what SamPredictor feeds SAM; padding is in the graph."""
    img = convert_color(frame, "BGR")
    h, w = img.shape[:2]
    nh, nw = resized_shape(h, w, size)
    if (nh, nw) != (h, w):
        img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR))
    return img


def map_prompt(amap: np.ndarray, level: float, input_hw: tuple[int, int], size: int, mask_size: int) -> np.ndarray:
    """The expert's map (over the encoded frame or crop) as SAM's dense prompt: logits-like,
    positive above the pixel level, laid out as SAM's low-res masks are (the resized frame in
    the top-left of the padded encoder input, at ``mask_size``). Its scale matters little (SAM's
    mask embedding normalises each position over its channels, after a first conv's bias);
    training and serving both build it here."""
    nh, nw = input_hw
    z = np.clip((amap.astype(np.float32) - level) / (abs(level) + 1e-6) * 10.0, -20.0, 20.0)
    full = np.full((size, size), -20.0, np.float32)
    full[:nh, :nw] = cv2.resize(z, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(full, (mask_size, mask_size), interpolation=cv2.INTER_AREA)


class SamStage:
    """Runs a bundle's SAM graphs: ``encode`` a frame, then ``segment`` it with prompts."""

    def __init__(self, bundle: Bundle, precision: str = "fp32", opts: EngineOptions | None = None,
                 engines: tuple[Any, Any] | None = None) -> None:
        """``engines``: the encoder's and the decoder's, already made (the station's on a Triton pool)."""
        stage = bundle.stage("sam")
        variants = stage["variants"]
        if precision not in variants:
            raise BundleError(f"{bundle.root}/manifest.json: stage 'sam' has no {precision} variant "
                              f"(has: {', '.join(variants)})")
        files = variants[precision]["graphs"]
        opts = opts or EngineOptions()
        if opts.trt_cache_dir is None:
            opts = replace(opts, trt_cache_dir=str(bundle.root / "engines" / "trt"))
        self.size = int(stage["input_spec"]["height"])
        self.mask_size = int(stage["options"]["mask_size"])
        # "expert_map": a SAM adapted to take the expert's map as its dense (mask) prompt
        self.mask_prompt = stage["options"].get("mask_prompt")
        if self.mask_prompt not in (None, "expert_map"):  # served without it, it would be a different model
            raise BundleError(f"{bundle.root}/manifest.json: stages.sam.options.mask_prompt "
                              f"{self.mask_prompt!r} is not known to this runtime (known: expert_map)")
        self.encoder, self.decoder = engines or (Engine(bundle.root / files["encoder"], opts),
                                                 Engine(bundle.root / files["decoder"], replace(opts, warmup=0)))
        # the sparse-embedding decoder (a projected [SEG] token, EIAD's way in) is loaded on first use:
        # the station's prompts are boxes and points
        self._sparse = (bundle.root / files["sparse_decoder"], replace(opts, warmup=0)) \
            if files.get("sparse_decoder") else None
        self._sparse_decoder: Engine | None = None

    def encode(self, frame: np.ndarray) -> SamEmbedding:
        """Embed a frame (any size; gray, BGR or BGRA)."""
        if frame.ndim < 2 or frame.shape[0] < 1 or frame.shape[1] < 1:
            raise InputError(f"frame shape {tuple(frame.shape)} has no pixels")
        img = encoder_input(frame, self.size)
        emb = self.encoder.run({"image": np.ascontiguousarray(img[None])})["image_embeddings"]
        return SamEmbedding(emb, frame.shape[:2], img.shape[:2])

    def _scale(self, e: SamEmbedding, xy: np.ndarray) -> np.ndarray:
        (h, w), (nh, nw) = e.frame_hw, e.input_hw
        return np.asarray(xy, np.float32).reshape(-1, 2) * np.array([nw / w, nh / h], np.float32)

    def _masks(self, e: SamEmbedding, logits: np.ndarray) -> np.ndarray:
        """Low-res logits [M, 4E, 4E] → logits at the frame's size [M, H, W]."""
        (h, w), (nh, nw) = e.frame_hw, e.input_hw
        out = []
        for lo in logits:
            up = cv2.resize(lo, (self.size, self.size), interpolation=cv2.INTER_LINEAR)[:nh, :nw]
            out.append(cv2.resize(up, (w, h), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else up)
        return np.stack(out)

    def _pick(self, e: SamEmbedding, lowres: np.ndarray, iou: np.ndarray, multimask: bool) -> SamMask:
        # SAM: one prompt asks for the 3 multimask tokens (pick the best), a precise one for token 0
        i = 1 + int(np.argmax(iou[1:])) if multimask else 0
        return SamMask(self._masks(e, lowres[i : i + 1])[0] > 0.0, lowres[i], float(iou[i]))

    def segment(self, e: SamEmbedding, points: np.ndarray | None = None, labels: np.ndarray | None = None,
                box: np.ndarray | None = None, mask_input: np.ndarray | None = None,
                multimask: bool = False) -> SamMask:
        """A mask from points (x, y in frame pixels; label 1 = defect, 0 = background) and/or a
        box (x0, y0, x1, y1), with an optional dense prompt ``mask_input`` [4E, 4E]: a previous
        mask's ``logits`` (to refine it) or, for a SAM trained so, the expert's map (``map_prompt``)."""
        coords, labs = [], []
        if points is not None and len(points):
            coords.append(self._scale(e, points))
            labs.append(np.asarray(labels if labels is not None else np.ones(len(points)), np.float32).reshape(-1))
        if box is not None:
            coords.append(self._scale(e, np.asarray(box, np.float32).reshape(2, 2)))
            labs.append(np.array([2, 3], np.float32))
        else:  # SAM appends a padding point when there is no box
            coords.append(np.zeros((1, 2), np.float32))
            labs.append(np.array([-1], np.float32))
        if len(coords) == 1 and box is None:
            raise InputError("SAM needs at least one point or a box")
        feeds = {
            "image_embeddings": e.embeddings,
            "point_coords": np.concatenate(coords)[None],
            "point_labels": np.concatenate(labs)[None],
            "mask_input": (mask_input if mask_input is not None
                           else np.zeros((self.mask_size, self.mask_size), np.float32))[None, None].astype(np.float32),
            "has_mask_input": np.array([1.0 if mask_input is not None else 0.0], np.float32),
        }
        r = self.decoder.run(feeds)
        return self._pick(e, r["low_res_masks"][0], r["iou_predictions"][0], multimask)

    def segment_sparse(self, e: SamEmbedding, sparse: np.ndarray, multimask: bool = False) -> SamMask:
        """A mask from sparse prompt embeddings ``[K, 256]`` (e.g. a projected [SEG] token)."""
        if self._sparse is None:
            raise BundleError("this bundle's SAM has no sparse-embedding decoder")
        if self._sparse_decoder is None:
            self._sparse_decoder = Engine(*self._sparse)
        feeds = {
            "image_embeddings": e.embeddings,
            "sparse_embeddings": np.asarray(sparse, np.float32).reshape(1, -1, e.embeddings.shape[1]),
            "mask_input": np.zeros((1, 1, self.mask_size, self.mask_size), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
        }
        r = self._sparse_decoder.run(feeds)
        return self._pick(e, r["low_res_masks"][0], r["iou_predictions"][0], multimask)
