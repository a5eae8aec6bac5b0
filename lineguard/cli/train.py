"""``lineguard train expert | explainer`` and ``lineguard adapt sam``: models trained or fitted here (torch)."""

from __future__ import annotations

import argparse
import json

from lineguard.cli.options import needs, non_negative, positive, subcommands


def _loop_args(p: argparse.ArgumentParser, steps: int, batch: int, batch_help: str | None = None) -> None:
    """The options every trainer's loop takes (``train.loop.Steps``)."""
    p.add_argument("--steps", type=positive(int), default=steps)
    p.add_argument("--minutes", type=float, default=0.0,
                   help="fail if training takes longer than this (0: no limit); it never stops early with a weaker model")
    p.add_argument("--batch", type=positive(int), default=batch, help=batch_help)
    p.add_argument("--seed", type=int, default=0)


def register(sub: argparse._SubParsersAction) -> None:
    ts = subcommands(sub, "train", "train a default model from scratch (no pretrained weights needed)", "MODEL")
    e = ts.add_parser("expert", help="a self-supervised anomaly segmenter (synthetic anomalies on normal images) "
                                     "→ ONNX, for `export expert --kind onnx`")
    e.add_argument("--train", required=True, help="folder of normal images (or an MVTec category: its train/good)")
    e.add_argument("--out", required=True, help="ONNX file to write (a .json record goes beside it)")
    e.add_argument("--size", type=positive(int), default=256, help="square input side of the exported graph")
    e.add_argument("--crop", type=positive(int), default=128, help="training crop side")
    e.add_argument("--width", type=positive(int), default=24, help="channels of the first stage")
    e.add_argument("--norm", choices=["batch", "group"], default="batch",
                   help="batch: one product per expert (as a bundle is); group: several products in one expert")
    _loop_args(e, steps=700, batch=16)


    x = ts.add_parser("explainer", help="a small LM (Qwen2/Llama layout) that explains findings, from a DDQA corpus "
                                        "→ save_pretrained folder, for `export llm`")
    x.add_argument("--corpus", required=True, action="append", help="JSONL from `lineguard ddqa corpus` (repeatable)")
    x.add_argument("--out", required=True, help="checkpoint folder to write (save_pretrained layout)")
    x.add_argument("--family", choices=["qwen2", "llama"], default="qwen2")
    x.add_argument("--hidden", type=positive(int), default=128)
    x.add_argument("--layers", type=positive(int), default=4)
    x.add_argument("--vocab", type=positive(int), default=1024, help="BPE vocabulary trained on the corpus")
    # fewer than ~1000 steps: fluent answers that do not copy the findings (BENCHMARKS.md)
    _loop_args(x, steps=2000, batch=16)

    ads = subcommands(sub, "adapt", "fit a model to the product's defects, prompted by the bundle's expert", "MODEL")
    s = ads.add_parser("sam", help="fine-tune SAM's mask decoder on defect masks with the expert's prompts "
                                   "(boxes, peak points), then export it into the bundle")
    s.add_argument("--bundle", required=True, help="a calibrated bundle: its expert makes the prompts")
    s.add_argument("--dataset", required=True, help="MVTec-layout category: test/<defect> images with ground_truth masks")
    s.add_argument("--out", help="adapted SAM state dict to write (default: <bundle>-sam.pth beside the bundle)")
    s.add_argument("--checkpoint", help="SAM state dict to start from (default: the bundle's SAM's)")
    s.add_argument("--model-type", help="vit_b, vit_l, vit_h or custom:EMBED:DEPTH:HEADS:G1,G2 (default: the bundle's)")
    s.add_argument("--image-size", type=positive(int), help="encoder input side (default: the bundle's, else 1024)")
    s.add_argument("--scratch", action="store_true", help="start from random weights (a small SAM trained here)")
    s.add_argument("--train-encoder", action="store_true", help="train the image encoder too (end to end)")
    s.add_argument("--mask-prompt", action=argparse.BooleanOptionalAction, default=None,
                   help="also prompt SAM with the expert's map (its dense prompt); the bundle records it "
                        "(default: as the bundle's SAM was adapted)")
    s.add_argument("--lr", type=positive(float), default=1e-4)
    s.add_argument("--bce", type=float, default=1.0, help="λ_bce, the BCE weight of the mask loss")
    s.add_argument("--dice", type=float, default=1.0, help="λ_dice, the Dice weight of the mask loss")
    s.add_argument("--holdout", type=float, default=0.25, help="share of defect images kept out to measure on")
    _loop_args(s, steps=300, batch=4, batch_help="images per step")
    for p in ts.choices.values():
        p.set_defaults(run=run)
    s.set_defaults(run=run_adapt)


def run_adapt(a: argparse.Namespace) -> int:
    needs("export", "torch", "segment_anything")
    from pathlib import Path

    from lineguard.train.adapt import adapt_sam
    from lineguard.train.sam import SamAdaptConfig

    cfg = SamAdaptConfig(steps=a.steps, minutes=a.minutes, batch=a.batch, lr=a.lr, bce=a.bce, dice=a.dice,
                         train_encoder=a.train_encoder or a.scratch, mask_prompt=a.mask_prompt, seed=a.seed)
    non_negative(a, "minutes", "bce", "dice")
    bundle = Path(a.bundle).resolve()
    out = a.out or bundle.parent / f"{bundle.name}-sam.pth"
    rec = adapt_sam(bundle, a.dataset, out, cfg, a.checkpoint, a.model_type, a.image_size, a.scratch, a.holdout)
    print(json.dumps({"checkpoint": str(out), "steps": rec["steps"], "seconds": rec["seconds"],
                      "images": rec["images"], "holdout": rec.get("holdout")}, indent=2))
    return 0


def run(a: argparse.Namespace) -> int:
    needs("export", "torch", "onnx")
    non_negative(a, "minutes")
    if a.what == "explainer":
        from lineguard.train.explainer import ExplainerTrainConfig, train_explainer

        xc = ExplainerTrainConfig(family=a.family, hidden=a.hidden, layers=a.layers, vocab=a.vocab, steps=a.steps,
                                  minutes=a.minutes, batch=a.batch, seed=a.seed)
        rec = train_explainer(a.corpus, a.out, xc)
        print(json.dumps({"checkpoint": str(a.out), "steps": rec["steps"], "seconds": rec["seconds"],
                          "parameters": rec["parameters"], "held_out": rec["held_out"]}, indent=2))
        return 0
    from lineguard.train.expert import ExpertTrainConfig, train_expert

    cfg = ExpertTrainConfig(size=a.size, crop=a.crop, batch=a.batch, steps=a.steps, minutes=a.minutes,
                            width=a.width, norm=a.norm, seed=a.seed)
    info = train_expert(a.train, a.out, cfg)
    print(json.dumps({"onnx": str(a.out), "training": info["training"],
                      "map_pearson": info["parity"]["map_pearson"]}))
    return 0
