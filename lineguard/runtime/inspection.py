"""One frame's path through a bundle: expert → verdict record → defects (masks, classes) → explanation.

Every caller runs a frame through this one unit: the station's pipeline (each step in its own
thread), ``lineguard inspect``, ``ddqa eval`` and the demo. A served record and an inspected one
are therefore the same by construction, not by keeping three copies in step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.stages.classify import DefectClassifier, from_bundle
from lineguard.runtime.stages.defects import Defect, find_defects
from lineguard.runtime.stages.expert import Expert, ExpertResult
from lineguard.runtime.stages.findings import MapSummary, hottest_region, summarize


def describe(frame: np.ndarray, r: ExpertResult, pixel_t: float | None,
             summary: MapSummary | None = None) -> dict[str, Any]:
    """One frame's verdict record: size, score, verdict, map statistics, hottest region (``summary``:
    the map's statistics where the caller computed them for a batch)."""
    s = summary or summarize([r.anomaly_map])[0]
    return {"size": [int(frame.shape[1]), int(frame.shape[0])], "score": r.score, "score_norm": r.score_norm,
            "verdict": r.verdict, "map": s.to_dict(),
            "hottest": hottest_region(r.anomaly_map, frame.shape[:2], pixel_t, s).to_dict()}


def union_mask(defects: Sequence[Defect], hw: tuple[int, int]) -> np.ndarray:
    """The union of the defects' masks, bool at the frame's size."""
    out = np.zeros(hw, bool)
    for d in defects:
        out |= d.mask
    return out


def mask_png(defects: Sequence[Defect]) -> bytes | None:
    """The union of a frame's defect masks as a PNG (255 = defect), or None without defects."""
    if not defects:
        return None
    ok, buf = cv2.imencode(".png", union_mask(defects, defects[0].mask.shape).astype(np.uint8) * 255)
    return buf.tobytes() if ok else None


def sam_precision(bundle: Bundle, precision: str, asked: str | None = None) -> str:
    """SAM's variant: the one asked for, else the expert's precision where SAM has it, else fp32."""
    return asked or (precision if precision in bundle.stage("sam")["variants"] else "fp32")


def load_sam(bundle: Bundle, precision: str, opts: EngineOptions | None, asked: str | None = None,
             engines: tuple[Any, Any] | None = None) -> Any:
    from lineguard.runtime.stages.sam import SamStage

    return SamStage(bundle, sam_precision(bundle, precision, asked), opts, engines)


def load_explainer(bundle: Bundle, opts: EngineOptions | None, constrain: bool | None = None) -> Any:
    from lineguard.runtime.stages.explain import Explainer

    return Explainer(bundle, opts=opts, constrain=constrain)


@dataclass
class Inspection:
    """What one frame came to: its record (what is published and stored), the expert's result, defects."""

    record: dict[str, Any]
    result: ExpertResult
    defects: list[Defect] = field(default_factory=list)

    @property
    def union(self) -> np.ndarray:
        w, h = self.record["size"]
        return union_mask(self.defects, (h, w))


class Inspector:
    """A bundle's stages, loaded once, and the steps one frame takes through them.

    ``load`` builds the bundle's expert, SAM (unless ``masks=False``), classifier and, with
    ``explain=True``, its LLM; the station builds its own (several expert sessions, background
    priorities, degraded health) and hands them in.
    """

    def __init__(self, bundle: Bundle, expert: Expert, sam: Any = None, classifier: DefectClassifier | None = None,
                 explainer: Any = None, top_k: int = 3, sam_mode: str = "roi") -> None:
        self.bundle, self.expert, self.sam, self.classifier, self.explainer = bundle, expert, sam, classifier, explainer
        self.top_k, self.sam_mode = top_k, sam_mode

    @classmethod
    def load(cls, bundle: Bundle, precision: str = "fp32", opts: EngineOptions | None = None, masks: bool = True,
             explain: bool = False, top_k: int = 3, sam_mode: str = "roi", constrain: bool | None = None) -> Inspector:
        sam = load_sam(bundle, precision, opts) if masks and bundle.has_stage("sam") else None
        explainer = load_explainer(bundle, opts, constrain) if explain and bundle.has_stage("llm") else None
        return cls(bundle, Expert(bundle, precision, opts), sam, from_bundle(bundle), explainer, top_k, sam_mode)

    # ---- the steps, each callable on its own (the station runs them in different threads) ----
    def score(self, frames: Sequence[np.ndarray], expert: Expert | None = None) -> list[ExpertResult]:
        """The expert on a batch of frames (``expert``: one of the station's parallel sessions)."""
        return (expert or self.expert)(list(frames))

    def record(self, frame: np.ndarray, r: ExpertResult, summary: MapSummary | None = None) -> dict[str, Any]:
        return describe(frame, r, self.bundle.thresholds.get("pixel"), summary)

    def records(self, frames: Sequence[np.ndarray], results: Sequence[ExpertResult]) -> list[dict[str, Any]]:
        """A batch's records, its maps summarized together."""
        return [self.record(f, r, s) for f, r, s in zip(frames, results, summarize([r.anomaly_map for r in results]))]

    def defects(self, frame: np.ndarray, r: ExpertResult, flagged: bool = True) -> list[Defect]:
        """Masks (SAM where the bundle has it, else the thresholded map) and classes, hottest first."""
        return find_defects(frame, r.anomaly_map, self.bundle.thresholds, self.sam, self.top_k, self.sam_mode,
                            flagged=flagged, classifier=self.classifier)

    def explain(self, record: dict[str, Any], on_text: Callable[[str], None] | None = None) -> dict[str, Any]:
        return self.explainer.explain(record, on_text)

    # ---- the whole path ----------------------------------------------------------------------
    def inspect(self, frames: Sequence[np.ndarray], look: bool = False, explain: bool = False) -> list[Inspection]:
        """Each frame's full path. Flagged frames get defects; ``look`` finds regions on every frame
        (questions that presuppose a look at the part); ``explain`` explains flagged frames."""
        out = []
        results = self.score(frames)
        for frame, r, rec in zip(frames, results, self.records(frames, results)):
            ins = Inspection(rec, r)
            if r.verdict == "defect" or look:
                ins.defects = self.defects(frame, r, flagged=True)  # the hottest region even below the pixel level
                ins.record["defects"] = [d.to_dict() for d in ins.defects]
            if explain and self.explainer is not None and r.verdict == "defect":
                ins.record["explanation"] = self.explain(ins.record)
            out.append(ins)
        return out
