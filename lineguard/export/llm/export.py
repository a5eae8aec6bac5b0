"""`lineguard export llm`: a local causal-LM checkpoint into a bundle's ``llm`` stage.

The fp32 graph is traced once (``graph.DecoderStep``) and checked token for token against
transformers' greedy ``generate`` on the same checkpoint; the INT4 and FP16 variants are
made from it and their agreement with the reference is measured and recorded.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lineguard.export.llm.checkpoint import Checkpoint, open_checkpoint
from lineguard.export.llm.fused import Unsupported, build_fused
from lineguard.export.llm.graph import DecoderStep
from lineguard.export.llm.int4 import Int4Config, quantize_int4, save_model
from lineguard.export.llm.nf4 import measure_nf4, nf4_available
from lineguard.export.versions import library_versions
from lineguard.runtime.bundle import BundleWriter, existing
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.errors import LineguardError
from lineguard.runtime.stages.llm import CausalLM, Sampling
from lineguard.runtime.stages.prompting import DEFAULT_PROMPT

log = logging.getLogger("lineguard.export")
OPSET = 17
LLM_PRECISIONS = ("fp32", "fp16", "int4")
GRAPHS = ("auto", "fused", "traced")
PARITY_TOKENS = 32
PARITY_PROMPTS = (
    "Inspection result: one defect in the top-left cell.",
    "The part is normal.",
    "Explain the defect: a scratch near the center covering 2% of the surface.",
)


def load_model(ck: Checkpoint) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(ck.root, dtype=torch.float32, attn_implementation="eager")
    except (OSError, ValueError, RuntimeError) as e:
        raise LineguardError(f"{ck.root}: transformers cannot load it ({str(e).splitlines()[0]})") from None
    return model.eval()


def layout(ck: Checkpoint) -> dict[str, Any]:
    return {"family": ck.model_type, "n_layers": ck.n_layers, "kv_heads": ck.kv_heads, "head_dim": ck.head_dim,
            "vocab_size": int(ck.config["vocab_size"]), "kv_dtype": "float32",
            "max_position_embeddings": ck.config.get("max_position_embeddings")}


def sliding_window(ck: Checkpoint) -> int | None:
    """The window to mask with when every layer uses it (Mistral); None when no layer does."""
    cfg = ck.config
    w = cfg.get("sliding_window")
    if not w or (ck.model_type == "qwen2" and not cfg.get("use_sliding_window", False)):
        return None
    types = cfg.get("layer_types")
    if types and set(types) != {"sliding_attention"}:
        raise LineguardError(f"{ck.root}/config.json: mixed sliding/full attention layers are not supported")
    return int(w)


def trace_graph(model: torch.nn.Module, ck: Checkpoint, path: Path) -> dict[str, Any]:
    """Trace the decoder step to ``path`` (fp32, opset 17, external data past 1.5 GB)."""
    import onnx

    step = DecoderStep(model, sliding_window(ck))
    L, kvh, hd = ck.n_layers, ck.kv_heads, ck.head_dim
    past_len, seq = 2, 3  # non-trivial sizes, so no dimension is traced as a constant 1
    ids = torch.randint(0, int(ck.config["vocab_size"]), (1, seq))
    mask = torch.ones(1, past_len + seq, dtype=torch.int64)
    pos = torch.arange(past_len, past_len + seq)[None]
    past = [torch.randn(1, kvh, past_len, hd) for _ in range(2 * L)]
    past_names = [f"past.{i}.{k}" for i in range(L) for k in ("key", "value")]
    present = [f"present.{i}.{k}" for i in range(L) for k in ("key", "value")]
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
           "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
    dyn |= {n: {0: "batch", 2: "past"} for n in past_names} | {n: {0: "batch", 2: "total"} for n in present}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # the tracer may scatter weight files
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings on python ints from shapes
            torch.onnx.export(step, (ids, mask, pos, *past), str(raw), dynamo=False, opset_version=OPSET,
                              input_names=["input_ids", "attention_mask", "position_ids", *past_names],
                              output_names=["logits", *present], dynamic_axes=dyn, do_constant_folding=True)
        graph = onnx.load(str(raw))
        files = save_model(graph, path)
    onnx.checker.check_model(str(path))
    return {"graph": "traced", "exporter": f"torch.onnx TorchScript exporter (dynamo=False), opset {OPSET}",
            "torch": torch.__version__, "files": [f.name for f in files], "sliding_window": sliding_window(ck)}


def fp32_graph(model: torch.nn.Module, ck: Checkpoint, path: Path, graph: str, prompts: list[list[int]],
               refs: list[list[int]], eos: list[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fp32 reference graph and its parity. ``auto``: the fused graph where it is built and
    matches generate token for token, else the traced one (the reason is recorded)."""
    opts = EngineOptions(device="cpu", warmup=0)
    note = None
    if graph in ("auto", "fused"):
        try:
            prov = build_fused(model, ck, path, sliding_window(ck))
            parity = agreement(CausalLM(path, layout(ck), opts), prompts, refs, eos)
            if parity["identical_sequences"] == len(prompts) or graph == "fused":
                return prov, parity
            note = f"fused graph differed from generate (matching prefixes {parity['matching_prefix']}); traced instead"
        except Unsupported as e:
            if graph == "fused":
                raise LineguardError(f"--graph fused: {ck.root} needs the traced graph ({e})") from None
            note = f"fused graph not built ({e}); traced instead"
        log.warning("%s", note)
    prov = trace_graph(model, ck, path) | ({"note": note} if note else {})
    return prov, agreement(CausalLM(path, layout(ck), opts), prompts, refs, eos)


