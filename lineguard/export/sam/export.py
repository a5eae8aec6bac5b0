"""`lineguard export sam`: SAM's three graphs into a bundle, with mask parity against SamPredictor."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything import SamPredictor

from lineguard.export.onnx_export import export_onnx
from lineguard.export.parity import mask_iou as iou
from lineguard.export.sam.checkpoint import PROMPT_DIM, load_sam, parse_arch
from lineguard.export.sam.graphs import DecoderGraph, EncoderGraph, SparseDecoderGraph
from lineguard.export.versions import library_versions
from lineguard.runtime.bundle import Bundle, BundleWriter, existing
from lineguard.runtime.bundle.engine import Engine, EngineOptions
from lineguard.runtime.bundle.manifest import InputSpec
from lineguard.runtime.errors import LineguardError
from lineguard.runtime.stages.sam import SamStage

log = logging.getLogger("lineguard.export")
MIN_IOU = 0.99
GRAPHS = {"encoder": "sam/encoder.fp32.onnx", "decoder": "sam/decoder.fp32.onnx",
          "sparse_decoder": "sam/decoder_sparse.fp32.onnx"}


def parity_cases(h: int, w: int, seed: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A textured frame with a bright blob, and the prompts to compare on: a point, a box, both."""
    rng = np.random.default_rng(seed)
    frame = (rng.normal(110, 25, (h, w, 3))).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = h * 0.45, w * 0.55, min(h, w) * 0.15
    frame[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (230, 220, 40)
    pt = np.array([[cx, cy]], np.float32)
    box = np.array([cx - 1.3 * r, cy - 1.3 * r, cx + 1.3 * r, cy + 1.3 * r], np.float32)
    return frame, [{"points": pt, "labels": np.ones(1, np.float32)}, {"box": box},
                   {"points": pt, "labels": np.ones(1, np.float32), "box": box}]


def measure_parity(sam: torch.nn.Module, stage: SamStage, seed: int = 0) -> dict[str, Any]:
    """Masks from the exported graphs vs segment-anything's SamPredictor: IoU per prompt, two frame sizes."""
    predictor = SamPredictor(sam)
    out: dict[str, Any] = {"reference": "segment_anything.SamPredictor, same weights", "cases": []}
    s = stage.size
    for h, w in ((s, s * 3 // 4), (s * 3 // 4 + 5, s)):  # frames at the encoder's size: no resampling differences
        frame, prompts = parity_cases(h, w, seed)
        predictor.set_image(frame[:, :, ::-1].copy())  # SamPredictor takes RGB
        emb = stage.encode(frame)
        emb_ref = predictor.get_image_embedding().numpy()
        for p in prompts:
            ref, _, _ = predictor.predict(point_coords=p.get("points"), point_labels=p.get("labels"),
                                          box=p.get("box"), multimask_output=False)
            got = stage.segment(emb, p.get("points"), p.get("labels"), p.get("box"))
            out["cases"].append({"frame": [w, h], "prompt": "+".join(k for k in ("points", "box") if k in p),
                                 "iou": iou(ref[0], got.mask), "ref_pixels": int(ref[0].sum())})
        out.setdefault("embedding_max_abs_err", 0.0)
        out["embedding_max_abs_err"] = max(out["embedding_max_abs_err"], float(np.abs(emb.embeddings - emb_ref).max()))
    out["min_iou"] = min(c["iou"] for c in out["cases"])
    return out


def export_sam(checkpoint: str | Path, model_type: str, bundle: str | Path, image_size: int = 1024,
               product: str | None = None, provenance: dict[str, Any] | None = None,
               mask_prompt: str | None = None) -> Path:
    """Add (or replace) the ``sam`` stage of ``bundle`` (created if it does not exist);
    ``provenance`` is added to the variant's (e.g. how the checkpoint was adapted);
    ``mask_prompt="expert_map"``: the runtime gives this SAM the expert's map as its mask prompt."""
    arch = parse_arch(model_type)
    sam, prov = load_sam(checkpoint, arch, image_size)
    target = Path(bundle)
    base = existing(target)
    grid = image_size // 16
    with BundleWriter(target, base=base, product=product or (base.product if base else "part")) as w:
        for rel in [f for f in w.manifest["files"] if f.startswith("sam/")]:  # old SAM graphs and variants
            w.remove_file(rel)
        paths = {k: w.path(v) for k, v in GRAPHS.items()}
        frame = torch.zeros(1, image_size, image_size * 3 // 4, 3, dtype=torch.uint8)
        p_enc = export_onnx(EncoderGraph(sam), (frame,), paths["encoder"], ["image"], ["image_embeddings"],
                            {"image": {1: "h", 2: "w"}}, {"image_embeddings": [1, PROMPT_DIM, grid, grid]})
        emb = torch.randn(1, PROMPT_DIM, grid, grid)
        mask = torch.zeros(1, 1, 4 * grid, 4 * grid)
        has = torch.zeros(1)
        coords, labels = torch.rand(1, 3, 2) * image_size, torch.tensor([[1.0, 2.0, 3.0]])
        outs = ["low_res_masks", "iou_predictions"]
        shapes = {"low_res_masks": [1, 4, 4 * grid, 4 * grid], "iou_predictions": [1, 4]}
        export_onnx(DecoderGraph(sam), (emb, coords, labels, mask, has), paths["decoder"],
                    ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"], outs,
                    {"point_coords": {1: "points"}, "point_labels": {1: "points"}}, shapes)
        export_onnx(SparseDecoderGraph(sam), (emb, torch.randn(1, 2, PROMPT_DIM), mask, has), paths["sparse_decoder"],
                    ["image_embeddings", "sparse_embeddings", "mask_input", "has_mask_input"], outs,
                    {"sparse_embeddings": {1: "tokens"}}, shapes)
        for k, rel in GRAPHS.items():
            w.add_file(rel, f"sam {k}")
        engine = Engine(paths["encoder"], EngineOptions(device="cpu", warmup=0))
        spec = InputSpec(name="image", height=image_size, width=image_size, layout="NHWC", dtype="uint8",
                         color="BGR", normalize="in_graph", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
        w.manifest["stages"]["sam"] = {
            "kind": "sam",
            "inputs": engine.io_specs("inputs"),
            "outputs": engine.io_specs("outputs"),
            "input_spec": spec.to_dict() | {"resize": "longest side to height, pad bottom-right (in graph)"},
            "options": {"model_type": arch.name, "image_size": image_size, "mask_size": 4 * grid,
                        "embedding_grid": grid, "mask_threshold": 0.0}
                       | ({"mask_prompt": mask_prompt} if mask_prompt else {}),
            "variants": {"fp32": {"file": GRAPHS["encoder"], "graphs": dict(GRAPHS), "parity": {},
                                  "provenance": p_enc | prov | (provenance or {})}},
        }
        w.manifest.setdefault("provenance", {})["libraries"] = library_versions()
        parity = measure_parity(sam, SamStage(Bundle(w.tmp, w.manifest), "fp32", EngineOptions(device="cpu")))
        w.manifest["stages"]["sam"]["variants"]["fp32"]["parity"] = parity
        if parity["min_iou"] < MIN_IOU:
            raise LineguardError(f"exported SAM disagrees with SamPredictor: mask IoU {parity['min_iou']:.4f} < {MIN_IOU}")
    log.info("SAM %s at %d px: mask IoU vs SamPredictor ≥ %.4f", arch.name, image_size, parity["min_iou"])
    return target
