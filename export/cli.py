"""Handlers for `lineguard export ...` (imported only when the export extra is installed)."""

from __future__ import annotations

import argparse

from runtime.errors import LineguardError

from .expert import export_patchcore
from .onnx_import import import_onnx_expert
from .patchcore.fit import PatchCoreConfig


def run_export(a: argparse.Namespace) -> int:
    if a.what == "sam":
        from .sam.export import export_sam

        out = export_sam(a.checkpoint, a.model_type, a.bundle, a.image_size, a.product)
        print(f"wrote the sam stage into {out}")
        return 0
    if a.what == "llm":
        from .llm.export import export_llm
        from .llm.int4 import Int4Config

        cfg = Int4Config(block_size=a.block_size, symmetric=not a.asymmetric, accuracy_level=a.accuracy_level,
                         merge=not a.no_merge, embeddings=a.quantize_embeddings)
        precisions = tuple(p.strip() for p in a.precision.split(",") if p.strip())
        out, report = export_llm(a.model, a.bundle, precisions, cfg, a.product, a.graph, a.nf4)
        for prec, r in report.items():
            if prec == "nf4":
                print(f"nf4 (bitsandbytes, GPU): next-token agreement {r['teacher_forced_agreement']:.3f}, "
                      f"{r['tok_s']} tok/s, {r['gpu_memory_mb']} MB")
                continue
            print(f"llm {prec}: {r['identical_sequences']}/{r['prompts']} greedy sequences identical to transformers, "
                  f"next-token agreement {r['teacher_forced_agreement']:.3f}")
        print(f"wrote the llm stage into {out}")
        return 0
    if a.what != "expert":
        raise LineguardError(f"export {a.what}: not available yet")
    if a.kind == "patchcore":
        if not a.train:
            raise LineguardError("--kind patchcore needs --train DIR (a folder of normal images)")
        cfg = PatchCoreConfig(backbone=a.backbone, weights=a.weights, size=a.size, coreset=a.coreset,
                              max_bank_mb=a.max_bank_mb, score_mode=a.score, seed=a.seed)
        out = export_patchcore(a.train, a.out, cfg, a.product, a.force)
    else:
        if not a.model:
            raise LineguardError("--kind onnx needs --model FILE")
        out = import_onnx_expert(a.model, a.out, a.product, a.map_output, a.score_output, a.input_size,
                                 a.color, a.mean, a.std, a.force)
    print(f"wrote {out}")
    return 0