def reference_tokens(model: torch.nn.Module, prompts: list[list[int]], eos: list[int], pad: int | None,
                     n: int = PARITY_TOKENS) -> list[list[int]]:
    """transformers' greedy generate on each prompt: the tokens after the prompt, eos excluded."""
    from transformers import GenerationConfig

    gc = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=n, eos_token_id=eos or None,
                          pad_token_id=pad if pad is not None else (eos[0] if eos else 0),
                          bos_token_id=model.generation_config.bos_token_id)
    out = []
    with torch.no_grad():
        for ids in prompts:
            t = torch.tensor([ids])
            gen = model.generate(t, attention_mask=torch.ones_like(t), generation_config=gc)[0, len(ids):].tolist()
            out.append([x for x in gen if x not in eos][: n])  # eos ends the sequence; generate pads after it
    return out


def agreement(lm: CausalLM, prompts: list[list[int]], refs: list[list[int]], eos: list[int]) -> dict[str, Any]:
    """Free-run greedy match and teacher-forced next-token agreement against the reference tokens
    (and its stop: a trained model may answer a short prompt with its end token at once)."""
    exact, prefix, forced, total = 0, [], 0, 0  # prefix: tokens equal from the start (the length if identical)
    for ids, ref in zip(prompts, refs):
        got = lm.generate(ids, Sampling(max_new_tokens=PARITY_TOKENS, stop_ids=tuple(eos))).ids
        exact += got == ref
        prefix.append(next((i for i, (a, b) in enumerate(zip(got, ref)) if a != b), min(len(got), len(ref))))
        logits, cache = lm.step(np.asarray([ids]), len(ids), lm.empty_cache())
        n = len(ids)
        for tok in ref:  # feed the reference, count where this model would have said the same
            forced += int(np.argmax(logits)) == tok
            total += 1
            n += 1
            logits, cache = lm.step(np.asarray([[tok]]), n, cache)
        if eos and len(ref) < PARITY_TOKENS:  # the reference stopped here: so should this model
            forced += int(np.argmax(logits)) in eos
            total += 1
    return {"reference": "transformers generate (greedy), same checkpoint", "prompts": len(prompts),
            "tokens": PARITY_TOKENS, "identical_sequences": exact, "matching_prefix": prefix,
            "teacher_forced_agreement": round(forced / max(total, 1), 4)}


def parity_prompts(ck: Checkpoint) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ck.root / "tokenizer.json"))
    return [tok.encode(p, add_special_tokens=True).ids for p in PARITY_PROMPTS]


def eos_ids(ck: Checkpoint) -> list[int]:
    ids: Any = None
    gen = ck.root / "generation_config.json"
    if gen.is_file():
        ids = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
    if ids is None:
        ids = ck.config.get("eos_token_id")
    return [] if ids is None else ([int(ids)] if isinstance(ids, int) else [int(i) for i in ids])


def copy_tokenizer(ck: Checkpoint, w: BundleWriter) -> dict[str, str]:
    """tokenizer.json, the chat template, generation and model configs."""
    out = {}
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                 "config.json"):
        if (ck.root / name).is_file():
            shutil.copyfile(ck.root / name, w.path(f"llm/{name}"))
            out[name] = w.add_file(f"llm/{name}", f"llm {name}")
    template = ck.chat_template()
    if template:
        w.path("llm/chat_template.jinja").write_text(template, encoding="utf-8")
        out["chat_template"] = w.add_file("llm/chat_template.jinja", "llm chat template")
    return out


