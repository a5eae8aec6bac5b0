"""The demo's results, frame by frame, and its summary against the line's ground truth:
rate and latency, image AUROC, pixel F1 of the served masks, DDQA accuracies, grounding."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lineguard.calibration.metrics import auroc
from lineguard.demo.truth import FrameTruth, ddqa_answers


@dataclass
class FrameResult:
    index: int  # the frame's number in the line video
    sent: float | None = None
    verdict: str | None = None
    score: float = float("nan")
    verdict_at: float | None = None
    cell: str | None = None
    cls: str | None = None
    mask: np.ndarray | None = field(default=None, repr=False)
    masks_at: float | None = None
    explanation: str | None = None
    consistent: bool | None = None
    complete: bool | None = None
    source: str | None = None  # "model", or "rules" when the model's text owed the position or type
    error: str | None = None
    late_error: str | None = None

    def update(self, topic: str, body: dict[str, Any], png: bytes | None, now: float) -> str | None:
        """Take in one message; returns what it was ("verdict", "masks", "explanation", "error")."""
        if topic == "error":
            if body.get("verdict_published"):
                self.late_error = body.get("code")
                return None
            self.error, self.sent = f"{body.get('code')}: {body.get('reason')}", body.get("ts_sent")
            return "error"
        if topic == "explanation":
            e = body.get("explanation", {})
            self.explanation, self.consistent = e.get("text"), e.get("consistent")
            self.complete, self.source = e.get("complete"), e.get("source")
            return "explanation"
        if body.get("update") == "masks":
            defects = body.get("defects", [])
            if defects:
                top = max(defects, key=lambda d: d.get("area_px", 0))
                self.cell, self.cls = top.get("cell"), top.get("class")
            if png is not None:
                m = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
                self.mask = m > 0 if m is not None else None
            self.masks_at = now
            return "masks"
        self.verdict, self.score, self.sent, self.verdict_at = body["verdict"], float(body["score"]), \
            body.get("ts_sent"), now
        return "verdict"

    @property
    def answered(self) -> bool:
        return self.verdict_at is not None or self.error is not None

    def waiting(self, explain: bool) -> bool:
        """A flagged frame whose masks (or explanation) may still come."""
        if self.verdict != "defect" or self.late_error:
            return False
        return self.masks_at is None or (explain and self.explanation is None)


def _pct(values: list[float], p: float) -> float | None:
    return round(float(np.percentile(values, p)), 1) if values else None


def _share(flags: list[bool]) -> float | None:
    return round(100.0 * sum(flags) / len(flags), 1) if flags else None


def summarize(results: list[FrameResult], truth: list[FrameTruth], sent: dict[str, Any], stats: dict[str, Any],
              wall: float, interrupted: bool, frame_hw: tuple[int, int], size: int) -> dict[str, Any]:
    n_video = len(truth)
    got = [r for r in results if r.verdict_at is not None]
    lat = [1e3 * (r.verdict_at - r.sent) for r in got if r.sent]
    span = (max(r.verdict_at for r in got) - min(r.sent for r in got if r.sent)) if got and lat else 0.0
    centred = [(r, truth[r.index % n_video]) for r in got if truth[r.index % n_video].centred]
    labels = np.array([t.defect != "good" for _, t in centred])
    scores = np.array([r.score for r, _ in centred])
    tp = fp = fn = 0
    tasks: dict[str, list] = {"AD": [], "RDL": [], "DFM": [], "DC": []}
    confusion: dict[str, dict[str, int]] = {}
    for r, t in centred:
        part = t.part_mask()  # read once: for the pixel counts and for DDQA
        gt = t.mask(frame_hw, part)
        pred = r.mask if r.mask is not None and r.mask.shape == gt.shape else np.zeros_like(gt)
        tp += int((pred & gt).sum())
        fp += int((pred & ~gt).sum())
        fn += int((~pred & gt).sum())
        if t.defect != "good":  # truth → the type served for the main finding ("-": none)
            confusion.setdefault(t.defect, {}).setdefault(r.cls or "-", 0)
            confusion[t.defect][r.cls or "-"] += 1
        for k, v in ddqa_answers(t, r.verdict == "defect", r.mask, r.cls, size, part).items():
            if k in tasks:
                tasks[k].append(bool(v))
    explained = [r for r in got if r.explanation is not None]
    both = labels.min() != labels.max() if len(labels) else False
    return {
        "interrupted": interrupted,
        "frames_sent": sent.get("sent", 0), "send_failed": sent.get("failed", 0), "verdicts": len(got),
        "errors": sum(r.error is not None for r in results),
        "unanswered": max(0, sent.get("sent", 0) - sum(r.answered for r in results)),
        "flagged": sum(r.verdict == "defect" for r in got),
        "seconds": round(wall, 1), "rate_fps": round(len(got) / span, 2) if span > 0 else None,
        "latency_ms": {"p50": _pct(lat, 50), "p99": _pct(lat, 99)},
        "parts_seen": len({t.item for _, t in centred}),
        "centred_frames": len(centred),
        "image_auroc": round(auroc(labels, scores), 4) if both else None,
        "pixel_f1": round(2 * tp / (2 * tp + fp + fn), 4) if tp + fp + fn else None,
        "ddqa_accuracy": {k: _share(v) for k, v in tasks.items()},
        "ddqa_questions": {k: len(v) for k, v in tasks.items()},
        "dc_confusion": {k: dict(sorted(v.items())) for k, v in sorted(confusion.items())},
        "explanations": len(explained),
        # consistent: names nothing the findings contradict; complete: names the main finding's
        # position and type; rule-written: the model's text owed one of them, the rules' was published
        "consistent_percent": _share([bool(r.consistent) for r in explained]),
        "complete_percent": _share([bool(r.complete) for r in explained]),
        "rules_percent": _share([r.source == "rules" for r in explained]),
        "masks_dropped": sum(r.late_error == "dropped_defects" for r in got),
        "explanations_dropped": sum(r.late_error == "dropped_explanation" for r in got),
        "server": {k: stats.get(k) for k in ("drained", "verdicts", "errors", "dropped") if k in stats},
    }


def describe(s: dict[str, Any]) -> str:
    acc = s["ddqa_accuracy"]
    fmt = lambda v: "—" if v is None else f"{v}"  # noqa: E731
    lines = [
        f"frames {s['verdicts']} answered of {s['frames_sent']} sent ({s['unanswered']} unanswered, "
        f"{s['errors']} errors) in {s['seconds']} s" + ("  [interrupted]" if s["interrupted"] else ""),
        f"rate {fmt(s['rate_fps'])} frames/s, verdict latency p50 {fmt(s['latency_ms']['p50'])} ms, "
        f"p99 {fmt(s['latency_ms']['p99'])} ms",
        f"on {s['parts_seen']} parts seen centred ({s['centred_frames']} frames): image AUROC {fmt(s['image_auroc'])}, "
        f"pixel F1 {fmt(s['pixel_f1'])}",
        f"DDQA accuracy %: AD {fmt(acc['AD'])}  RDL {fmt(acc['RDL'])}  DFM {fmt(acc['DFM'])}  DC {fmt(acc['DC'])}",
        f"explanations {s['explanations']}: consistent {fmt(s['consistent_percent'])}%, complete "
        f"{fmt(s['complete_percent'])}% ({fmt(s['rules_percent'])}% rule-written)"
        + (f"; dropped: {s['masks_dropped']} masks, {s['explanations_dropped']} explanations"
           if s["masks_dropped"] or s["explanations_dropped"] else ""),
    ]
    return "\n".join(lines)


def write_report(out: Path, summary: dict[str, Any], results: list[FrameResult], truth: list[FrameTruth],
                 threshold: float | None) -> None:
    """``summary.json`` and, where matplotlib is installed, ``summary.png``: scores along the line
    against the truth, and the verdict latency distribution."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    got = sorted((r for r in results if r.verdict_at is not None), key=lambda r: r.index)
    if not got:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 1]})
    n = len(truth)
    bad = [truth[r.index % n].defect != "good" for r in got]
    a.scatter([r.index for r in got], [r.score for r in got], s=6, c=["tab:red" if x else "tab:blue" for x in bad])
    if threshold is not None:
        a.axhline(threshold, color="k", lw=0.8, ls="--", label="threshold")
        a.legend(loc="upper right")
    a.set(xlabel="frame", ylabel="score", title="scores along the line (red: a defective part in view)")
    lat = [1e3 * (r.verdict_at - r.sent) for r in got if r.sent]
    b.hist(lat, bins=30)
    b.set(xlabel="send → verdict, ms", ylabel="frames", title="verdict latency")
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=100)
    plt.close(fig)
