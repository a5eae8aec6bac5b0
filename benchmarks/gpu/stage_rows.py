"""Each stage measured on one provider: the expert (batch 1 and 8), SAM's encoder and decoder, the LLM's
prefill and decode; a row each, with where its nodes ran."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .native_trt import native_engine
from .placement import on_cpu, placement
from .providers import Provider, check_provider, engine_options
from .steps import Skip


def expert_row(bundle_dir: Path, frames: list[Any], p: Provider, repeats: int) -> dict[str, Any]:
    """Throughput at batch 8 first, then batch-1 latency: TensorRT builds for the range it has seen, so
    both are timed on the engine a station ends up with."""
    from lineguard.runtime.bundle import Bundle
    from lineguard.runtime.stages.expert import Expert

    from ..stages import median_ms

    bundle = Bundle.load(bundle_dir, verify=False)
    table = bundle.stage("expert")["variants"].get("trt")
    if p.int8 and not table:
        raise Skip("the bundle has no TensorRT calibration table (lineguard quantize --precision trt)")
    t0 = time.perf_counter()
    if p.native:
        cache = bundle_dir / "engines" / p.key
        src = bundle_dir / table["trt_options"]["cache_dir"] / "calibration.json" if p.int8 else None
        ex = Expert(bundle, "fp32", engine=native_engine(bundle.variant_path("expert", "fp32"), p, cache, 8, table=src))
    elif p.int8:  # the bundle's own "trt" variant: the table, fp16 beside it, its own engine cache
        ex = Expert(bundle, "trt", replace(engine_options(p, bundle_dir), trt_cache_dir=None))
    else:
        ex = Expert(bundle, "fp32", engine_options(p, bundle_dir))
    check_provider(ex.engine, p)
    batch = frames[:8]
    ms8 = median_ms(lambda: ex(batch), max(3, repeats // 2))
    ms1 = median_ms(lambda: ex(frames[:1]), repeats)
    where = placement(ex.engine, lambda: ex(frames[:1])) if p.device in ("cpu", "cuda") else None
    return {"median_ms": ms1, "throughput": round(1e3 * len(batch) / ms8, 1), "unit": "frames/s",
            "batch": len(batch), "load_s": round(time.perf_counter() - t0, 1), "engine": ex.engine.provider,
            "placement": where} | ({"note": note} if (note := on_cpu(where, p)) else {})


def sam_rows(bundle_dir: Path, size: int, frame: Any, p: Provider, repeats: int) -> list[dict[str, Any]]:
    """Encoder (one frame) and decoder (one box prompt on that frame's embedding)."""
    import numpy as np

    from lineguard.runtime.bundle import Bundle
    from lineguard.runtime.stages.sam import SamStage

    from ..stages import median_ms

    if p.int8:
        raise Skip("no INT8 calibration table for SAM (the bundle holds the expert's)")
    bundle = Bundle.load(bundle_dir, verify=False)
    t0 = time.perf_counter()
    if p.native:
        graphs = bundle.stage("sam")["variants"]["fp32"]["graphs"]
        cache = bundle_dir / "engines" / p.key
        enc = native_engine(bundle_dir / graphs["encoder"], p, cache, 1, dims={"h": size, "w": size})
        dec = native_engine(bundle_dir / graphs["decoder"], p, cache, 8)  # the prompt's points: 1..8
        sam = SamStage(bundle, "fp32", engines=(enc, dec))
    else:
        # no warm-up on zeros: Engine's dummy frame is 1 px, and TensorRT would build an engine for it first
        opts = engine_options(p, bundle_dir)
        sam = SamStage(bundle, "fp32", replace(opts, warmup=0) if p.device == "tensorrt" else opts)
    check_provider(sam.encoder, p)
    check_provider(sam.decoder, p)
    emb = sam.encode(frame)
    h, w = frame.shape[:2]
    box = np.array([w * 0.3, h * 0.3, w * 0.6, h * 0.6], np.float32)
    load = round(time.perf_counter() - t0, 1)
    enc_ms = median_ms(lambda: sam.encode(frame), max(3, repeats // 4))
    dec_ms = median_ms(lambda: sam.segment(emb, box=box), repeats)
    engine = getattr(sam.encoder, "provider", None)
    ort_ep = p.device in ("cpu", "cuda")
    enc_at = placement(sam.encoder, lambda: sam.encode(frame)) if ort_ep else None
    dec_at = placement(sam.decoder, lambda: sam.segment(emb, box=box)) if ort_ep else None
    return [{"stage": "SAM encoder", "median_ms": enc_ms, "throughput": round(1e3 / enc_ms, 1), "unit": "frames/s",
             "batch": 1, "load_s": load, "engine": engine, "placement": enc_at}
            | ({"note": note} if (note := on_cpu(enc_at, p)) else {}),
            {"stage": "SAM decoder", "median_ms": dec_ms, "throughput": round(1e3 / dec_ms, 1), "unit": "prompts/s",
             "batch": 1, "load_s": load, "engine": engine, "placement": dec_at}
            | ({"note": note} if (note := on_cpu(dec_at, p)) else {})]


def llm_rows(bundle_dir: Path, p: Provider, repeats: int, new_tokens: int) -> list[dict[str, Any]]:
    """Prefill of 64 tokens, and decode per token (greedy, ``new_tokens`` per generation)."""
    import statistics

    import numpy as np

    from lineguard.runtime.bundle import Bundle
    from lineguard.runtime.stages.llm import CausalLM, Sampling

    from ..stages import median_ms

    if p.device == "tensorrt":
        raise Skip("the decoder's KV cache grows every step (TensorRT would rebuild per shape) and its INT4 "
                   "MatMulNBits has no TensorRT kernel: the LLM runs on the CUDA EP")
    bundle = Bundle.load(bundle_dir, verify=False)
    st = bundle.stage("llm")
    t0 = time.perf_counter()
    lm = CausalLM(bundle.variant_path("llm", "int4"), st["options"], engine_options(p, bundle_dir))
    check_provider(lm.engine, p)
    load = round(time.perf_counter() - t0, 1)
    ids = [int(x) for x in np.random.default_rng(0).integers(5, 300, 64)]
    pre = median_ms(lambda: lm.step(np.asarray([ids]), 64, lm.empty_cache()), max(3, repeats // 4))
    lm.generate(ids, Sampling(max_new_tokens=4))  # warm-up of the one-token shapes
    tok_s = statistics.median(lm.generate(ids, Sampling(max_new_tokens=new_tokens)).decode_tok_s for _ in range(3))
    where = placement(lm.engine, lambda: lm.generate(ids[:8], Sampling(max_new_tokens=2)))
    note = on_cpu(where, p)
    return [{"stage": "LLM prefill", "median_ms": pre, "throughput": round(64e3 / pre, 1), "unit": "tokens/s",
             "batch": 64, "load_s": load, "engine": lm.engine.provider, "placement": where}
            | ({"note": note} if note else {}),
            {"stage": "LLM decode", "median_ms": round(1e3 / tok_s, 3), "throughput": round(tok_s, 1),
             "unit": "tokens/s", "batch": 1, "load_s": load, "engine": lm.engine.provider, "placement": where}
            | ({"note": note} if note else {})]