def export_llm(model_dir: str | Path, bundle: str | Path, precisions: tuple[str, ...] = ("int4",),
               int4: Int4Config | None = None, product: str | None = None,
               graph: str = "auto", nf4: bool = False) -> tuple[Path, dict[str, Any]]:
    """Add (or replace) the ``llm`` stage of ``bundle`` (created if it does not exist)."""
    bad = [p for p in precisions if p not in LLM_PRECISIONS]
    if bad or not precisions:
        raise LineguardError(f"--precision {','.join(precisions)}: choose from {', '.join(LLM_PRECISIONS)}")
    if graph not in GRAPHS:
        raise LineguardError(f"--graph {graph}: choose from {', '.join(GRAPHS)}")
    ck = open_checkpoint(model_dir)
    if nf4:
        nf4_available()  # refuse before any work when NF4 cannot run here
    target = Path(bundle)
    base = existing(target)
    model = load_model(ck)
    prompts, eos = parity_prompts(ck), eos_ids(ck)
    refs = reference_tokens(model, prompts, eos, ck.config.get("pad_token_id"))
    opts = EngineOptions(device="cpu", warmup=0)
    report: dict[str, Any] = {}
    with BundleWriter(target, base=base, product=product or (base.product if base else "part")) as w, \
            tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        for rel in [f for f in w.manifest["files"] if f.startswith("llm/")]:
            w.remove_file(rel)
        fp32 = Path(scratch) / "model.fp32.onnx"
        t0 = time.perf_counter()
        prov, ref_parity = fp32_graph(model, ck, fp32, graph, prompts, refs, eos)
        del model  # the fp32 torch weights are no longer needed; large models need the memory
        prov |= {"seconds": round(time.perf_counter() - t0, 1), "checkpoint": str(ck.root)}
        lay = layout(ck) | {"max_context": int(prov.get("rotary_positions") or ck.config.get("max_position_embeddings"))}
        report["fp32"] = ref_parity
        if ref_parity["identical_sequences"] != len(prompts):
            raise LineguardError(f"exported fp32 graph disagrees with transformers' generate: {ref_parity}")
        variants: dict[str, Any] = {}
        for prec in precisions:
            rel = f"llm/model.{prec}.onnx"
            dst = w.path(rel)
            if prec == "fp32":
                files = [fp32, fp32.with_name(fp32.name + ".data")]
                for f in files:
                    if f.exists():
                        shutil.copyfile(f, dst.with_name(dst.name + f.name[len(fp32.name):]))
                extra = dict(prov)
            elif prec == "int4":
                extra = {"int4": quantize_int4(fp32, dst, int4 or Int4Config())}
            else:
                extra = {"fp16": fp16_variant(fp32, dst)}
            parity = ref_parity if prec == "fp32" else agreement(CausalLM(dst, lay, opts), prompts, refs, eos)
            report[prec] = parity
            data = dst.with_name(dst.name + ".data")
            if data.exists():
                w.add_file(rel + ".data", f"llm {prec} weights")
            variants[prec] = {"file": w.add_file(rel, f"llm decoder {prec}"), "parity": parity,
                              "provenance": prov | extra, **({"data": rel + ".data"} if data.exists() else {})}
        lm = CausalLM(w.tmp / variants[precisions[0]]["file"], lay, opts)
        nf4_report = measure_nf4(ck, prompts, refs, eos, PARITY_TOKENS) if nf4 else None
        if nf4_report:
            report["nf4"] = nf4_report
        w.manifest["stages"]["llm"] = {
            "kind": "causal_lm",
            "inputs": lm.engine.io_specs("inputs"),
            "outputs": lm.engine.io_specs("outputs"),
            "options": lay | {"eos_token_ids": eos, "bos_token_id": ck.config.get("bos_token_id"),
                              "files": copy_tokenizer(ck, w)},
            "variants": variants,
            # in the manifest, not a hashed file: a station rewords it by hand, like thresholds
            "prompt": copy.deepcopy(DEFAULT_PROMPT),
            **({"nf4": nf4_report} if nf4_report else {}),
        }
        w.manifest.setdefault("provenance", {})["libraries"] = library_versions()
    return target, report


def fp16_variant(src: Path, dst: Path) -> dict[str, Any]:
    """FP16 weights and activations for GPU stations; inputs, outputs and the cache stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    save_model(half, dst)
    return {"format": "fp16", "io": "float32"}
