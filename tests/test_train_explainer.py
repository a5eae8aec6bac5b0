"""`lineguard train explainer`: a small LM trained on a DDQA corpus, saved as a real checkpoint
and exported to INT4 through the same path as a downloaded one."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the export extra (torch)")

from helpers import lg  # noqa: E402


@pytest.fixture(scope="module")
def corpus(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    r = lg("ddqa", "corpus", "--dataset", synth, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("explainer") / "llm"
    r = lg("train", "explainer", "--corpus", corpus, "--out", out, "--hidden", 32, "--layers", 2, "--vocab", 400,
           "--steps", 60, "--batch", 8)
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


def test_explainer_is_a_real_checkpoint_that_learned(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, summary = trained
    rec = json.loads((out / "lineguard_training.json").read_text())
    assert rec["steps"] == 60 and summary["steps"] == 60
    assert rec["final_loss"] < 0.7 * rec["first_loss"]  # it learned the answers' wording
    assert 0.0 <= rec["held_out"]["grounded"] <= 1.0 and rec["held_out"]["pairs"] >= 1
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "qwen2" and tok.chat_template
    assert model.config.vocab_size == len(tok) and tok.eos_token == "<|end|>"


def test_augmented_findings_keep_the_reference_grounded():
    """Other scores, a class withheld: the reference written for them still passes the runtime's check."""
    from lineguard.runtime.stages.grounding import check
    from lineguard.runtime.stages.reference import reference
    from lineguard.train.explainer import augment

    f = {"product": "tile", "verdict": "defect", "score": 1.0, "size": [100, 100],
         "regions": [{"cell": "top-left", "box_norm": ["0.1", "0.1", "0.2", "0.2"], "box": [10, 10, 20, 20],
                      "area_frac": 0.01, "peak": 1.0, "class": "crack"}]}
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        g = augment(f, rng)
        assert 0.5 <= g["score"] <= 1.0 and g["regions"][0]["box"] == [10, 10, 20, 20]
        text = reference(g, rng)
        assert check(text, g)["consistent"], text
        seen.add(g["regions"][0]["class"])
        assert g["regions"][0]["class"] in ("crack", "unknown", None)
        if g["regions"][0]["class"] != "crack":
            assert "crack" not in text  # a withheld class is never named
    assert seen == {"crack", "unknown", None}
    assert f["score"] == 1.0  # the corpus record itself is untouched


def test_trained_explainer_exports_to_int4(trained, tmp_path):
    from lineguard.export.llm.export import export_llm
    from lineguard.runtime.bundle import Bundle

    out, _ = trained
    b, report = export_llm(out, tmp_path / "bundle", ("int4",))
    assert Bundle.load(b).has_stage("llm")
    assert report["int4"]["teacher_forced_agreement"] > 0.8


def test_bad_corpus_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"findings": {}}\n')
    r = lg("train", "explainer", "--corpus", bad, "--out", tmp_path / "x")
    assert r.returncode != 0 and "bad.jsonl:1: not a corpus record" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
