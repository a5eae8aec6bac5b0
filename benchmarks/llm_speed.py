"""LLM prompt and generation tokens/s, llama-bench style: torch fp32, ORT fp32, ORT INT4 in one run.

    python -m benchmarks.llm_speed [--shape qwen2-0.5b|tiny] [--model DIR] [--pp 128] [--tg 64]
                                   [--threads 2] [--repeats 3] [--rounds 3] [--work runs/llm]
                                   [--out runs/llm/bench]

``--shape qwen2-0.5b`` builds a Qwen2-0.5B-shaped model from its config with random weights
(the weights do not change the cost) and a small trained tokenizer; ``--model`` takes a real
checkpoint folder instead. Each engine runs in its own subprocess, so peak memory is its own,
once per round, the order rotated each round; figures are medians over the rounds. Generated tokens/s
is also set against this machine's memory-bandwidth limit: the bytes of weights one decode step
reads, divided into the copy bandwidth (same thread count) measured at the start of the round.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

SHAPES = {
    "qwen2-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                       rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "tiny": dict(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True),
}


def build_shape(shape: str, out: Path) -> Path:
    """A random-weight Qwen2 of ``shape`` with a trained tokenizer, saved once (seeded)."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config

    from lineguard.export.llm.tiny import train_tokenizer, wrap_tokenizer

    tok = wrap_tokenizer(train_tokenizer(384))
    cfg = Qwen2Config(**SHAPES[shape], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id).save_pretrained(out)
    return out


def copy_bandwidth(threads: int, mib: int = 1024, repeats: int = 5) -> float:
    """Bytes/s moved by a large array copy (read + write), split over ``threads``."""
    a = np.ones(mib << 18, np.float32)
    b = np.empty_like(a)
    parts = np.array_split(np.arange(a.size), threads)
    bounds = [(p[0], p[-1] + 1) for p in parts]

    def cp(lo_hi: tuple[int, int]) -> None:
        np.copyto(b[lo_hi[0]:lo_hi[1]], a[lo_hi[0]:lo_hi[1]])

    times = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            list(pool.map(cp, bounds))
            times.append(time.perf_counter() - t0)
    return 2 * a.nbytes / statistics.median(times[1:])


def weight_bytes_per_token(onnx_path: Path) -> int:
    """Bytes of initializers one decode step reads: all of them, but one row of a gathered table."""
    import onnx

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    gathered = {n.input[0] for n in g.node if n.op_type == "Gather"}
    other = {i for n in g.node if n.op_type != "Gather" for i in n.input}
    total = 0
    for t in g.initializer:
        n = int(np.prod(t.dims)) if t.dims else 1
        size = n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        if t.name in gathered and t.name not in other and t.dims:
            size //= t.dims[0]
        total += size
    return total


def traced_bundle(bundle: Path) -> Path:
    """The same checkpoint exported with ``--graph traced`` (INT4 only), beside the bundle."""
    return bundle.with_name(bundle.name.replace(".bundle", ".traced.bundle"))


def block_variant(bundle: Path, engine: str) -> Path:
    """``ort-int4-b64``: the bundle's fp32 graph quantized with another block size, beside the bundle."""
    return bundle.parent / f"{bundle.name}.int4.{engine.rsplit('-', 1)[1]}.onnx"


def _prompt(n: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(0).integers(10, 300, n)]


