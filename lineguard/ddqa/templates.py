"""Question wordings per task; a seeded generator picks one, so a question set is reproducible."""

from __future__ import annotations

import numpy as np

QUESTIONS: dict[str, tuple[str, ...]] = {
    "AD": ("Is there a defect in this image?",
           "Does this {product} have any defect?",
           "Is this {product} defective?",
           "Can you see an anomaly on this {product}?"),
    "RDL": ("Which part of the image holds the defect?",
            "Where on the {product} is the defect, on a 3x3 grid?",
            "In which of these regions is the anomaly located?",
            "Which cell of a 3x3 grid contains the defect?"),
    "DFM": ("Give the bounding box of the defect as x0, y0, x1, y1 (fractions of the image).",
            "Where exactly is the defect? Answer with its box x0 y0 x1 y1 in [0, 1].",
            "Mark the defect on the {product} with a normalised bounding box."),
    "DC": ("What type of defect is this?",
           "Which kind of defect does this {product} show?",
           "Classify the defect on this {product}."),
}


def question(task: str, rng: np.random.Generator, product: str) -> str:
    forms = QUESTIONS[task]
    return forms[int(rng.integers(len(forms)))].format(product=product)
