"""The rule-written explanation: what, where, how large, from the findings alone.

``ddqa corpus`` writes it as the reference an explanation model learns from; the explanation
stage publishes it instead of the model's text when a constrained model could not say what it
must within its token budget (marked ``source: "rules"``). It names only what the findings give.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SEVERITY = ((0.005, "small"), (0.02, "medium"), (float("inf"), "large"))  # by area share of the image
DEFECT = (
    "A {size} {cls} in the {cell} of the {product}, covering {area} of the image.",
    "The {product} has a {cls} in the {cell}; it is {size}, about {area} of the image.",
    "{Size} {cls} found in the {cell} region ({area} of the image).",
    "Defect: {cls}, {cell}, {size} ({area} of the image).",
)
MORE = (" {n} smaller {regions} nearby.", " There {are} also {n} smaller {regions}.")
NORMAL = ("No defect: the {product} looks normal.", "The {product} is defect-free.",
          "No defects were found on this {product}.")


def severity(area_frac: float) -> str:
    return next(name for limit, name in SEVERITY if area_frac < limit)


def reference(findings: dict[str, Any], rng: np.random.Generator) -> str:
    product = findings["product"]
    regs = findings["regions"]
    if findings["verdict"] != "defect" or not regs:
        return NORMAL[int(rng.integers(len(NORMAL)))].format(product=product)
    r = regs[0]
    size = severity(r["area_frac"])
    area = f"{100 * r['area_frac']:.1f}%" if r["area_frac"] >= 0.001 else "under 0.1%"
    cls = r.get("class") if r.get("class") not in (None, "unknown") else "defect"  # never name a type not given
    text = DEFECT[int(rng.integers(len(DEFECT)))].format(size=size, Size=size.capitalize(), cls=cls,
                                                          cell=r["cell"], product=product, area=area)
    if len(regs) > 1:
        k = len(regs) - 1
        text += MORE[int(rng.integers(len(MORE)))].format(n=k, regions="regions" if k > 1 else "region",
                                                          are="are" if k > 1 else "is")
    return text
