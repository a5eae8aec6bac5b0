"""The grounding check: positions, defect types and the verdict an explanation names vs the findings."""

from lineguard.runtime.stages.grounding import cells_of_box, check, named_positions
from lineguard.runtime.stages.prompting import findings_for_prompt


def _findings(box, cls=None, verdict="defect", size=(90, 90)):
    return {"verdict": verdict, "size": list(size),
            "regions": [{"cell": "top-left", "box": box, "area_frac": 0.01, "peak": 0.9, "class": cls}]}


def test_cells_of_a_box_cover_every_cell_it_touches():
    assert cells_of_box([0, 0, 30, 30], (90, 90)) == {(0, 0)}  # x1, y1 exclusive: exactly the first cell
    assert cells_of_box([25, 0, 35, 10], (90, 90)) == {(0, 0), (0, 1)}
    assert cells_of_box([80, 80, 90, 90], (90, 90)) == {(2, 2)}


def test_positions_longest_phrase_first():
    got = [p for p, _ in named_positions("A scratch in the top-left corner, near the upper right edge and the centre.")]
    assert got == ["top-left", "upper right", "centre"]


def test_right_place_is_consistent_and_wrong_place_is_not():
    f = _findings([2, 2, 20, 20])
    ok = check("A scratch in the top-left corner.", f)
    assert ok["consistent"] and ok["reason"] is None and ok["positions"] == ["top-left"]
    bad = check("A scratch in the bottom-right corner.", f)
    assert not bad["consistent"] and "bottom-right" in bad["reason"] and "top-left" in bad["reason"]
    assert check("A mark near the top of the part.", f)["consistent"]  # vague but overlapping
    assert not check("A mark on the right side.", f)["consistent"]


def test_a_box_spanning_cells_may_be_described_by_either():
    f = _findings([20, 2, 40, 20])  # top-left and top-center
    assert check("a crack at the top-center", f)["consistent"]
    assert not check("a crack at the bottom-center", f)["consistent"]


def test_classes_contradict_only_when_the_findings_know_theirs():
    assert check("a scratch at the top-left", _findings([2, 2, 20, 20], "scratch"))["consistent"]
    bad = check("a crack at the top-left", _findings([2, 2, 20, 20], "scratch"))
    assert not bad["consistent"] and "calls it crack but the findings say scratch" in bad["reason"]
    unk = check("a crack at the top-left", _findings([2, 2, 20, 20], None))
    assert unk["consistent"] and unk["unverified"] == ["crack"]
    custom = check("an oil_spot at the top-left", _findings([2, 2, 20, 20], "oil_spot"), ["oil_spot", "fray"])
    assert custom["consistent"] and custom["classes"] == ["oil_spot"]


def test_verdict_contradictions():
    bad = check("No defect: the part is normal.", _findings([2, 2, 20, 20]))
    assert not bad["consistent"] and "verdict is defect" in bad["reason"]
    normal = {"verdict": "normal", "size": [90, 90], "regions": []}
    assert check("No defect was found.", normal)["consistent"]
    assert not check("A scratch at the top-left.", normal)["consistent"]


def test_findings_for_prompt_from_an_inspect_result():
    r = {"path": "a.png", "size": [200, 100], "score": 7.1, "score_norm": 0.8, "verdict": "defect",
         "hottest": {"box": [0, 0, 10, 10], "cell": "top-left", "area_frac": 0.005, "peak": 1.0},
         "defects": [{"box": [150, 50, 200, 100], "cell": "bottom-right", "area_frac": 0.125, "peak": 2.0,
                      "mask_source": "sam"}]}
    f = findings_for_prompt(r, "disc")
    assert f["product"] == "disc" and f["score"] == 0.8 and f["size"] == [200, 100]
    assert f["regions"] == [{"cell": "bottom-right", "box_norm": ["0.75", "0.50", "1.00", "1.00"],
                             "box": [150, 50, 200, 100], "area_frac": 0.125, "peak": 2.0, "class": None}]
    r.pop("defects")
    assert findings_for_prompt(r, "disc")["regions"][0]["cell"] == "top-left"