def run_one(engine: str, model: Path, bundle: Path, pp: int, tg: int, threads: int, repeats: int) -> dict[str, Any]:
    """Measure one engine in this process: median prompt and generation tokens/s, peak RSS."""
    ids = _prompt(pp)
    pre, gen = [], []
    t_load = time.perf_counter()
    if engine == "torch":
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        load = time.perf_counter() - t_load
        x = torch.tensor([ids])
        kw = dict(attention_mask=torch.ones_like(x), do_sample=False, pad_token_id=0, eos_token_id=None)
        with torch.no_grad():
            m.generate(x, max_new_tokens=4, min_new_tokens=4, **kw)  # warm-up
            for _ in range(repeats):
                t0 = time.perf_counter()
                m.generate(x, max_new_tokens=1, **kw)
                t1 = time.perf_counter()
                m.generate(x, max_new_tokens=tg, min_new_tokens=tg, **kw)
                t2 = time.perf_counter()
                pre.append(pp / (t1 - t0))
                gen.append((tg - 1) / ((t2 - t1) - (t1 - t0)))
        provider = f"torch {torch.__version__} eager, {threads} threads"
    elif engine == "genai-int4":
        import onnxruntime_genai as og

        cfg = og.Config(str(model))
        cfg.clear_providers()
        m = og.Model(cfg)
        load = time.perf_counter() - t_load

        def once(n: int) -> tuple[float, float]:
            params = og.GeneratorParams(m)
            params.set_search_options(max_length=pp + n, min_length=pp + n, do_sample=False)
            g = og.Generator(m, params)
            t0 = time.perf_counter()
            g.append_tokens(ids)
            g.generate_next_token()  # the first token comes from the prefill, as in CausalLM.generate
            t2 = time.perf_counter()
            k = 0
            while not g.is_done():
                g.generate_next_token()
                k += 1
            return pp / (t2 - t0), k / (time.perf_counter() - t2)

        once(4)
        for _ in range(repeats):
            a, b = once(tg)
            pre.append(a)
            gen.append(b)
        provider = f"onnxruntime-genai {og.__version__}, its own int4 build, {threads} threads (genai_config)"
    else:
        from lineguard.runtime.bundle import Bundle
        from lineguard.runtime.bundle.engine import EngineOptions
        from lineguard.runtime.stages.llm import CausalLM, Sampling

        b = Bundle.load(bundle, verify=False)
        prec = engine.split("-")[1]
        if engine == "ort-int4-traced":
            b = Bundle.load(traced_bundle(bundle), verify=False)
        path = b.variant_path("llm", prec) if engine.count("-") == 1 or engine.endswith("traced") \
            else block_variant(bundle, engine)
        lm = CausalLM(path, b.stage("llm")["options"],
                      EngineOptions(device="cpu", threads=threads, spinning=True))
        load = time.perf_counter() - t_load
        lm.generate(ids, Sampling(max_new_tokens=4))
        for _ in range(repeats):
            g = lm.generate(ids, Sampling(max_new_tokens=tg))
            pre.append(g.prefill_tok_s)
            gen.append(g.decode_tok_s)
        provider = f"{lm.engine.provider}, {threads} threads, spinning on"
    return {"engine": engine, "pp_tok_s": statistics.median(pre), "tg_tok_s": statistics.median(gen),
            "pp_all": pre, "tg_all": gen, "load_s": round(load, 2), "provider": provider,
            "peak_rss_mb": peak_rss_mb()}


