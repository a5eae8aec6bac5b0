"""``lineguard ddqa build | eval | corpus``: question sets by rules, their evaluation, the explanation corpus."""

from __future__ import annotations

import argparse
import json
import sys

from lineguard.cli.options import engine_args, subcommands, write_report


def register(sub: argparse._SubParsersAction) -> None:
    ds = subcommands(sub, "ddqa", "DDQA question sets: build from labels, evaluate a bundle, explanation corpus",
                     "ACTION")
    b = ds.add_parser("build", help="one JSONL record per question (AD, RDL, DFM, DC), built by rules")
    b.add_argument("--dataset", required=True, help="MVTec-layout category (test/<type>/, ground_truth/<type>/)")
    b.add_argument("--out", required=True, help="JSONL file to write")
    b.add_argument("--seed", type=int, default=0, help="question wording and option order")
    b.add_argument("--product", help="product name in the questions (default: the dataset folder's)")
    b.add_argument("--components", choices=["largest", "all"], default="largest",
                   help="DFM box of the mask's largest component or of the whole mask")
    e = ds.add_parser("eval", help="answer every question through the runtime (and the LLM) and score it")
    e.add_argument("bundle")
    e.add_argument("--ddqa", required=True, help="JSONL from `lineguard ddqa build`")
    e.add_argument("--json", help="write the report here (and a bar chart next to it, .png)")
    e.add_argument("--root", help="dataset root, if it moved since the questions were built")
    engine_args(e)
    e.add_argument("--no-llm", action="store_true", help="score the runtime only, not the LLM's answers")
    e.add_argument("--limit", type=int, help="the first N images only")
    e.add_argument("--sam-mode", choices=["frame", "roi"], default="roi")
    c = ds.add_parser("corpus", help="findings → reference explanation pairs, written by rules from the labels")
    c.add_argument("--dataset", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--product")
    c.add_argument("--bundle", help="render prompts with this bundle's LLM prompt (default: lineguard's)")
    for p in ds.choices.values():
        p.set_defaults(run=run)


def run(a: argparse.Namespace) -> int:
    if a.what == "build":
        from lineguard.ddqa.build import build

        rep = build(a.dataset, a.out, a.seed, a.product, a.components)
        _problems(rep["problems"])
        print(json.dumps({k: v for k, v in rep.items() if k != "problems"} | {"problems": len(rep["problems"])}))
        return 0
    if a.what == "corpus":
        from lineguard.ddqa.corpus import build_corpus

        prompt = None
        if a.bundle:
            from lineguard.runtime.bundle import Bundle
            from lineguard.runtime.stages.prompting import DEFAULT_PROMPT

            b = Bundle.load(a.bundle)
            prompt = {**DEFAULT_PROMPT, **(b.stage("llm").get("prompt", {}) if b.has_stage("llm") else {})}
        rep = build_corpus(a.dataset, a.out, a.seed, a.product, prompt)
        _problems(rep["problems"])
        print(json.dumps({k: v for k, v in rep.items() if k != "problems"} | {"problems": len(rep["problems"])}))
        return 0
    from lineguard.ddqa.evaluate import describe_table, evaluate
    from lineguard.runtime.bundle.engine import EngineOptions

    rep = evaluate(a.bundle, a.ddqa, a.precision, a.root, not a.no_llm, a.limit, a.sam_mode,
                   opts=EngineOptions(device=a.device, threads=a.threads))
    _problems(rep["problems"])
    print(describe_table(rep))
    if a.json:
        from lineguard.ddqa.plot import plot

        write_report(a.json, rep, plot)
    return 0


def _problems(problems: list[str]) -> None:
    for p in problems[:20]:
        sys.stderr.write(f"warning: {p}\n")
    if len(problems) > 20:
        sys.stderr.write(f"warning: ... and {len(problems) - 20} more problems\n")
