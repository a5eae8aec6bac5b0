"""LLM tokens/s on export llm's parity prompts: the bundle's ORT INT4 decoder on the serving device vs
bitsandbytes NF4."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .providers import Provider, check_provider, engine_options
from .steps import Skip

LLM_NEW_TOKENS = 32  # as export llm's parity (and measure_nf4) generates


def llm_prompts(model_dir: Path) -> tuple[Any, list[list[int]], list[int]]:
    from lineguard.export.llm.checkpoint import open_checkpoint
    from lineguard.export.llm.export import eos_ids, parity_prompts

    ck = open_checkpoint(model_dir)
    return ck, parity_prompts(ck), eos_ids(ck)


def ort_int4_tokens(bundle_dir: Path, model_dir: Path, p: Provider, new_tokens: int) -> dict[str, Any]:
    """Tokens/s of the bundle's INT4 decoder on export llm's parity prompts (what measure_nf4 times)."""
    from lineguard.runtime.bundle import Bundle
    from lineguard.runtime.stages.llm import CausalLM, Sampling

    _, prompts, eos = llm_prompts(model_dir)
    bundle = Bundle.load(bundle_dir, verify=False)
    lm = CausalLM(bundle.variant_path("llm", "int4"), bundle.stage("llm")["options"], engine_options(p, bundle_dir))
    check_provider(lm.engine, p)
    lm.generate(prompts[0], Sampling(max_new_tokens=2))  # warm-up, as measure_nf4 does
    tokens, seconds, decode = 0, 0.0, []
    for ids in prompts:
        g = lm.generate(ids, Sampling(max_new_tokens=new_tokens, stop_ids=tuple(eos)))
        tokens += len(g.ids)
        seconds += g.prefill_s + g.decode_s
        decode.append(g.decode_tok_s)
    return {"engine": f"ORT INT4 ({lm.engine.provider})", "tok_s": round(tokens / seconds, 1),
            "decode_tok_s": round(sum(decode) / len(decode), 1), "tokens": tokens, "prompts": len(prompts)}


def nf4_tokens(model_dir: Path, new_tokens: int, dry: bool) -> dict[str, Any]:
    """bitsandbytes NF4 (lineguard.export.llm.nf4) on the same prompts; its agreement with fp32 comes along."""
    from lineguard.runtime.errors import LineguardError

    if dry:
        raise Skip("dry run: no GPU (bitsandbytes NF4 needs CUDA)")
    from lineguard.export.llm.nf4 import measure_nf4, nf4_available

    try:
        nf4_available()
    except LineguardError as e:
        raise Skip(str(e)) from None
    import torch

    from lineguard.export.llm.export import load_model, reference_tokens

    ck, prompts, eos = llm_prompts(model_dir)
    refs = reference_tokens(load_model(ck), prompts, eos, ck.config.get("pad_token_id"), new_tokens)
    torch.cuda.reset_peak_memory_stats()  # its figure is the peak since: not the native engines' buffers before it
    r = measure_nf4(ck, prompts, refs, eos, new_tokens)
    return {"engine": "bitsandbytes NF4 (transformers generate, CUDA)", "tok_s": r["tok_s"], "decode_tok_s": None,
            "teacher_forced_agreement": r["teacher_forced_agreement"], "gpu_memory_mb": r["gpu_memory_mb"]}
