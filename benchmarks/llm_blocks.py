"""What a larger INT4 block costs in accuracy: each block size against the same model's fp32 graph.

    python -m benchmarks.llm_blocks [--blocks 32,64,128,256] [--explainer DIR] [--shape qwen2-0.5b]
                                    [--prompts 60] [--work runs/llm] [--out runs/llm/blocks]

Two models, each exported once to fp32 and quantized once per block size (symmetric, accuracy
level 4, the bundle's settings otherwise):
- the **demo's trained explainer** (``--explainer``; default: the default bundle's checkpoint),
  on findings prompts from its own lot's corpus (held-out style: as the station renders them).
  Greedy, unconstrained (the model's own words, not grounded decoding's): the share of
  explanations identical to fp32's, teacher-forced next-token agreement with fp32's tokens, and
  the grounding rate (the runtime's rule) of each variant's explanations;
- a **Qwen2-0.5B-shaped** model with random weights (``--shape``), on 8 random prompts of 64
  tokens: next-token agreement is near chance on random weights (flat logits), so the figure that
  carries is the logits' relative error against fp32 (RMS of the difference over RMS of fp32's).

Speed per block size is `benchmarks.llm_speed --engines ort-int4,ort-int4-b64,…` (same run
shape, its own processes). Writes ``blocks.json`` and ``blocks.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from lineguard.export.llm.int4 import Int4Config, quantize_int4
from lineguard.progress import bar
from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.stages.grounding import check
from lineguard.runtime.stages.llm import CausalLM, Sampling

TOKENS = 64


def variants(checkpoint: Path, work: Path, blocks: list[int]) -> tuple[dict[str, Path], dict[str, Any]]:
    """{"fp32": graph, "b32": graph, …} and the decoder's layout, exported once into ``work``."""
    from lineguard.export.llm.export import export_llm

    bundle = work / "fp32.bundle"
    if not (bundle / "manifest.json").is_file():
        export_llm(checkpoint, bundle, ("fp32",))
    b = Bundle.load(bundle, verify=False)
    fp32 = b.variant_path("llm", "fp32")
    out = {"fp32": fp32}
    for k in blocks:
        dst = work / f"int4.b{k}.onnx"
        if not dst.is_file():
            quantize_int4(fp32, dst, Int4Config(block_size=k))
        out[f"b{k}"] = dst
    return out, b.stage("llm")["options"]


def forced(lm: CausalLM, prompt: list[int], ref: list[int]) -> tuple[list[int], np.ndarray]:
    """Teacher-forced on ``ref``: this model's argmax at each step, and its logits [len(ref), vocab]."""
    logits, cache = lm.step(np.asarray([prompt]), len(prompt), lm.empty_cache())
    n, picks, rows = len(prompt), [], []
    for tok in ref:
        picks.append(int(np.argmax(logits)))
        rows.append(np.asarray(logits, np.float64).ravel())
        n += 1
        logits, cache = lm.step(np.asarray([[tok]]), n, cache)
    return picks, np.stack(rows) if rows else np.zeros((0, 1))


def compare(graphs: dict[str, Path], layout: dict[str, Any], prompts: list[list[int]], eos: list[int],
            findings: list[dict[str, Any]] | None, decode: Any = None) -> dict[str, dict[str, Any]]:
    """Each variant against fp32 on ``prompts``: identical greedy outputs, teacher-forced agreement,
    logits' relative error; with ``findings``, the grounding rate of each variant's text."""
    opts = EngineOptions(device="cpu", warmup=0)
    sampling = Sampling(max_new_tokens=TOKENS, stop_ids=tuple(eos))
    ref_lm = CausalLM(graphs["fp32"], layout, opts)
    refs = [ref_lm.generate(p, sampling).ids for p in bar(prompts, desc="fp32", unit="prompt")]
    ref_logits = [forced(ref_lm, p, r)[1] for p, r in zip(prompts, refs)]
    out = {}
    for name, path in graphs.items():
        lm = ref_lm if name == "fp32" else CausalLM(path, layout, opts)
        same = agree = total = 0
        err_num = err_den = 0.0
        grounded = 0
        for i, (p, r) in enumerate(bar(list(zip(prompts, refs)), desc=name, unit="prompt")):
            got = refs[i] if name == "fp32" else lm.generate(p, sampling).ids
            same += got == r
            picks, logits = forced(lm, p, r)
            agree += sum(a == b for a, b in zip(picks, r))
            total += len(r)
            err_num += float(((logits - ref_logits[i]) ** 2).sum())
            err_den += float((ref_logits[i] ** 2).sum())
            if findings is not None:
                grounded += bool(check(decode(got), findings[i])["consistent"])
        out[name] = {"identical_outputs": round(same / len(prompts), 4),
                     "next_token_agreement": round(agree / max(total, 1), 4),
                     "logits_relative_error": round((err_num / max(err_den, 1e-30)) ** 0.5, 5),
                     **({"grounded": round(grounded / len(prompts), 4)} if findings is not None else {}),
                     "file_mb": round(sum(f.stat().st_size for f in path.parent.glob(path.name + "*")) / 2**20, 1)}
    return out


