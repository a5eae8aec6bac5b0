"""``lineguard ddqa eval``: answer every DDQA question through the runtime and score it.

The runtime answers from what a station computes for the image: AD from the expert's verdict;
RDL from the found masks (the option cell holding most of them); DFM from the box of their
largest component (a hit at IoU ≥ 0.5, and the mean IoU); DC from the bundle's classifier
(``unknown`` counts as wrong). Where the bundle has an LLM, the LLM is also asked each question
with the findings in its prompt, and its parsed answer is scored the same way; each flagged image
also gets an explanation, checked by the grounding check (the grounding rate).
Images the classifier was fitted on are left out of DC scoring (counted).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from lineguard.ddqa import answers
from lineguard.ddqa.rules import IOU_HIT, TASKS, best_option, box_iou, norm_box
from lineguard.progress import bar
from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.errors import InputError
from lineguard.runtime.imageio import read_image
from lineguard.runtime.inspection import Inspector
from lineguard.runtime.stages.classify import UNKNOWN
from lineguard.runtime.stages.findings import cell_shares
from lineguard.runtime.stages.llm import Sampling
from lineguard.runtime.stages.prompting import findings_for_prompt

QA_SYSTEM = ("You answer an inspector's question about one part from the vision system's findings. "
             "Reply with the answer only.")


def read_questions(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The usable records of a DDQA file, and one problem (file:line) per line that is not."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--ddqa {path}: no such file")
    recs, problems = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{path}:{n}: not JSON ({e.msg})")
                continue
            why = invalid(r)
            if why:
                problems.append(f"{path}:{n}: {why}")
            else:
                recs.append(r)
    if not recs:
        raise InputError(f"--ddqa {path}: no usable questions" + (f" ({problems[0]})" if problems else ""))
    return recs, problems


def invalid(r: Any) -> str | None:
    """Why a record cannot be scored, or None: each task's own fields are checked here, so a bad
    line is named with its number instead of failing the run later."""
    if not isinstance(r, dict):
        return "not a JSON object"
    missing = [k for k in ("task", "image", "answer", "root", "question") if k not in r]
    if missing:
        return f"missing {', '.join(missing)}"
    task, ans = r["task"], r["answer"]
    if task not in TASKS:
        return f"unknown task {task!r} (use {', '.join(TASKS)})"
    if task in ("RDL", "DC") and not (isinstance(r.get("options"), list) and ans in r["options"]):
        return f"{task} needs a list of options holding the answer"
    if task == "AD" and ans not in ("yes", "no"):
        return "AD answer must be yes or no"
    if task == "DFM" and not (isinstance(ans, list) and len(ans) == 4 and all(isinstance(v, (int, float))
                                                                               for v in ans)):
        return "DFM answer must be a box of four numbers"
    return None


class Runtime:
    """The bundle's stages as a station runs them (the one-frame path), for one image at a time."""

    def __init__(self, bundle: Bundle, precision: str, opts: EngineOptions, use_llm: bool, sam_mode: str,
                 top_k: int) -> None:
        self.inspector = Inspector.load(bundle, precision, opts, explain=use_llm, top_k=top_k, sam_mode=sam_mode)
        self.explainer = self.inspector.explainer

    @property
    def name(self) -> str:
        ins = self.inspector
        return "expert" + (" + SAM" if ins.sam else "") + (" + classifier" if ins.classifier else "")

    def inspect(self, frame: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        """(the frame's record with defects, union of the defect masks)."""
        # the questions presuppose a look at the part: find regions even when the verdict is normal
        (ins,) = self.inspector.inspect([frame], look=True)
        return ins.record, ins.union

    def ask(self, findings: dict[str, Any], rec: dict[str, Any]) -> str:
        ex = self.explainer
        opts = rec.get("options") or []
        text = ex.prompts.user.render(**findings) + f"\n\nQuestion: {rec['question']}"
        if opts and rec["task"] != "AD":
            text += "\nOptions: " + " ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(opts))
        msgs = [{"role": "system", "content": QA_SYSTEM}, {"role": "user", "content": text}]
        ids = ex.tokenizer.encode(ex.prompts.render(msgs), add_special_tokens=False).ids
        gen = ex.lm.generate(ids, Sampling(max_new_tokens=24, stop_ids=ex.sampling.stop_ids,
                                           time_budget_s=ex.sampling.time_budget_s))
        return ex.tokenizer.decode(gen.ids).strip()


def runtime_answer(rec: dict[str, Any], res: dict[str, Any], union: np.ndarray) -> Any:
    task = rec["task"]
    if task == "AD":
        return "yes" if res["verdict"] == "defect" else "no"
    if task == "RDL":
        return best_option(cell_shares(union), rec["options"]) if union.any() else None
    if task == "DFM":  # the same rule the answer was built with
        return norm_box(union, (rec.get("truth") or {}).get("components", "largest")) if union.any() else None
    cls = res["defects"][0].get("class") if res["defects"] else None
    return cls if cls and cls != UNKNOWN else None


def llm_answer(rec: dict[str, Any], text: str) -> Any:
    task = rec["task"]
    if task == "AD":
        return answers.yes_no(text)
    if task == "DFM":
        return answers.box(text)
    return answers.option(text, rec["options"])


def score(rec: dict[str, Any], pred: Any) -> tuple[bool, float | None]:
    """(hit, IoU for DFM)."""
    if rec["task"] == "DFM":
        iou = box_iou(pred, rec["answer"]) if pred else 0.0
        return iou >= IOU_HIT, iou
    return pred == rec["answer"], None


def fitted_on(bundle: Bundle) -> tuple[str | None, set[str]]:
    """(the dataset folder's name, relative image paths) the classifier was fitted on."""
    fit = (bundle.manifest.get("classes") or {}).get("fit", {})
    return (Path(fit["dataset"]).name if fit.get("dataset") else None), set(fit.get("images", []))


def tuned_on(bundle: Bundle) -> str | None:
    """The labelled dataset the thresholds were tuned on (the f1 rule), from the calibration report."""
    rel = (bundle.manifest.get("calibration") or {}).get("report")
    try:
        return json.loads((bundle.root / rel).read_text()).get("dataset") if rel else None
    except (OSError, ValueError):
        return None


def chance(task: str, recs: list[dict[str, Any]]) -> float | None:
    if task == "DFM":
        return None
    opts = [len(r.get("options") or []) for r in recs if r["task"] == task]
    return float(np.mean([1 / k for k in opts if k])) if opts else None


def evaluate(bundle_path: str | Path, ddqa_path: str | Path, precision: str = "fp32", root: str | None = None,
             use_llm: bool = True, limit: int | None = None, sam_mode: str = "roi", top_k: int = 3,
             opts: EngineOptions | None = None, progress: bool = True) -> dict[str, Any]:
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: give a positive number of images")
    bundle = Bundle.load(bundle_path)
    recs, problems = read_questions(ddqa_path)
    rt = Runtime(bundle, precision, opts or EngineOptions(), use_llm, sam_mode, top_k)
    fit_name, fit_images = fitted_on(bundle)
    by_image: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in recs:
        by_image[(root or r["root"], r["image"])].append(r)
    images = list(by_image.items())[:limit]
    recs = [r for _, qs in images for r in qs]  # what is scored, for the chance row too
    roots = {Path(b).resolve() for (b, _), _ in images}
    tuned = tuned_on(bundle)
    tuned_here = bool(tuned) and Path(tuned).resolve() in roots
    systems = [rt.name] + (["LLM"] if rt.explainer else [])
    hits: dict[str, dict[str, list[bool]]] = {s: defaultdict(list) for s in systems}
    ious: dict[str, list[float]] = {s: [] for s in systems}
    answered: dict[str, int] = {s: 0 for s in systems}  # answers given in a readable form
    excluded, rows, explanations = 0, [], []
    grounded: dict[str, list[tuple[bool, bool, bool]]] = {"constrained": [], "unconstrained": []}
    for (base, rel), qs in bar(images, desc="ddqa eval", unit="img", progress=progress):
        path = Path(base) / rel
        try:
            frame = read_image(path)
        except Exception as e:  # one unreadable image costs its own questions
            problems.append(f"{path}: unreadable image ({e})")
            continue
        try:
            res, union = rt.inspect(frame)
        except Exception as e:  # one image the stages fail on costs its own questions
            problems.append(f"{path}: inspection failed ({type(e).__name__}: {e})")
            continue
        findings = findings_for_prompt(res, bundle.product)
        for q in qs:
            # matched by path inside the dataset and the dataset folder's name: a moved copy still counts
            if q["task"] == "DC" and rel in fit_images and fit_name == Path(base).name:
                excluded += 1
                continue
            preds = {rt.name: runtime_answer(q, res, union)}
            if rt.explainer:
                preds["LLM"] = llm_answer(q, rt.ask(findings, q))
            for s, p in preds.items():
                answered[s] += p is not None
                hit, iou = score(q, p)
                hits[s][q["task"]].append(hit)
                if iou is not None:
                    ious[s].append(iou)
            rows.append({"id": q.get("id"), "task": q["task"], "answer": q["answer"], "predicted": preds})
        if rt.explainer and res["verdict"] == "defect":
            for mode, constrained in (("constrained", True), ("unconstrained", False)):  # one run, both ways
                e = rt.explainer.explain(res, constrain=constrained)
                grounded[mode].append((bool(e["consistent"]), bool(e["complete"]), e["source"] == "rules"))
                explanations.append({"image": rel, "mode": mode, "text": e["text"], "consistent": e["consistent"],
                                     "complete": e["complete"], "source": e["source"], "reason": e["reason"],
                                     "decode_tok_s": e["decode_tok_s"]})
    table = {s: {t: (round(100 * float(np.mean(hits[s][t])), 1) if hits[s][t] else None) for t in TASKS} |
             {"DFM_mIoU": round(float(np.mean(ious[s])), 3) if ious[s] else None,
              "n": {t: len(hits[s][t]) for t in TASKS},
              "answered": round(answered[s] / max(1, sum(len(v) for v in hits[s].values())), 3)} for s in systems}
    table["random chance"] = {t: (round(100 * c, 1) if (c := chance(t, recs)) is not None else None) for t in TASKS}
    return {"bundle": str(bundle.root), "ddqa": str(ddqa_path), "precision": precision, "images": len(images),
            "table": table, "dc_excluded_fit_images": excluded, "thresholds_tuned_on_this_data": tuned_here,
            "explanation_rates": {mode: _rates(g) for mode, g in grounded.items() if g},
            "explanations": len(grounded["constrained"]), "explained": explanations, "problems": problems,
            "answers": rows}


def _rates(g: list[tuple[bool, bool, bool]]) -> dict[str, float]:
    """Percent consistent (names nothing wrong), complete (names what it must), and rule-written."""
    a = np.asarray(g, bool)
    return {"consistent_percent": round(100 * float(a[:, 0].mean()), 1),
            "complete_percent": round(100 * float(a[:, 1].mean()), 1),
            "rules_percent": round(100 * float(a[:, 2].mean()), 1)}


def describe_table(rep: dict[str, Any]) -> str:
    """EIAD Table II's shape: accuracy (%) per task and system, random chance beside."""
    head = f"{'':<34}{'AD':>7}{'RDL':>7}{'DFM':>7}{'mIoU':>7}{'DC':>7}"
    lines = [head]
    for name, row in rep["table"].items():
        cells = [row.get("AD"), row.get("RDL"), row.get("DFM"), row.get("DFM_mIoU"), row.get("DC")]
        lines.append(f"{name:<34}" + "".join(f"{'—' if v is None else v:>7}" for v in cells))
    for name, row in rep["table"].items():
        if "answered" in row and row["answered"] < 1:
            lines.append(f"{name}: {100 * row['answered']:.1f}% of the questions answered in a readable form")
    for mode, r in rep.get("explanation_rates", {}).items():
        lines.append(f"explanations {mode + ':':<15} consistent {r['consistent_percent']:.1f}%, complete "
                     f"{r['complete_percent']:.1f}% of {rep['explanations']}"
                     + (f" ({r['rules_percent']:.1f}% rule-written)" if mode == "constrained" else ""))
    if rep.get("thresholds_tuned_on_this_data"):
        lines.append("note: the thresholds were tuned (f1 rule) on these images: AD, RDL and DFM are optimistic")
    if rep["dc_excluded_fit_images"]:
        lines.append(f"DC: {rep['dc_excluded_fit_images']} questions left out (their images fitted the classifier)")
    return "\n".join(lines)