def graph_file(engine: str, a: argparse.Namespace, b: Any, bundle: Path) -> Path:
    """The ONNX file ``engine`` runs (for its bytes per token)."""
    if engine == "genai-int4":
        return a.genai / "model.onnx"
    if engine == "ort-int4-traced":
        from lineguard.runtime.bundle import Bundle

        return Bundle.load(traced_bundle(bundle), verify=False).variant_path("llm", "int4")
    prec = "fp32" if engine in ("torch", "ort-fp32") else "int4"
    return b.variant_path("llm", prec) if engine.count("-") < 2 else block_variant(bundle, engine)


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM starts fresh at exec; ru_maxrss may carry the parent's)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    names = [r["engine"] for r in rows]
    for ax, key, label in zip(axes, ("pp_tok_s", "tg_tok_s"), ("prompt tokens/s", "generated tokens/s")):
        vals = [r[key] for r in rows]
        ax.barh(names, vals, color=(["#888", "#4a7"] + ["#27c"] * len(rows))[: len(rows)])
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.1f}", va="center")
        ax.set_xlabel(label)
        ax.set_xlim(0, max(vals) * 1.25)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2-0.5b")
    ap.add_argument("--model", type=Path, help="a real checkpoint folder instead of --shape")
    ap.add_argument("--pp", type=int, default=128, help="prompt tokens")
    ap.add_argument("--tg", type=int, default=64, help="generated tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="generations per engine per round (median)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of all engines, alternating (median of rounds)")
    ap.add_argument("--engines", default="torch,ort-fp32,ort-int4,ort-int4-b64,ort-int4-b128",
                    help="ort-int4 is the bundle's (its default block: 128 for this shape; fused graph); ort-int4-bN re-quantizes with block N; "
                         "ort-int4-traced exports the traced graph; genai-int4 runs --genai's build")
    ap.add_argument("--work", type=Path, default=Path("runs/llm"))
    ap.add_argument("--out", type=Path, default=Path("runs/llm/bench"))
    ap.add_argument("--genai", type=Path, help="onnxruntime-genai model folder for the genai-int4 engine")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one, a.model, a.bundle, a.pp, a.tg, a.threads, a.repeats)))
        return

    from lineguard.export.llm.export import export_llm

    from .expert_speed import machine

    name = a.model.name if a.model else a.shape
    model = a.model or build_shape(a.shape, a.work / name)
    bundle = a.work / f"{name}.bundle"
    if not (bundle / "manifest.json").is_file():
        print(f"exporting {model} → {bundle} (fp32 + int4)", file=sys.stderr)
        _, parity = export_llm(model, bundle, ("fp32", "int4"))
    from lineguard.runtime.bundle import Bundle

    b = Bundle.load(bundle, verify=False)
    parity = {p: v["parity"] for p, v in b.stage("llm")["variants"].items()}
    for engine in [e for e in a.engines.split(",") if e.startswith("ort-int4-b")]:
        dst = block_variant(bundle, engine)
        if not dst.is_file():
            from lineguard.export.llm.int4 import Int4Config, quantize_int4

            quantize_int4(b.variant_path("llm", "fp32"), dst, Int4Config(block_size=int(engine.rsplit("-b", 1)[1])))
    if "ort-int4-traced" in a.engines.split(",") and not (traced_bundle(bundle) / "manifest.json").is_file():
        print(f"exporting {model} → {traced_bundle(bundle)} (traced graph, int4)", file=sys.stderr)
        export_llm(model, traced_bundle(bundle), ("int4",), graph="traced")
    if "genai-int4" in a.engines.split(",") and not a.genai:
        raise SystemExit("genai-int4 needs --genai DIR (a folder built by onnxruntime_genai.models.builder)")
    engines = a.engines.split(",")
    graph_bytes = {e: weight_bytes_per_token(graph_file(e, a, b, bundle)) for e in engines}
    # rounds: every engine once a round, the copy bandwidth measured at the start of each; this
    # VM's speed drifts by up to 2× within an hour, so engines are compared round by round
    runs: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    bws: list[dict[int, float]] = []
    for rnd in range(a.rounds):
        bw = {t: copy_bandwidth(t) for t in sorted({1, a.threads})}
        bws.append(bw)
        for engine in engines[rnd % len(engines):] + engines[:rnd % len(engines)]:  # measured: the later
            # engine of a pair ran up to 10 % faster whichever it was; rotating spreads that over all
            print(f"round {rnd + 1}/{a.rounds}: measuring {engine} …", file=sys.stderr)
            src = a.genai if engine == "genai-int4" else model
            r = subprocess.run([sys.executable, "-m", "benchmarks.llm_speed", "--one", engine, "--model", str(src),
                                "--bundle", str(bundle), "--pp", str(a.pp), "--tg", str(a.tg), "--threads",
                                str(a.threads), "--repeats", str(a.repeats)], capture_output=True, text=True, check=True)
            row = json.loads(r.stdout.strip().splitlines()[-1])
            row["share_of_bandwidth_limit"] = row["tg_tok_s"] * graph_bytes[engine] / bw[a.threads]
            runs[engine].append(row)
    bw = {t: statistics.median(x[t] for x in bws) for t in bws[0]}
    rows = []
    for engine in engines:
        rs = runs[engine]
        row = rs[0] | {k: statistics.median(x[k] for x in rs) for k in ("pp_tok_s", "tg_tok_s")}
        row |= {k: [v for x in rs for v in x[k]] for k in ("pp_all", "tg_all")}  # every round's, not the first's
        row |= {"tg_by_round": [round(x["tg_tok_s"], 1) for x in rs], "peak_rss_mb": max(x["peak_rss_mb"] for x in rs),
                "weight_mb_per_token": round(graph_bytes[engine] / 1e6, 3),
                "bandwidth_limit_tok_s": round(bw[a.threads] / graph_bytes[engine], 1),
                "share_of_bandwidth_limit": round(statistics.median(x["share_of_bandwidth_limit"] for x in rs), 3),
                "share_by_round": [round(x["share_of_bandwidth_limit"], 3) for x in rs]}
        rows.append(row)
    by = {r["engine"]: r for r in rows}
    ratios = {}
    for e in [e for e in by if "int4" in e and "ort-fp32" in by]:
        ratios[f"{e.replace('ort-', '').replace('-', '_')}_vs_ort_fp32_tg"] = round(by[e]["tg_tok_s"] / by["ort-fp32"]["tg_tok_s"], 2)
    if "ort-int4" in by and "torch" in by:
        ratios["int4_vs_torch_tg"] = round(by["ort-int4"]["tg_tok_s"] / by["torch"]["tg_tok_s"], 2)
    if "ort-fp32" in by and "torch" in by:
        ratios["ort_fp32_vs_torch_tg"] = round(by["ort-fp32"]["tg_tok_s"] / by["torch"]["tg_tok_s"], 2)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "model": str(model), "pp": a.pp, "tg": a.tg,
              "threads": a.threads, "rounds": a.rounds,
              "copy_bandwidth_gb_s": {str(t): round(v / 1e9, 1) for t, v in bw.items()},
              "copy_bandwidth_gb_s_by_round": [round(x[a.threads] / 1e9, 1) for x in bws],
              "rows": rows, "ratios": ratios, "parity": parity,
              "graph": b.stage("llm")["variants"]["int4"]["provenance"].get("graph")}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    js, png = a.out.with_name(a.out.name + ".json"), a.out.with_name(a.out.name + ".png")
    js.write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, png, f"{name}: pp{a.pp} / tg{a.tg}, {a.threads} threads ({report['date']})")
    print(f"| engine | pp{a.pp} tok/s | tg{a.tg} tok/s | peak RSS MB | weights MB/token | % of bandwidth limit |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['pp_tok_s']:.1f} | {r['tg_tok_s']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{r['weight_mb_per_token']:.4g} | {100 * r['share_of_bandwidth_limit']:.0f}% |")
    print(f"ratios: {ratios}; copy bandwidth {report['copy_bandwidth_gb_s']} GB/s by threads")
    print(f"wrote {js} and {png}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
