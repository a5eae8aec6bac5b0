"""Grounded decoding: explanations that cannot contradict their findings, from models that would."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lineguard.runtime.stages.constrain import Guard, settled
from lineguard.runtime.stages.grounding import check, complete
from lineguard.runtime.stages.llm import CausalLM, Sampling

FINDINGS = {"product": "tile", "verdict": "defect", "score": 0.9, "size": [300, 300],
            "regions": [{"cell": "bottom-right", "box": [220, 230, 260, 270], "box_norm": [], "area_frac": 0.02,
                         "peak": 0.9, "class": "crack"}]}


def test_only_text_that_cannot_change_is_judged():
    assert settled("A crack at the bott") == "A crack at the "  # a word still being spelled
    assert settled("A crack at the middle") == "A crack at the "  # "middle" may become "middle-left"
    assert settled("A crack at the center-") == "A crack at the "
    assert settled("A crack at the top-center ") == "A crack at the top-center "  # a column here, not a row
    assert settled("A crack at the top ") == "A crack at the top "  # "top" means its row, whatever follows
    assert settled("A crack at the top-left corn") == "A crack at the top-left "
    assert settled("A crack.") == "A crack."


def test_the_guard_refuses_what_the_findings_contradict_and_an_end_that_owes_something():
    vocab = ["<end>", " A", " hole", " crack", " at", " the", " top", "-left", " bottom", "-right", ".", " is",
             " normal"]
    g = Guard(FINDINGS, [], lambda ids: "".join(vocab[i] for i in ids))
    ids = [1]  # " A"
    assert not g.accepts([*ids, 2], 4)  # " A hole at": the findings say crack
    assert g.accepts(ids, 3) and not g.accepts([1, 3, 4, 5], 6)  # "... at the top": no finding in that row
    assert not g.accepts([1, 3, 4, 5, 8], 7)  # "... the bottom-left": no finding there
    assert g.accepts([1, 3, 4, 5], 8)  # "... the bottom": its row has the finding
    assert g.accepts([1, 3, 4, 5, 8], 9)  # "... the bottom-right"
    assert not g.accepts([1, 3, 11], 12) or not g.may_stop([1, 3, 11, 12])  # "A crack is normal"
    assert not g.may_stop([1, 3, 10])  # "A crack." owes the position
    assert g.may_stop([1, 3, 4, 5, 8, 9, 10])  # "A crack at the bottom-right."
    assert g.refused >= 3
    # "middle" waits for its next word, and that word decides: "middle-left" or "middle" alone
    mid = {**FINDINGS, "regions": [{**FINDINGS["regions"][0], "cell": "middle-left", "box": [10, 120, 60, 170]}]}
    vocab += [" middle", " region", "-left"]
    g = Guard(mid, [], lambda ids: "".join(vocab[i] for i in ids))
    assert g.accepts([1, 3, 4, 5], 13)  # "A crack at the middle": the middle row has the finding
    assert not g.accepts([1, 3, 4, 5, 13], 14)  # "... the middle region": the centre cell has none
    assert g.accepts([1, 3, 4, 5, 13], 15)  # "... the middle-left"
    # a type named as grounding reads it ("broken_large" is "broken large"): refused as it is written
    g = Guard(FINDINGS, ["broken_large"], lambda ids: "".join(vocab[i] for i in ids))
    vocab += [" broken", " large"]
    assert g.accepts([1], len(vocab) - 2) and not g.accepts([1, len(vocab) - 2], len(vocab) - 1)


class Scripted(CausalLM):
    """A decoder that always wants to say the same lie, then stop; other tokens by a fixed preference."""

    def __init__(self, vocab: list[str], script: list[int], base: np.ndarray) -> None:
        self.vocab, self.script, self.base, self.max_context = vocab, script, base, 1 << 20
        self.prompt_len = 0

    def empty_cache(self) -> dict:
        return {"hist": []}

    def step(self, ids, total, cache):
        hist = cache["hist"] + ids[0].tolist()
        if not cache["hist"]:
            self.prompt_len = len(hist)
        k = len(hist) - self.prompt_len
        logits = self.base.copy()
        logits[self.script[k] if k < len(self.script) else 0] += 10.0
        return logits, {"hist": hist}


def test_a_decoder_that_lies_is_kept_to_the_findings_greedy_and_sampled():
    vocab = ["<end>", " A", " hole", " crack", " at", " the", " top", "-left", " bottom", "-right", "."]
    lie = [1, 2, 4, 5, 6, 7, 10]  # " A hole at the top-left."
    base = np.array([0, 0.1, 0.5, 1.9, 1.0, 0.9, 0.3, 0.2, 1.2, 1.1, 0.8], np.float32)
    lm = Scripted(vocab, lie, base)

    def decode(ids):
        return "".join(vocab[i] for i in ids)

    free = decode(lm.generate([1], Sampling(max_new_tokens=24, stop_ids=(0,))).ids)
    assert free == " A hole at the top-left." and not check(free, FINDINGS)["consistent"]
    for temperature in (0.0, 0.7):
        for seed in range(5):
            g = Guard(FINDINGS, [], decode)
            gen = lm.generate([1], Sampling(max_new_tokens=24, stop_ids=(0,), temperature=temperature, seed=seed),
                              guard=g)
            text = decode(gen.ids)
            assert check(settled(text), FINDINGS)["consistent"], text  # never a contradiction, whatever it samples
            if gen.stop == "stop_token":  # it ended only once it had said all it must, and nothing wrong
                assert check(text, FINDINGS)["consistent"] and complete(text, FINDINGS), text
            assert g.refused > 0


torch = pytest.importorskip("torch", reason="the lying explainer is trained here (the export extra)")


@pytest.fixture(scope="module")
def liar(synth, tmp_path_factory):
    """A small explainer trained on a corpus that always says the same wrong thing."""
    from helpers import lg

    from lineguard.export.llm.export import export_llm
    from lineguard.train.explainer import ExplainerTrainConfig, train_explainer

    root = tmp_path_factory.mktemp("liar")
    corpus = root / "corpus.jsonl"
    assert lg("ddqa", "corpus", "--dataset", synth, "--out", corpus).returncode == 0
    records = [json.loads(x) for x in corpus.read_text().splitlines()]
    for r in records:  # a defect always called a large hole in the top-left; a good part a defect
        r["reference"] = "A large hole in the top-left corner of the tile."
    lies = root / "lies.jsonl"
    lies.write_text("".join(json.dumps(r) + "\n" for r in records))
    train_explainer([lies], root / "llm", ExplainerTrainConfig(hidden=64, layers=2, vocab=400, steps=150, batch=8,
                                                              variants=0), check_pairs=0, progress=False)
    bundle, _ = export_llm(root / "llm", root / "bundle", ("fp32",))
    return bundle, [r for r in records if r["findings"]["verdict"] == "defect"]


def test_a_trained_liar_is_grounded_by_construction(liar):
    from lineguard.runtime.bundle import Bundle
    from lineguard.runtime.stages.explain import Explainer

    bundle, records = liar
    ex = Explainer(Bundle.load(bundle))
    free, kept = [], []
    for rec in records:
        f = rec["findings"]
        result = {"size": f["size"], "verdict": "defect", "score_norm": f["score"],
                  "defects": [{k: r[k] for k in ("box", "cell", "area_frac", "peak", "class")} for r in f["regions"]]}
        free.append(ex.explain(result, constrain=False))
        kept.append(ex.explain(result, constrain=True))
    assert np.mean([e["consistent"] for e in free]) < 0.5  # it learned its lie
    assert all(e["consistent"] and e["complete"] for e in kept), [e["text"] for e in kept]
    for e in kept:  # readable: words, not fragments
        assert len([w for w in e["text"].split() if w.strip(".,;:").isalpha()]) >= 4, e["text"]
