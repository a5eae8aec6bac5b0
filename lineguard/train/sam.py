"""``lineguard adapt sam``: fit SAM's mask decoder to a product's defects, prompted the way the
runtime prompts it — by the bundle's own expert (a padded box and the peak point per region).

EIAD's mask objective, λ_bce·BCE + λ_dice·Dice, on the decoder's precise (single) mask, plus
SAM's own IoU-head loss so the reported ``sam_iou`` means something. The encoder stays frozen
and each image's embedding is computed once (decoder-only: CPU-feasible on a real vit_b), unless
``train_encoder`` (a small SAM trained end to end, the default bundle's). Crops, resizes and
prompt coordinates are the runtime's own functions, so what is trained is what is served.
Prompts from the truth (each of the largest defects' jittered box and a point inside) are added
to every image's, so SAM also learns defects the expert outlines badly or misses.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from lineguard.calibration.dataset import Sample, read_mask
from lineguard.export.sam.graphs import DecoderGraph, EncoderGraph
from lineguard.progress import bar
from lineguard.runtime.bundle import Bundle
from lineguard.runtime.errors import InputError
from lineguard.runtime.imageio import read_image
from lineguard.runtime.stages.defects import expert_prompts, roi_crop
from lineguard.runtime.stages.expert import Expert
from lineguard.runtime.stages.sam import encoder_input, map_prompt
from lineguard.train.loop import Steps
from lineguard.train.losses import bce_dice

log = logging.getLogger("lineguard.train")
POINT, CORNER0, CORNER1 = 1.0, 2.0, 3.0  # SAM's prompt labels


@dataclass
class SamAdaptConfig:
    steps: int = 300
    minutes: float = 0.0  # > 0: fail if the steps take longer (a limit, never a shorter run)
    batch: int = 4  # images per step (each with all of its prompts)
    lr: float = 1e-4
    bce: float = 1.0  # λ_bce
    dice: float = 1.0  # λ_dice
    train_encoder: bool = False  # end to end (no embedding cache): for a small SAM trained from scratch
    truth_prompts: bool = True  # add prompts made from the truth masks (jittered)
    mask_prompt: bool | None = None  # the expert's map as SAM's dense prompt too (None: as the bundle's SAM)
    mode: str = "roi"  # the runtime's SAM mode: encode a crop around the prompts ("roi") or the frame
    min_roi: int = 128
    top_k: int = 3
    pad: float = 0.15
    seed: int = 0


@dataclass
class Example:
    image: np.ndarray  # uint8 BGR, the crop as the encoder graph takes it (resized, unpadded)
    coords: np.ndarray  # float32 [K, 3, 2]: peak point, box corners, in encoder-input pixels
    targets: np.ndarray  # float32 [K, h, w] at the encoder-input size
    sources: list[str] = field(default_factory=list)  # "expert" or "truth" per prompt
    mask_in: np.ndarray | None = None  # the expert's map as SAM's dense prompt [4E, 4E], if used
    embedding: torch.Tensor | None = None


def _match(box: np.ndarray, comps: np.ndarray) -> np.ndarray | None:
    """The truth components under a prompt box, as one mask (None: a false alarm of the expert)."""
    x0, y0, x1, y1 = (int(v) for v in (np.floor(box[0]), np.floor(box[1]), np.ceil(box[2]), np.ceil(box[3])))
    labs = np.unique(comps[y0:y1, x0:x1])
    labs = labs[labs > 0]
    return np.isin(comps, labs) if len(labs) else None


def _truth_prompts(comps: np.ndarray, n: int, pad: float, rng: np.random.Generator,
                   top: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    h, w = comps.shape
    sizes = np.bincount(comps.ravel())[1:]
    out = []
    for lab in np.argsort(-sizes)[:top] + 1:
        m = comps == lab
        yy, xx = np.nonzero(m)
        x0, y0, x1, y1 = xx.min(), yy.min(), xx.max() + 1, yy.max() + 1
        px, py = max(4.0, pad * (x1 - x0)), max(4.0, pad * (y1 - y0))
        jit = rng.uniform(-0.5, 0.5, 4) * np.array([px, py, px, py])
        box = np.array([max(0, x0 - px + jit[0]), max(0, y0 - py + jit[1]), min(w, x1 + px + jit[2]),
                        min(h, y1 + py + jit[3])], np.float32)
        k = int(rng.integers(len(xx)))
        out.append((box, np.array([[xx[k] + 0.5, yy[k] + 0.5]], np.float32), m))
    return out[:n]


def make_example(frame: np.ndarray, gt: np.ndarray, amap: np.ndarray, thresholds: dict[str, Any], size: int,
                 cfg: SamAdaptConfig, rng: np.random.Generator) -> Example | None:
    """One image's prompts and targets in the encoder's input frame (None: nothing to learn)."""
    h, w = frame.shape[:2]
    comps = cv2.connectedComponents(gt.astype(np.uint8), connectivity=8)[1]
    if float(amap.max()) <= float(amap.min()):  # a flat map: the runtime asks SAM nothing
        return None
    found, level = expert_prompts(amap, (h, w), thresholds, cfg.top_k, cfg.pad)
    prompts = [(box, pt, t, "expert") for box, pt, _ in found if (t := _match(box, comps)) is not None]
    if cfg.truth_prompts and gt.any():
        prompts += [(b, p, t, "truth") for b, p, t in _truth_prompts(comps, cfg.top_k, cfg.pad, rng, cfg.top_k)]
    if not prompts:
        return None
    boxes = [b for b, _, _ in found] or [b for b, _, _, _ in prompts]
    x0, y0, x1, y1 = roi_crop(boxes, (h, w), cfg.min_roi) if cfg.mode == "roi" else (0, 0, w, h)
    image = encoder_input(frame[y0:y1, x0:x1], size)
    nh, nw = image.shape[:2]
    scale = np.array([nw / (x1 - x0), nh / (y1 - y0)], np.float32)
    shift = np.array([x0, y0], np.float32)
    coords, targets, sources = [], [], []
    for box, pt, target, src in prompts:
        corners = box.reshape(2, 2)
        if src == "truth" and ((corners[0] < shift).any() or (corners[1] > [x1, y1]).any()):
            continue  # a truth prompt outside the runtime's crop: the runtime would never ask it
        coords.append((np.concatenate([pt, corners]) - shift) * scale)
        crop = target[y0:y1, x0:x1].astype(np.float32)
        targets.append(cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA))
        sources.append(src)
    if not coords:
        return None
    mask_in = None
    if cfg.mask_prompt:  # exactly as lineguard.runtime.stages.defects builds it
        amap_frame = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
        mask_in = map_prompt(amap_frame[y0:y1, x0:x1], level, (nh, nw), size, size // 4)
    return Example(image, np.stack(coords).astype(np.float32), np.stack(targets), sources, mask_in)


def collect(bundle: Bundle, samples: list[Sample], size: int, cfg: SamAdaptConfig,
            progress: bool = True) -> list[Example]:
    """Examples from the defective ``samples``: the expert runs on each, as it would on the line."""
    expert = Expert(bundle)
    rng = np.random.default_rng(cfg.seed)
    out = []
    for s in bar([s for s in samples if s.label], desc="prompts", unit="img", progress=progress, leave=False):
        frame = read_image(s.path)
        gt = read_mask(s, frame.shape[:2])
        ex = make_example(frame, gt, expert([frame])[0].anomaly_map, bundle.thresholds, size, cfg, rng)
        if ex is not None:
            out.append(ex)
    if not out:
        raise InputError("no defect images with masks to adapt SAM on (the dataset's test/<defect> folders)")
    return out


def _loss(sam_dec: DecoderGraph, emb: torch.Tensor, ex: Example, size: int, cfg: SamAdaptConfig) -> torch.Tensor:
    k = len(ex.coords)
    g = emb.shape[-1]
    labels = torch.tensor([[POINT, CORNER0, CORNER1]] * k)
    if ex.mask_in is not None:
        dense, has = torch.from_numpy(ex.mask_in).expand(k, 1, 4 * g, 4 * g), torch.ones(k)
    else:
        dense, has = torch.zeros(k, 1, 4 * g, 4 * g), torch.zeros(k)
    masks, iou = sam_dec(emb, torch.from_numpy(ex.coords), labels, dense, has)
    nh, nw = ex.targets.shape[-2:]
    logits = F.interpolate(masks[:, :1], size=(size, size), mode="bilinear", align_corners=False)[:, 0, :nh, :nw]
    target = torch.from_numpy(ex.targets)
    loss = bce_dice(logits, target, cfg.bce, cfg.dice, per_item=True)
    with torch.no_grad():  # SAM's IoU head learns the mask's actual IoU
        pred, truth = logits > 0, target > 0.5
        actual = (pred & truth).flatten(1).sum(1) / (pred | truth).flatten(1).sum(1).clamp(min=1)
    return loss + F.mse_loss(iou[:, 0], actual.float())


def train_sam(sam: Sam, examples: list[Example], cfg: SamAdaptConfig, progress: bool = True) -> dict[str, Any]:
    """Train ``sam`` in place on ``examples``; returns the training record."""
    torch.manual_seed(cfg.seed)
    size = sam.image_encoder.img_size
    enc, dec = EncoderGraph(sam), DecoderGraph(sam)
    if not cfg.train_encoder:
        sam.image_encoder.requires_grad_(False)
        with torch.no_grad():
            for ex in bar(examples, desc="embed (frozen encoder)", unit="img", progress=progress, leave=False):
                ex.embedding = enc(torch.from_numpy(np.ascontiguousarray(ex.image[None])))
    loop = Steps([p for p in sam.parameters() if p.requires_grad], cfg.lr, cfg.steps, cfg.minutes, "adapt sam",
                 progress)
    rng = np.random.default_rng(cfg.seed)
    sam.train()
    for _ in loop:
        loss = torch.zeros(())
        for i in rng.choice(len(examples), size=min(cfg.batch, len(examples)), replace=False):
            ex = examples[int(i)]
            emb = ex.embedding if ex.embedding is not None else enc(torch.from_numpy(ex.image[None].copy()))
            loss = loss + _loss(dec, emb, ex, size, cfg)
        loop.step(loss / min(cfg.batch, len(examples)))
    sam.eval()
    for ex in examples:
        ex.embedding = None
    return {"config": asdict(cfg)} | loop.record() | {"images": len(examples),
            "prompts": {s: sum(ex.sources.count(s) for ex in examples) for s in ("expert", "truth")},
            "trained": "whole model" if cfg.train_encoder else "mask decoder and prompt encoder (encoder frozen)"}
