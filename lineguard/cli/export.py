"""``lineguard export expert | sam | llm``: trained checkpoints into a bundle (the export extra);
``lineguard export triton``: a bundle into a Triton model repository (no extra needed)."""

from __future__ import annotations

import argparse

from lineguard.cli.options import needs, positive, subcommands
from lineguard.runtime.errors import LineguardError


def register(sub: argparse._SubParsersAction) -> None:
    exs = subcommands(sub, "export", "export trained checkpoints into a bundle (needs lineguard[export])", "STAGE")
    e = exs.add_parser("expert", help="fit/export the anomaly expert into a new bundle")
    e.add_argument("--kind", choices=["patchcore", "onnx"], default="patchcore")
    e.add_argument("--out", required=True, help="bundle directory to create")
    e.add_argument("--force", action="store_true", help="replace --out if it exists")
    e.add_argument("--product", help="product name in the manifest (default: from the folder)")
    g = e.add_argument_group("patchcore")
    g.add_argument("--train", help="folder of normal images (or an MVTec category root)")
    g.add_argument("--backbone", default="resnet18", help="resnet18, resnet50 or wide_resnet50_2")
    g.add_argument("--weights", help="torchvision state dict for the backbone (default: random init, with a warning)")
    g.add_argument("--size", type=positive(int), default=256, help="square model input size in pixels")
    g.add_argument("--coreset", type=positive(float), default=0.1, help="share of patches kept in the memory bank")
    g.add_argument("--max-bank-mb", type=positive(float), default=512.0, help="cap on memory-bank size")
    g.add_argument("--score", choices=["reweight", "max"], default="reweight", help="image score from patch scores")
    g.add_argument("--seed", type=int, default=0)
    g = e.add_argument_group("onnx import")
    g.add_argument("--model", help="existing ONNX anomaly model (e.g. exported by anomalib)")
    g.add_argument("--map-output", help="name of its anomaly-map output (default: guessed)")
    g.add_argument("--score-output", help="name of its image-score output (default: guessed, else map max)")
    g.add_argument("--input-size", type=positive(int), nargs=2, metavar=("H", "W"),
                   help="input size where the graph's is dynamic (default: the anomaly map's size, which is "
                        "the size anomalib's exports resize to inside the graph)")
    g.add_argument("--color", choices=["RGB", "BGR", "GRAY"], help="channel order the model expects (default RGB)")
    g.add_argument("--mean", type=float, nargs="+", help="per-channel mean after scaling to 0..1 (default 0)")
    g.add_argument("--std", type=float, nargs="+", help="per-channel std after scaling to 0..1 (default 1)")
    g.add_argument("--no-model-threshold", action="store_true",
                   help="ignore a threshold the graph applies itself (anomalib's pred_label); calibrate instead")

    t = exs.add_parser("triton", help="a bundle's expert (and SAM) as a Triton Inference Server model repository")
    t.add_argument("bundle")
    t.add_argument("--out", required=True, help="repository folder to create")
    t.add_argument("--backend", choices=["python", "onnxruntime"], default="python",
                   help="python: the bundle's engine in Triton's Python backend (any Triton); onnxruntime: "
                        "Triton's own ONNX Runtime backend, TensorRT set from the precision (GPU servers)")
    t.add_argument("--precision", default="fp32", help="the expert's variant to serve")
    t.add_argument("--stages", default="expert,sam", help="expert, or expert,sam (SAM where the bundle has it)")
    t.add_argument("--sam-precision", help="SAM's variant (default: the expert's where SAM has it, else fp32)")
    t.add_argument("--instances", type=positive(int), default=1, help="model instances per server")
    t.add_argument("--max-batch", type=positive(int), default=8)
    t.add_argument("--max-queue-delay-us", type=int, default=1000, help="dynamic batching's wait for a fuller batch")
    t.add_argument("--gpu", action="store_true", help="instances on the GPU (KIND_GPU)")
    t.add_argument("--force", action="store_true", help="replace --out if it exists")
    t.set_defaults(run=cmd_triton)

    s = exs.add_parser("sam", help="export Segment Anything (encoder, prompt decoder, sparse decoder) into a bundle")
    s.add_argument("--checkpoint", required=True, help="segment-anything state dict (e.g. sam_vit_b_01ec64.pth)")
    s.add_argument("--model-type", required=True, help="vit_b, vit_l, vit_h, or custom:EMBED:DEPTH:HEADS:G1,G2")
    s.add_argument("--bundle", required=True, help="bundle to add the SAM stage to (created if missing)")
    s.add_argument("--image-size", type=positive(int), default=1024,
                   help="encoder input (1024 as released; 512 or 384 interpolate the position embeddings)")
    s.add_argument("--product", help="product name for a new bundle")

    m = exs.add_parser("llm", help="export a causal LM (Llama, Qwen2, Phi-3, Gemma, Mistral) with a KV cache")
    m.add_argument("--model", required=True, help="local Hugging Face checkpoint folder (save_pretrained layout)")
    m.add_argument("--bundle", required=True, help="bundle to add the LLM stage to (created if missing)")
    m.add_argument("--precision", default="int4", help="comma list of int4, fp16, fp32 (default int4)")
    m.add_argument("--block-size", type=positive(int), help="INT4 block size (MatMulNBits); default: the largest "
                   "of 128/64/32 that divides every weight's input size in 4 blocks or more, else 32")
    m.add_argument("--asymmetric", action="store_true", help="INT4 with zero points (default symmetric)")
    m.add_argument("--accuracy-level", type=int, choices=[0, 1, 2, 3, 4], default=4,
                   help="MatMulNBits compute: 4 = int8 activations (fastest on CPU), 0 = fp32")
    m.add_argument("--no-merge", action="store_true", help="keep q/k/v and gate/up projections separate")
    m.add_argument("--graph", choices=["auto", "fused", "traced"], default="auto",
                   help="fused: ONNX Runtime's attention/norm kernels (fast); traced: torch.onnx of the model "
                        "(any family transformers runs); auto: fused where it matches generate")
    m.add_argument("--quantize-embeddings", action="store_true", help="also 4-bit the embedding table")
    m.add_argument("--nf4", action="store_true",
                   help="also measure bitsandbytes NF4 (PyTorch-side, CUDA only) against the same reference")
    m.add_argument("--product", help="product name for a new bundle")
    for name, p in exs.choices.items():
        if name != "triton":  # the others need the export extra; a Triton repository is written from the bundle
            p.set_defaults(run=run)


