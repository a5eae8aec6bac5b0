"""``lineguard ddqa build``: one JSONL record per question, built by rules from the dataset's labels.

A record: ``id``, ``root`` (the dataset), ``image`` (relative to it), ``defect`` (its folder),
``task``, ``question``, ``options`` (multiple choice; absent for DFM), ``answer`` and ``truth``
(cell, box, area share: what the answer came from).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lineguard.ddqa.dataset import Item, walk
from lineguard.ddqa.rules import cell_options, norm_box, rough_cell
from lineguard.ddqa.templates import question
from lineguard.progress import bar


def questions(item: Item, types: list[str], rng: np.random.Generator, product: str,
              components: str = "largest") -> list[dict[str, Any]]:
    """The DDQA records of one image (AD always; DC for defects; RDL and DFM where the mask is usable)."""
    base = {"image": str(item.image), "defect": item.defect}
    defect = item.defect != "good"
    out = [{"task": "AD", "question": question("AD", rng, product), "options": ["yes", "no"],
            "answer": "yes" if defect else "no"}]
    if defect and item.mask is not None:
        cell = rough_cell(item.mask)
        box = norm_box(item.mask, components)
        truth = {"cell": cell, "box": box, "components": components, "area_frac": round(float(item.mask.mean()), 6)}
        out.append({"task": "RDL", "question": question("RDL", rng, product), "options": cell_options(cell, rng),
                    "answer": cell, "truth": truth})
        out.append({"task": "DFM", "question": question("DFM", rng, product), "answer": box, "truth": truth})
    if defect:
        out.append({"task": "DC", "question": question("DC", rng, product), "options": list(types),
                    "answer": item.defect})
    return [base | r for r in out]


def build(root: str | Path, out: str | Path, seed: int = 0, product: str | None = None,
          components: str = "largest", progress: bool = True) -> dict[str, Any]:
    """Write the question set; returns counts per task and the problems met (each naming its file)."""
    root = Path(root).resolve()
    items, problems = walk(root)
    types = sorted({i.defect for i in items if i.defect != "good"})  # folders with images only
    product = product or root.name.replace("_", " ")
    rng = np.random.default_rng(seed)
    counts: Counter[str] = Counter()
    skipped = 0
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for item in bar(items, desc="ddqa build", unit="img", progress=progress, leave=False):
            recs = questions(item, types, rng, product, components)
            skipped += item.defect != "good" and item.mask is None
            for r in recs:
                counts[r["task"]] += 1
                r = {"id": f"{r['task']}:{r['image']}", "root": str(root)} | r
                f.write(json.dumps(r) + "\n")
    return {"file": str(out), "images": len(items), "questions": dict(counts), "defect_types": types,
            "localisation_skipped": skipped, "problems": [str(p) for p in problems]}

