"""``lineguard ddqa corpus``: (findings as the runtime's prompt builder renders them → a reference
explanation written by rules from the ground truth), for training or checking an explanation model.

Findings come from the mask as the runtime would report them (one region per connected
component, largest first, at most three, each with its cell, box, area share and type); the
reference says what, where, how large and how severe, in wording varied by a seeded generator.
Every reference passes the runtime's grounding check against its own findings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lineguard.ddqa.dataset import Item, walk
from lineguard.progress import bar
from lineguard.runtime.stages.findings import region_from_mask
from lineguard.runtime.stages.prompting import DEFAULT_PROMPT, PromptBuilder, findings_for_prompt
from lineguard.runtime.stages.reference import reference


def regions_of(mask: np.ndarray, cls: str, top: int = 3) -> list[dict[str, Any]]:
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    comps = sorted((labels == k for k in range(1, n)), key=lambda m: -int(m.sum()))[:top]
    out = []
    for m in comps:
        r = region_from_mask(m, m.astype(np.float32))
        if r is not None:
            out.append(r.to_dict() | {"class": cls})
    return out


def record(item: Item, product: str, builder: PromptBuilder, rng: np.random.Generator) -> dict[str, Any]:
    w, h = item.size
    defect = item.defect != "good"
    regs = regions_of(item.mask, item.defect) if defect and item.mask is not None else []
    result = {"size": [w, h], "verdict": "defect" if defect else "normal",
              "score_norm": 1.0 if defect else 0.0, "defects": regs}
    findings = findings_for_prompt(result, product)
    return {"image": str(item.image), "defect": item.defect, "findings": findings,
            "messages": builder.messages(findings), "reference": reference(findings, rng)}


def build_corpus(root: str | Path, out: str | Path, seed: int = 0, product: str | None = None,
                 prompt: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Write one JSONL pair per test image (defects without a usable mask are skipped, counted)."""
    root = Path(root).resolve()
    items, problems = walk(root)
    product = product or root.name.replace("_", " ")
    builder = PromptBuilder(prompt or DEFAULT_PROMPT, None, {})
    rng = np.random.default_rng(seed)
    n, skipped = 0, 0
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for item in bar(items, desc="ddqa corpus", unit="img", progress=progress, leave=False):
            if item.defect != "good" and item.mask is None:
                skipped += 1
                continue
            f.write(json.dumps({"root": str(root)} | record(item, product, builder, rng)) + "\n")
            n += 1
    return {"file": str(out), "pairs": n, "skipped_without_mask": skipped, "problems": [str(p) for p in problems]}