def run(a: argparse.Namespace) -> int:
    needs("export", "torch", "onnx")
    if a.what == "sam":
        from lineguard.export.sam.export import export_sam

        out = export_sam(a.checkpoint, a.model_type, a.bundle, a.image_size, a.product)
        print(f"wrote the sam stage into {out}")
        return 0
    if a.what == "llm":
        from lineguard.export.llm.export import export_llm
        from lineguard.export.llm.int4 import Int4Config

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
    if a.kind == "patchcore":
        from lineguard.export.expert import export_patchcore
        from lineguard.export.patchcore.fit import PatchCoreConfig

        if not a.train:
            raise LineguardError("--kind patchcore needs --train DIR (a folder of normal images)")
        cfg = PatchCoreConfig(backbone=a.backbone, weights=a.weights, size=a.size, coreset=a.coreset,
                              max_bank_mb=a.max_bank_mb, score_mode=a.score, seed=a.seed)
        out = export_patchcore(a.train, a.out, cfg, a.product, a.force)
    else:
        from lineguard.export.onnx_import import describe_import, import_onnx_expert

        if not a.model:
            raise LineguardError("--kind onnx needs --model FILE")
        out = import_onnx_expert(a.model, a.out, a.product, a.map_output, a.score_output, a.input_size,
                                 a.color, a.mean, a.std, a.force, not a.no_model_threshold)
        print(describe_import(out))
    print(f"wrote {out}")
    return 0


def cmd_triton(a: argparse.Namespace) -> int:
    import json

    from lineguard.export.triton import export_triton

    info = export_triton(a.bundle, a.out, a.backend, a.precision, a.instances, a.max_batch, a.max_queue_delay_us,
                         a.gpu, a.force, tuple(s.strip() for s in a.stages.split(",") if s.strip()), a.sam_precision)
    print(json.dumps({"repository": a.out, "models": [m["name"] for m in info["models"].values()],
                      "version": info["models"]["expert"]["version"], "backend": info["backend"],
                      "bundle_hash": info["bundle_hash"]}))
    return 0
