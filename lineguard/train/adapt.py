"""``lineguard adapt sam --bundle B --dataset ROOT``: a SAM checkpoint (the bundle's own by
default, or any official-format file, or a new small one with ``--scratch``) fitted to the
product's defects with the bundle's expert as the prompter, saved, exported into the bundle
(parity-checked against SamPredictor as every SAM export is) and measured on held-out images:
mask IoU of SAM prompted by the expert vs the expert's own thresholded map.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lineguard.calibration.dataset import Sample, test_samples
from lineguard.calibration.masks import compare_masks
from lineguard.export.sam.checkpoint import build_sam, load_sam, parse_arch
from lineguard.export.sam.export import export_sam
from lineguard.runtime.bundle import Bundle, BundleWriter
from lineguard.runtime.errors import LineguardError
from lineguard.train.sam import SamAdaptConfig, collect, train_sam

log = logging.getLogger("lineguard.train")


def split_defects(dataset: str | Path, holdout: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """The defect images of ``dataset``'s test split: (held out, to train on), seeded."""
    samples = [s for s in test_samples(dataset) if s.label]
    order = np.random.default_rng(seed).permutation(len(samples))
    n_hold = int(round(holdout * len(samples)))
    return [samples[i] for i in order[:n_hold]], [samples[i] for i in order[n_hold:]]


def adapt_sam(bundle_dir: str | Path, dataset: str | Path, out: str | Path, cfg: SamAdaptConfig,
              checkpoint: str | Path | None = None, model_type: str | None = None, image_size: int | None = None,
              scratch: bool = False, holdout: float = 0.25, progress: bool = True) -> dict[str, Any]:
    """Returns the record written into the bundle (``stages.sam.variants.fp32.provenance.adapted``)."""
    if not 0.0 <= holdout < 1.0:
        raise LineguardError(f"--holdout {holdout}: use a fraction in [0, 1)")
    bundle = Bundle.load(bundle_dir)
    stage = bundle.stage("sam") if bundle.has_stage("sam") else {}
    prev = stage.get("variants", {}).get("fp32", {}).get("provenance", {})
    if cfg.mask_prompt is None:  # a re-adapted SAM keeps the prompts it was trained and is served with
        cfg = replace(cfg, mask_prompt=stage.get("options", {}).get("mask_prompt") == "expert_map")
    model_type = model_type or prev.get("model_type")
    image_size = image_size or prev.get("image_size") or 1024
    if not model_type:
        raise LineguardError("--model-type: the bundle has no SAM to start from; name one "
                             "(vit_b, vit_l, vit_h or custom:EMBED:DEPTH:HEADS:G1,G2)")
    arch = parse_arch(model_type)
    if scratch and checkpoint:
        raise LineguardError("--checkpoint and --scratch: give one (--scratch starts from random weights)")
    if scratch:
        torch.manual_seed(cfg.seed)
        sam, start = build_sam(arch, image_size), "random weights (--scratch)"
    else:
        checkpoint = checkpoint or prev.get("checkpoint")
        if not checkpoint:
            raise LineguardError("--checkpoint: the bundle's SAM names no checkpoint; give one, or --scratch")
        sam, prov = load_sam(checkpoint, arch, image_size)
        start = f"{prov['checkpoint']} (sha256 {prov['sha256'][:12]})"
    held, fit = split_defects(dataset, holdout, cfg.seed)
    if not fit:
        raise LineguardError(f"--holdout {holdout}: leaves none of the {len(held)} defect images to train on")
    before = compare_masks(bundle, held, ("sam_roi",), progress) if held and prev and not scratch else None
    examples = collect(bundle, fit, image_size, cfg, progress)
    record = train_sam(sam, examples, cfg, progress) | {"start": start, "dataset": str(Path(dataset).resolve()),
                                                        "holdout_images": len(held)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), out)
    export_sam(out, model_type, bundle_dir, image_size, provenance={"adapted": record},
               mask_prompt="expert_map" if cfg.mask_prompt else None)
    if held:
        after = Bundle.load(bundle_dir)
        record["holdout"] = compare_masks(after, held, ("expert", "sam_roi"), progress)
        if before:
            record["holdout"]["before"] = before["arms"]["sam_roi"]
        with BundleWriter(after.root, base=after) as w:
            w.manifest["stages"]["sam"]["variants"]["fp32"]["provenance"]["adapted"] = record
    return record
