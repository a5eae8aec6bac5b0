"""``lineguard train explainer``: a small decoder-only LM (transformers' Qwen2 or Llama) taught to
explain findings, trained from scratch on a DDQA explanation corpus (``lineguard ddqa corpus``).

The tokenizer is a byte-level BPE trained with ``tokenizers`` on the corpus itself; the chat
template is the one ``export llm`` and the runtime render. The loss is on the answer only
(the reference explanation and its end token). Each pair is also seen with other scores and,
sometimes, without its class, as the runtime's findings come: a score from the expert, a class
only where the classifier is sure. The output is a ``save_pretrained`` folder that
``lineguard export llm`` turns into INT4, exactly as a downloaded checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lineguard.export.llm.tiny import save_checkpoint, tiny_config, train_tokenizer, wrap_tokenizer
from lineguard.progress import bar
from lineguard.runtime.errors import InputError
from lineguard.runtime.stages.findings import GRID
from lineguard.runtime.stages.grounding import GENERIC_CLASSES, check
from lineguard.runtime.stages.prompting import DEFAULT_PROMPT, PromptBuilder
from lineguard.runtime.stages.reference import reference
from lineguard.train.loop import Steps

log = logging.getLogger("lineguard.train")


@dataclass
class ExplainerTrainConfig:
    family: str = "qwen2"
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384
    vocab: int = 1024
    steps: int = 2000  # copying from the findings is learned after ~1000 (BENCHMARKS.md)
    minutes: float = 0.0  # > 0: fail if the steps take longer (a limit, never a shorter run)
    batch: int = 16
    lr: float = 3e-3
    variants: int = 8  # augmented findings per corpus pair
    seed: int = 0


def read_corpus(paths: list[str | Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise InputError(f"{path}: no such corpus file (write one with `lineguard ddqa corpus`)")
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            try:
                rec = json.loads(line)
                f = rec["findings"]
                ok = isinstance(rec["reference"], str) and f["verdict"] in ("defect", "normal") and len(f["size"]) == 2
                ok = ok and all({"box", "cell", "area_frac"} <= set(r) for r in f["regions"])
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                raise InputError(f"{path}:{i + 1}: not a corpus record (findings with verdict, size and "
                                 "regions, and a reference; write one with `lineguard ddqa corpus`)")
            out.append(rec)
    if not out:
        raise InputError("the corpus is empty")
    return out


def augment(findings: dict[str, Any], rng: np.random.Generator, classes: list[str] | None = None) -> dict[str, Any]:
    """The same finding as the runtime may report it (another score, a class not always named)
    and, half the time, moved to another cell with another type from ``classes``: the
    explanation must come from the findings, not from where defects of a type usually are."""
    f = copy.deepcopy(findings)
    defect = f["verdict"] == "defect"
    f["score"] = float(rng.uniform(0.5, 1.0) if defect else rng.uniform(0.0, 0.5))
    w, h = f["size"]
    for r in f["regions"]:
        r["peak"] = float(rng.uniform(0.3, 1.0))
        if classes and rng.random() < 0.5:
            r["class"] = str(rng.choice(classes))
            _move(r, int(rng.integers(3)), int(rng.integers(3)), w, h, rng)
        if rng.random() < 0.2:
            r["class"] = "unknown" if rng.random() < 0.5 else None
    return f


def _move(r: dict[str, Any], row: int, col: int, w: int, h: int, rng: np.random.Generator) -> None:
    """Shift a region's box so its centre lies in cell (row, col); its cell, box and box_norm follow."""
    x0, y0, x1, y1 = r["box"]
    bw, bh = min(x1 - x0, w // 3), min(y1 - y0, h // 3)
    cx = (col + rng.uniform(0.3, 0.7)) * w / 3
    cy = (row + rng.uniform(0.3, 0.7)) * h / 3
    nx0 = int(np.clip(cx - bw / 2, col * w / 3 - bw / 2, w - bw))
    ny0 = int(np.clip(cy - bh / 2, row * h / 3 - bh / 2, h - bh))
    nx0, ny0 = max(nx0, 0), max(ny0, 0)
    r["box"] = [nx0, ny0, nx0 + bw, ny0 + bh]
    r["cell"] = GRID[min(int(3 * (ny0 + bh / 2) / h), 2)][min(int(3 * (nx0 + bw / 2) / w), 2)]
    r["box_norm"] = [f"{v / s:.2f}" for v, s in zip(r["box"], (w, h, w, h))]


def pairs(records: list[dict[str, Any]], builder: PromptBuilder, variants: int,
          rng: np.random.Generator) -> list[tuple[str, str, dict[str, Any]]]:
    """(prompt text as the runtime renders it, explanation, findings) for each record and variant."""
    # the corpus's own types and the common ones: a bundle's classifier may name any of them
    classes = sorted({r["class"] for rec in records for r in rec["findings"]["regions"] if r.get("class")}
                     | set(GENERIC_CLASSES))
    out = []
    for rec in records:
        for k in range(variants + 1):
            f = rec["findings"] if k == 0 else augment(rec["findings"], rng, classes)
            ref = rec["reference"] if k == 0 else reference(f, rng)
            out.append((builder.render(builder.messages(f)), ref, f))
    return out


def encode(tok: Any, examples: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[list[int], int]]:
    """Token ids of prompt + answer + end, and where the answer starts."""
    out = []
    for prompt, answer, _ in examples:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append((p + a, len(p)))
    return out


def batch_tensors(items: list[tuple[list[int], int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), n), pad, dtype=torch.long)
    labels = torch.full((len(items), n), -100, dtype=torch.long)
    att = torch.zeros((len(items), n), dtype=torch.long)
    for i, (seq, start) in enumerate(items):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, start : len(seq)] = torch.tensor(seq[start:])
        att[i, : len(seq)] = 1
    return ids, labels, att


