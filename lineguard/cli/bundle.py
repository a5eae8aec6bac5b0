"""``lineguard inspect | explain | info``: a bundle's stages on files, its LLM on findings, what it holds."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from lineguard.cli.options import constrain_arg, device_args, engine_args, positive
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.errors import LineguardError


def register(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("inspect", help="inspect image files: score, verdict, hottest region, overlays")
    i.add_argument("bundle")
    i.add_argument("images", nargs="+", help="image files or folders")
    i.add_argument("--out", help="write overlay PNGs here")
    i.add_argument("--json", action="store_true", help="print one JSON array of results to stdout")
    i.add_argument("--top-k", type=positive(int), default=3, help="defect regions per flagged frame")
    i.add_argument("--sam-mode", choices=["roi", "frame"], default="roi",
                   help="SAM encodes a crop around the flagged regions (roi) or the whole frame")
    i.add_argument("--explain", action="store_true", help="explain flagged frames with the bundle's LLM")
    constrain_arg(i)
    engine_args(i)
    i.set_defaults(run=cmd_inspect)

    x = sub.add_parser("explain", help="run the bundle's LLM on findings (inspect --json output) or a prompt")
    x.add_argument("bundle")
    src = x.add_mutually_exclusive_group(required=True)
    src.add_argument("--findings", help="JSON file: one inspect result or a list of them ('-' for stdin)")
    src.add_argument("--prompt", help="free text, sent through the chat template as the user turn")
    x.add_argument("--precision", help="llm variant (default: the smallest the bundle has)")
    x.add_argument("--max-new-tokens", type=positive(int))
    x.add_argument("--temperature", type=float, help="0 = greedy")
    x.add_argument("--top-p", type=float)
    x.add_argument("--seed", type=int)
    x.add_argument("--time-budget", type=positive(float), help="seconds per explanation")
    device_args(x, default="cpu", choices=("auto", "cpu", "cuda"))
    x.add_argument("--json", action="store_true", help="print JSON instead of streaming text")
    constrain_arg(x)
    x.set_defaults(run=cmd_explain)

    n = sub.add_parser("info", help="verify a bundle and print what it holds")
    n.add_argument("bundle")
    n.add_argument("--json", action="store_true", help="print the manifest as JSON")
    n.set_defaults(run=cmd_info)


def cmd_inspect(a: argparse.Namespace) -> int:
    from lineguard.runtime.bundle import Bundle
    from lineguard.runtime.clients.inspect import format_table, inspect_files

    bundle = Bundle.load(a.bundle)
    if a.explain and not bundle.has_stage("llm"):
        raise LineguardError(f"--explain: {bundle.root} has no llm stage (lineguard export llm adds one)")
    opts = EngineOptions(device=a.device, threads=a.threads)
    results = inspect_files(bundle, a.images, a.out, a.precision, opts, top_k=a.top_k, sam_mode=a.sam_mode,
                            explain=a.explain, constrain=a.constrain)
    if a.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(results))
    return 1 if any("error" in r for r in results) else 0


def cmd_explain(a: argparse.Namespace) -> int:
    from lineguard.runtime.bundle import Bundle
    from lineguard.runtime.stages.explain import Explainer

    ex = Explainer(Bundle.load(a.bundle), a.precision, EngineOptions(device=a.device, threads=a.threads),
                   constrain=a.constrain)
    over = {k: v for k, v in (("max_new_tokens", a.max_new_tokens), ("temperature", a.temperature),
                              ("top_p", a.top_p), ("seed", a.seed), ("time_budget_s", a.time_budget)) if v is not None}
    try:
        s = dataclasses.replace(ex.sampling, **over)
        s.validate()
    except ValueError as e:
        raise LineguardError(str(e)) from None
    if a.prompt is not None:
        ids = ex.tokenizer.encode(ex.prompts.render([{"role": "user", "content": a.prompt}]),
                                  add_special_tokens=False).ids
        gen = ex.lm.generate(ids, s)
        print(ex.tokenizer.decode(gen.ids).strip())
        print(f"[{gen.prompt_tokens} prompt tokens at {gen.prefill_tok_s:.1f} tok/s, {len(gen.ids)} new at "
              f"{gen.decode_tok_s:.1f} tok/s, stop: {gen.stop}]", file=sys.stderr)
        return 0
    try:
        raw = sys.stdin.read() if a.findings == "-" else Path(a.findings).read_text(encoding="utf-8")
        items = json.loads(raw)
    except (OSError, json.JSONDecodeError) as e:
        raise LineguardError(f"--findings {a.findings}: {e}") from None
    items = items if isinstance(items, list) else [items]
    out = []
    for r in items:
        if not isinstance(r, dict) or "verdict" not in r:
            raise LineguardError(f"--findings {a.findings}: each item must be an inspect result with a verdict")
        if not a.json:
            print(f"{r.get('path', 'frame')}: ", end="", flush=True)
        e = ex.explain(r, None if a.json else (lambda t: print(t, end="", flush=True)), **over)
        if not a.json:
            if e["source"] == "rules":  # the model's text (streamed above) owed something: the rules' instead
                print(f"\n  [the model did not say the position and type within its budget; published instead: "
                      f"{e['text']}]", end="")
            print("" if e["consistent"] else f"\n  [inconsistent with the findings: {e['reason']}]")
        out.append(e)
    if a.json:
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from lineguard.runtime.bundle import Bundle

    b = Bundle.load(a.bundle)
    if a.json:
        json.dump(b.manifest, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"bundle   {b.root}  (format v{b.manifest['format_version']}, product {b.product!r}, files verified)")
    for name, st in b.manifest["stages"].items():
        spec = st.get("input_spec", {})
        size = f"{spec.get('height')}x{spec.get('width')} {spec.get('color')}" if spec else ""
        size += f", fixed batch {spec['batch']}" if spec.get("batch") else ""
        print(f"stage    {name}: {st['kind']} {size}  variants: {', '.join(st['variants'])}")
        for prec, v in st["variants"].items():
            par = v.get("parity", {})
            if "image_auroc_drop_points" in par:
                print(f"         {prec}: image AUROC {par['image_auroc']:.4f} ({-par['image_auroc_drop_points']:+.2f} "
                      f"points vs fp32), map Pearson {par['map_pearson']:.4f}, {par.get('speedup')}x fp32 frames/s")
            elif "map_pearson" in par:
                err = (f"max |err| {par['map_max_abs_err']:.3g}" if "map_max_abs_err" in par
                       else f"max |err| {par['map_max_abs_err_rel']:.3g} of the map's range")
                print(f"         {prec}: map Pearson {par['map_pearson']:.6f}, {err}")
            elif "teacher_forced_agreement" in par:
                print(f"         {prec}: {par['identical_sequences']}/{par['prompts']} greedy sequences identical to "
                      f"transformers, next-token agreement {par['teacher_forced_agreement']:.3f}")
            elif "trt_options" in v:
                print(f"         {prec}: TensorRT EP options {v['trt_options']}")
        for prec, r in st.get("rejected", {}).items():
            print(f"         {prec}: rejected by the gate ({r['reason']})")
        for w in st.get("warnings", []):
            print(f"warning  {w}")
    cal = b.manifest.get("calibration", {})
    how = f" (rule {cal['rule']}" + (f": {cal['image_from']}" if "image_from" in cal else "") + ")" if cal else ""
    print(f"thresholds    {b.thresholds or 'none (not calibrated)'}{how}")
    return 0