def explainer_prompts(checkpoint: Path, corpus: Path, n: int, seed: int = 0) -> tuple[list[list[int]], list[dict], Any]:
    """``n`` findings prompts from the corpus, rendered as the station renders them (the demo's prompt)."""
    from transformers import AutoTokenizer

    from lineguard.demo.build import EXPLAINER_PROMPT
    from lineguard.runtime.stages.prompting import PromptBuilder
    from lineguard.train.explainer import pairs, read_corpus

    tok = AutoTokenizer.from_pretrained(checkpoint)
    records = read_corpus([corpus])
    rng = np.random.default_rng(seed)
    pick = [records[i] for i in rng.permutation(len(records))[:n]]
    builder = PromptBuilder(EXPLAINER_PROMPT, tok.chat_template, {"eos_token": tok.eos_token})
    ex = pairs(pick, builder, 0, rng)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p, _, _ in ex]
    return ids, [f for _, _, f in ex], lambda t: tok.decode(t, skip_special_tokens=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", default="32,64,128,256")
    ap.add_argument("--explainer", type=Path, help="the trained explainer's checkpoint (default: the demo's; 'none' to leave it out)")
    ap.add_argument("--shape", default="qwen2-0.5b", help="the random real-size model ('' to leave it out)")
    ap.add_argument("--prompts", type=int, default=60, help="explainer prompts")
    ap.add_argument("--work", type=Path, default=Path("runs/llm"))
    ap.add_argument("--out", type=Path, default=Path("runs/llm/blocks"))
    a = ap.parse_args()
    from lineguard.export.llm.checkpoint import open_checkpoint
    from lineguard.export.llm.export import eos_ids

    blocks = [int(b) for b in a.blocks.split(",")]
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "blocks": blocks, "tokens": TOKENS, "models": {}}
    if a.explainer != Path("none"):
        explainer = a.explainer
        if explainer is None:
            from lineguard.demo.build import build_default

            explainer = build_default().parent / "explainer"
        corpus = explainer.parent / "data" / "lot" / "corpus.jsonl"
        graphs, layout = variants(explainer, a.work / "explainer_blocks", blocks)
        prompts, findings, decode = explainer_prompts(explainer, corpus, a.prompts)
        eos = eos_ids(open_checkpoint(explainer))
        report["models"]["explainer"] = {"checkpoint": str(explainer), "prompts": len(prompts),
                                         "rows": compare(graphs, layout, prompts, eos, findings, decode)}
    if a.shape:
        from .llm_speed import build_shape

        model = build_shape(a.shape, a.work / a.shape)
        graphs, layout = variants(model, a.work / f"{a.shape}_blocks", blocks)
        rng = np.random.default_rng(0)
        rand = [[int(x) for x in rng.integers(10, 300, 64)] for _ in range(8)]
        report["models"][a.shape] = {"checkpoint": str(model), "prompts": len(rand),
                                     "rows": compare(graphs, layout, rand, [], None)}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "blocks.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, a.out / "blocks.png")
    for name, m in report["models"].items():
        print(f"\n{name} ({m['prompts']} prompts, {TOKENS} tokens)")
        print("| variant | identical outputs | next-token agreement | logits rel. error | grounded | MB |")
        print("|---|---:|---:|---:|---:|---:|")
        for v, r in m["rows"].items():
            g = f"{100 * r['grounded']:.1f}%" if "grounded" in r else "—"
            print(f"| {v} | {100 * r['identical_outputs']:.1f}% | {100 * r['next_token_agreement']:.1f}% | "
                  f"{r['logits_relative_error']:.4f} | {g} | {r['file_mb']} |")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in ((axes[0], "next_token_agreement", "next-token agreement with fp32"),
                           (axes[1], "logits_relative_error", "logits' relative error vs fp32")):
        for name, m in report["models"].items():
            rows = {k: v for k, v in m["rows"].items() if k != "fp32"}
            ax.plot([int(k[1:]) for k in rows], [r[key] for r in rows.values()], "o-", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("INT4 block size")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