def grounding_rate(model: Any, tok: Any, examples: list[tuple[str, str, dict[str, Any]]], max_new_tokens: int = 64,
                   progress: bool = True) -> dict[str, Any]:
    """Greedy explanations of ``examples`` checked by the runtime's grounding rule."""
    ok, bad = 0, []
    for prompt, _, f in bar(examples, desc="grounding", unit="pair", progress=progress, leave=False):
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        c = check(text, f)
        ok += bool(c["consistent"])
        if not c["consistent"] and len(bad) < 5:
            bad.append({"text": text, "reason": c["reason"]})
    return {"pairs": len(examples), "grounded": ok / len(examples) if examples else None,
            "examples_not_grounded": bad}


def train_explainer(corpus: list[str | Path], out: str | Path, cfg: ExplainerTrainConfig,
                    prompt: dict[str, Any] | None = None, check_pairs: int = 60,
                    progress: bool = True) -> dict[str, Any]:
    """Corpus → trained ``save_pretrained`` folder ``out``; returns the record (also in
    ``out/lineguard_training.json``), with the grounding rate on pairs held out of training."""
    from transformers import AutoModelForCausalLM

    records = read_corpus(corpus)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(records))
    n_check = min(check_pairs, len(records) // 5)
    held, fit = [records[i] for i in order[:n_check]], [records[i] for i in order[n_check:]]
    plain = PromptBuilder(prompt or DEFAULT_PROMPT, None, {})
    texts = [t for p, a, _ in pairs(fit, plain, 0, rng) for t in (p, a)] + [f" {c}" for c in GENERIC_CLASSES] * 8
    tok = wrap_tokenizer(train_tokenizer(cfg.vocab, texts))
    builder = PromptBuilder(prompt or DEFAULT_PROMPT, tok.chat_template, {"eos_token": tok.eos_token})
    data = encode(tok, pairs(fit, builder, cfg.variants, rng))
    torch.manual_seed(cfg.seed)
    mcfg = tiny_config(tok, cfg.family, cfg.hidden, cfg.layers, cfg.heads, cfg.kv_heads, cfg.intermediate,
                       max_positions=max(512, 2 * max(len(ids) for ids, _ in data)))
    model = AutoModelForCausalLM.from_config(mcfg, attn_implementation="eager")
    loop = Steps(model.parameters(), cfg.lr, cfg.steps, cfg.minutes, "train explainer", progress,
                 weight_decay=0.01, clip=1.0)
    model.train()
    for _ in loop:
        pick = rng.choice(len(data), size=min(cfg.batch, len(data)), replace=False)
        ids, labels, att = batch_tensors([data[int(i)] for i in pick], tok.pad_token_id)
        loop.step(model(input_ids=ids, attention_mask=att, labels=labels).loss)
    model.eval()
    record = {"config": asdict(cfg)} | loop.record() | {"corpus": [str(Path(c).resolve()) for c in corpus],
              "pairs": len(fit), "training_sequences": len(data),
              "parameters": sum(p.numel() for p in model.parameters()),
              "held_out": grounding_rate(model, tok, pairs(held, builder, 0, rng), progress=progress)}
    save_checkpoint(model, tok, out, max_new_tokens=64)
    (Path(out) / "lineguard_training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
