"""DDQA: the rules against hand-computed answers, the builder's problem reports, the defect
classifier against scikit-learn, the evaluator end to end through the CLI, and the corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import lg

from lineguard.calibration.classes import fit
from lineguard.ddqa import answers
from lineguard.ddqa.build import build
from lineguard.ddqa.corpus import build_corpus
from lineguard.ddqa.evaluate import read_questions
from lineguard.ddqa.rules import box_iou, cell_options, norm_box, rough_cell
from lineguard.runtime.errors import BundleError
from lineguard.runtime.stages.classify import UNKNOWN, DefectClassifier, describe_region
from lineguard.runtime.stages.findings import CELLS, grid_cell
from lineguard.runtime.stages.grounding import check
from lineguard.runtime.stages.prompting import DEFAULT_PROMPT, PromptBuilder
from lineguard.synth.tiles import DEFECTS

W, H = 90, 60  # cells: x 0-29 | 30-59 | 60-89, y 0-19 | 20-39 | 40-59


def _rect(y0: int, y1: int, x0: int, x1: int, m: np.ndarray | None = None) -> np.ndarray:
    m = np.zeros((H, W), np.uint8) if m is None else m
    m[y0:y1, x0:x1] = 255
    return m


def test_rules_give_the_hand_computed_answers():
    top_right = _rect(3, 13, 70, 86)
    assert rough_cell(top_right) == "top-right"
    assert norm_box(top_right) == [round(70 / W, 4), round(3 / H, 4), round(86 / W, 4), round(13 / H, 4)]
    two = _rect(28, 31, 44, 47, _rect(45, 55, 2, 22))  # a 20x10 block bottom-left, a 3x3 speck in the centre
    assert rough_cell(two) == "bottom-left"
    assert norm_box(two) == [round(2 / W, 4), round(45 / H, 4), round(22 / W, 4), round(55 / H, 4)]
    assert norm_box(two, "all") == [round(2 / W, 4), round(28 / H, 4), round(47 / W, 4), round(55 / H, 4)]
    assert norm_box(np.zeros((H, W), np.uint8)) is None
    tie = _rect(0, 10, 20, 40)  # 10 columns in top-left, 10 in top-center: the first in reading order wins
    assert grid_cell(tie) == "top-left"
    opts = cell_options("center", np.random.default_rng(0))
    assert len(opts) == len(set(opts)) == 4 and "center" in opts and set(opts) <= set(CELLS)
    assert opts == cell_options("center", np.random.default_rng(0))
    assert box_iou([0, 0, 0.5, 1], [0.25, 0, 0.75, 1]) == pytest.approx(1 / 3)
    assert box_iou([0, 0, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6]) == 0.0


def test_answer_parsing():
    assert answers.yes_no("Yes, there is a crack.") == "yes" and answers.yes_no("No defect: normal.") == "no"
    assert answers.yes_no("hmm") is None
    opts = ["top-left", "center", "bottom-right", "middle-left"]
    assert answers.option("(C) bottom right", opts) == "bottom-right"
    assert answers.option("It is in the middle left part", opts) == "middle-left"
    assert answers.option("B", opts) == "center" and answers.option("somewhere", opts) is None
    assert answers.box("box 0.1 0.2 0.5 0.6") == [0.1, 0.2, 0.5, 0.6]
    assert answers.box("from 10% 20% to 50% 60%") == pytest.approx([0.1, 0.2, 0.5, 0.6])
    assert answers.box("0.5 0.1") is None
    # the question's own "x0, y0, x1, y1" must not be read as numbers; a leading article is not option (A)
    assert answers.box("x0: 0.12, y0: 0.30, x1: 0.5, y1: 0.6") == [0.12, 0.3, 0.5, 0.6]
    classes = ["blowhole", "break", "crack", "fray", "uneven"]
    assert answers.option("A crack across the tile.", classes) == "crack"
    assert answers.option("(E) uneven", classes) == "uneven" and answers.option("a", classes) == "blowhole"
    assert answers.yes_no("It is not anomalous.") == "no" and answers.yes_no("I don't see any defect") == "no"
    assert answers.yes_no("There are anomalies here") == "yes"


def test_runtime_answers_and_scores_on_hand_made_masks():
    from lineguard.ddqa.evaluate import invalid, runtime_answer, score
    from lineguard.ddqa.rules import best_option
    from lineguard.runtime.stages.findings import cell_shares

    union = _rect(45, 55, 2, 22).astype(bool)  # the bottom-left block
    truth_box = [0.0, 45 / H, 20 / W, 55 / H]  # shifted 2 px left of the prediction: IoU 18/22
    rec = {"task": "DFM", "answer": truth_box, "truth": {"components": "largest"}}
    pred = runtime_answer(rec, {"verdict": "defect", "defects": []}, union)
    hit, iou = score(rec, pred)
    assert iou == pytest.approx(18 / 22, abs=1e-3) and hit
    hit, iou = score(rec | {"answer": [0.5, 0.0, 0.6, 0.1]}, pred)
    assert iou == 0.0 and not hit
    assert score(rec, None) == (False, 0.0)  # no mask found: a miss, not a crash
    opts = ["bottom-left", "top-right", "center", "top-left"]
    assert runtime_answer({"task": "RDL", "options": opts}, {}, union) == "bottom-left"
    assert best_option(cell_shares(union), ["top-right", "center"]) is None  # no free guess
    assert runtime_answer({"task": "AD"}, {"verdict": "normal"}, union) == "no"
    dc = {"task": "DC", "options": ["hole", "scratch"], "answer": "hole"}
    assert runtime_answer(dc, {"defects": [{"class": "unknown"}]}, union) is None  # unknown is never right
    assert runtime_answer(dc, {"defects": [{"class": "hole"}]}, union) == "hole"
    base = {"image": "a.png", "root": "/r", "question": "q"}
    assert invalid(base | {"task": "DC", "answer": "hole"}) == "DC needs a list of options holding the answer"
    assert invalid(base | {"task": "DFM", "answer": [0, 1]}) == "DFM answer must be a box of four numbers"
    assert invalid(base | {"task": "AD", "answer": "maybe"}) == "AD answer must be yes or no"
    assert invalid(base | dc) is None


@pytest.fixture()
def small_mvtec(tmp_path: Path) -> Path:
    """A hand-made MVTec tree with known masks and every kind of problem the builder must report."""
    root = tmp_path / "part"
    rng = np.random.default_rng(0)

    def img(rel: str) -> None:
        p = root / "test" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 255, (H, W), dtype=np.uint8))

    def mask(rel: str, m: np.ndarray | bytes) -> None:
        p = root / "ground_truth" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(m) if isinstance(m, bytes) else cv2.imwrite(str(p), m)

    img("good/g0.png")
    img("scratch/s0.png")
    mask("scratch/s0_mask.png", _rect(3, 13, 70, 86))
    img("scratch/s1.png")
    mask("scratch/s1_mask.png", _rect(28, 31, 44, 47, _rect(45, 55, 2, 22)))
    img("hole/h0.png")  # no mask at all
    img("hole/h1.png")
    mask("hole/h1_mask.png", np.zeros((H, W), np.uint8))
    img("hole/h2.png")
    mask("hole/h2_mask.png", b"not a png")
    (root / "test" / "stain").mkdir()  # a defect folder with no images
    return root


def test_build_answers_and_problems(small_mvtec, tmp_path):
    out = tmp_path / "q.jsonl"
    rep = build(small_mvtec, out, seed=1, progress=False)
    assert rep["questions"] == {"AD": 6, "RDL": 2, "DFM": 2, "DC": 5} and rep["localisation_skipped"] == 3
    problems = "\n".join(rep["problems"])
    assert "h0_mask.png: missing mask" in problems and "h1_mask.png: empty mask" in problems
    assert "h2_mask.png: unreadable mask" in problems and "stain: no images" in problems
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    by = {(r["task"], Path(r["image"]).name): r for r in recs}
    assert by[("AD", "g0.png")]["answer"] == "no" and by[("AD", "h0.png")]["answer"] == "yes"
    assert by[("RDL", "s0.png")]["answer"] == "top-right" and "top-right" in by[("RDL", "s0.png")]["options"]
    assert by[("RDL", "s1.png")]["answer"] == "bottom-left"
    assert by[("DFM", "s1.png")]["answer"] == [round(2 / W, 4), round(45 / H, 4), round(22 / W, 4), round(55 / H, 4)]
    assert by[("DC", "h2.png")]["answer"] == "hole" and by[("DC", "s0.png")]["options"] == ["hole", "scratch"]
    assert all(r["root"] == str(small_mvtec.resolve()) for r in recs)
    again = tmp_path / "again.jsonl"
    build(small_mvtec, again, seed=1, progress=False)
    assert again.read_bytes() == out.read_bytes()  # seeded: the same set twice
    r = lg("ddqa", "build", "--dataset", small_mvtec, "--out", tmp_path / "cli.jsonl")
    assert r.returncode == 0 and "h2_mask.png: unreadable mask" in r.stderr
    assert json.loads(r.stdout)["questions"]["DC"] == 5
    r = lg("ddqa", "build", "--dataset", tmp_path / "nowhere", "--out", tmp_path / "x.jsonl")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no such folder" in r.stderr


def test_bad_jsonl_lines_are_named_and_the_rest_is_read(tmp_path):
    p = tmp_path / "q.jsonl"
    good = {"task": "AD", "image": "a.png", "answer": "yes", "root": "/x", "question": "Is there a defect?"}
    p.write_text(json.dumps(good) + "\n{not json\n" + json.dumps(good | {"task": "XX"})
                 + "\n" + json.dumps({"task": "AD"}) + "\n")
    recs, problems = read_questions(p)
    assert recs == [good] and len(problems) == 3
    assert problems[0].startswith(f"{p}:2: not JSON") and f"{p}:3: unknown task" in problems[1]
    assert f"{p}:4: missing image, answer, root, question" == problems[2]


def test_classifier_is_knn_as_scikit_learn_computes_it_and_says_unknown_far_away():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (3, 8))
    x = np.concatenate([c + rng.normal(0, 1, (12, 8)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(3), 12)
    names = ["a", "b", "c"]
    q = np.concatenate([c + rng.normal(0, 1.5, (10, 8)) for c in centres]).astype(np.float32)
    for k in (1, 3):
        clf = fit(x, y, names, k)
        clf.max_distance = float("inf")
        ref = KNeighborsClassifier(n_neighbors=k).fit((x - clf.mean) / clf.std, y)
        expect = [names[i] for i in ref.predict((q - clf.mean) / clf.std)]
        assert [clf.predict(v)[0] for v in q] == expect
    clf = fit(x, y, names, 3)
    assert clf.predict(centres[1] + 60.0)[0] == UNKNOWN  # far from every example
    assert clf.predict(x[0])[0] == "a"
    back = DefectClassifier.from_dict(json.loads(json.dumps(clf.to_dict())))
    assert [back.predict(v)[0] for v in q] == [clf.predict(v)[0] for v in q]
    bad = clf.to_dict() | {"std": clf.std.tolist()[:3]}
    with pytest.raises(BundleError, match="mean and std must hold 8 values"):
        DefectClassifier.from_dict(bad, "classes/classifier.json")
    # one example per type: no distance within a type to judge by, so nothing is called unknown
    one = fit(x[::12], y[::12], names, 3)
    assert one.max_distance == float("inf")


def test_descriptors_tell_a_scratch_from_a_hole():
    rng = np.random.default_rng(1)

    def sample(kind: str) -> np.ndarray:
        frame = np.full((128, 128, 3), 128, np.uint8)
        m = np.zeros((128, 128), np.uint8)
        cx, cy = rng.integers(30, 98, 2)
        if kind == "scratch":
            a = rng.uniform(0, np.pi)
            d = np.array([np.cos(a), np.sin(a)]) * rng.uniform(20, 30)
            cv2.line(m, (int(cx - d[0]), int(cy - d[1])), (int(cx + d[0]), int(cy + d[1])), 255, 2)
        else:
            cv2.circle(m, (int(cx), int(cy)), int(rng.integers(5, 9)), 255, -1)
        frame[m > 0] = 40 if kind == "hole" else 200
        return describe_region(frame, m > 0, (m > 0).astype(np.float32))

    x = np.stack([sample(k) for k in ("scratch", "hole") for _ in range(6)])
    clf = fit(x, np.repeat([0, 1], 6), ["hole", "scratch"][::-1], 3)  # names: label 0 = scratch, 1 = hole
    assert [clf.predict(sample("scratch"))[0] for _ in range(5)] == ["scratch"] * 5
    assert [clf.predict(sample("hole"))[0] for _ in range(5)] == ["hole"] * 5


def test_corpus_references_are_grounded_in_their_findings(small_mvtec, tmp_path):
    out = tmp_path / "c.jsonl"
    rep = build_corpus(small_mvtec, out, seed=0, progress=False)
    assert rep["pairs"] == 3 and rep["skipped_without_mask"] == 3  # g0, s0, s1; the hole images lack masks
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    builder = PromptBuilder(DEFAULT_PROMPT, None, {})
    for r in recs:
        assert r["messages"] == builder.messages(r["findings"])
        g = check(r["reference"], r["findings"], ["hole", "scratch"])
        assert g["consistent"], (r["reference"], g)
    s1 = next(r for r in recs if r["image"].endswith("s1.png"))
    lines = s1["messages"][1]["content"].splitlines()  # each region on its own line, the instruction last
    assert [x.split(":")[0] for x in lines[2:]] == ["Region 1", "Region 2", "Explain the defect."]
    assert lines[2].endswith("type scratch")
    assert len(s1["findings"]["regions"]) == 2 and s1["findings"]["regions"][0]["cell"] == "bottom-left"
    assert "scratch" in s1["reference"] and "bottom-left" in s1["reference"] and "1 smaller region" in s1["reference"]
    g0 = next(r for r in recs if r["image"].endswith("g0.png"))
    assert g0["findings"]["verdict"] == "normal" and g0["findings"]["regions"] == []


def test_eval_end_to_end_through_the_runtime_and_the_llm(full_bundle, synth, tmp_path):
    from sklearn.metrics import accuracy_score

    b = tmp_path / "bundle"
    shutil.copytree(full_bundle, b)
    r = lg("calibrate", b, "--dataset", synth, "--rule", "f1", "--classes", "--shots", "1")
    assert r.returncode == 0 and "leave-one-out accuracy" in r.stdout, r.stderr
    r = lg("calibrate", b, "--classes-only")
    assert r.returncode == 1 and "--classes needs --dataset ROOT" in r.stderr and r.stderr.count("\n") == 1
    thresholds = json.loads((b / "manifest.json").read_text())["thresholds"]
    r = lg("calibrate", b, "--dataset", synth, "--classes-only", "--shots", "1")  # refit, thresholds untouched
    assert r.returncode == 0 and "leave-one-out accuracy" in r.stdout, r.stderr
    m = json.loads((b / "manifest.json").read_text())
    # the examples are the regions the bundle's own stages find on the labelled images
    got = m["classes"]["fit"]["examples_from"]
    assert got["found_regions"] >= 1 and got["found_regions"] + got["true_masks"] >= len(m["classes"]["names"])
    assert m["thresholds"] == thresholds
    assert m["classes"]["names"] == sorted(DEFECTS) and len(m["classes"]["fit"]["images"]) == len(DEFECTS)
    q = tmp_path / "q.jsonl"
    assert lg("ddqa", "build", "--dataset", synth, "--out", q).returncode == 0
    with open(q, "a") as f:
        f.write("{broken\n")
    out = tmp_path / "eval" / "ddqa.json"
    r = lg("ddqa", "eval", b, "--ddqa", q, "--json", out)
    assert r.returncode == 0, r.stderr
    assert f"{q}:" in r.stderr and "not JSON" in r.stderr  # the broken line is named, the rest evaluated
    rep = json.loads(out.read_text())
    assert out.with_suffix(".png").is_file()
    name = "expert + SAM + classifier"
    assert set(rep["table"]) == {name, "LLM", "random chance"}
    assert rep["table"]["random chance"]["AD"] == 50.0 and rep["table"]["random chance"]["RDL"] == 25.0
    assert rep["table"]["random chance"]["DC"] == pytest.approx(100 / len(m["classes"]["names"]), abs=0.1)
    for system in (name, "LLM"):  # each accuracy is the plain accuracy of the recorded answers
        for task in ("AD", "RDL", "DC"):
            rows = [a for a in rep["answers"] if a["task"] == task]
            want = accuracy_score([json.dumps(a["answer"]) for a in rows],
                                  [json.dumps(a["predicted"][system]) for a in rows])
            assert rep["table"][system][task] == pytest.approx(100 * want, abs=0.051)
    n_defect_images = sum(a["task"] == "AD" and a["answer"] == "yes" for a in rep["answers"])
    assert rep["table"][name]["n"]["DC"] + rep["dc_excluded_fit_images"] == n_defect_images
    assert rep["dc_excluded_fit_images"] == len(DEFECTS)  # one shot per type fitted it
    # both ways in one run; each checked explanation is in the report, and the rates are theirs
    assert rep["explanations"] >= 1 and len(rep["explained"]) == 2 * rep["explanations"]
    assert all(e["text"] for e in rep["explained"])
    for mode, rates in rep["explanation_rates"].items():
        mine = [e for e in rep["explained"] if e["mode"] == mode]
        assert rates["consistent_percent"] == pytest.approx(100 * np.mean([e["consistent"] for e in mine]), abs=0.051)
        assert rates["complete_percent"] == pytest.approx(100 * np.mean([e["complete"] for e in mine]), abs=0.051)
    # the tiny random-weight LM of this bundle, constrained: nothing wrong and nothing owed, every time
    assert rep["explanation_rates"]["constrained"]["consistent_percent"] == 100.0
    assert rep["explanation_rates"]["constrained"]["complete_percent"] == 100.0
    assert "explanations constrained:" in r.stdout
    assert "AD" in r.stdout and "random chance" in r.stdout
