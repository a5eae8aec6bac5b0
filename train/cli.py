"""``lineguard train``: the default models, trained here from normal (or generated) images."""

from __future__ import annotations

import argparse
import json


def add_parsers(sub: argparse._SubParsersAction, parser_class: type, positive: type) -> None:
    tr = sub.add_parser("train", help="train a default model from scratch (no pretrained weights needed)")
    ts = tr.add_subparsers(dest="what", metavar="MODEL", parser_class=parser_class)
    ts.required = True
    e = ts.add_parser("expert", help="a self-supervised anomaly segmenter (synthetic anomalies on normal images) "
                                     "→ ONNX, for `export expert --kind onnx`")
    e.add_argument("--train", required=True, help="folder of normal images (or an MVTec category: its train/good)")
    e.add_argument("--out", required=True, help="ONNX file to write (a .json record goes beside it)")
    e.add_argument("--size", type=positive(int), default=256, help="square input side of the exported graph")
    e.add_argument("--crop", type=positive(int), default=128, help="training crop side")
    e.add_argument("--steps", type=positive(int), default=700)
    e.add_argument("--minutes", type=float, default=0.0, help="stop after this many minutes (0: run every step)")
    e.add_argument("--batch", type=positive(int), default=16)
    e.add_argument("--width", type=positive(int), default=24, help="channels of the first stage")
    e.add_argument("--norm", choices=["batch", "group"], default="batch",
                   help="batch: one product per expert (as a bundle is); group: several products in one expert")
    e.add_argument("--seed", type=int, default=0)


def run(a: argparse.Namespace) -> int:
    from .expert import ExpertTrainConfig, train_expert

    cfg = ExpertTrainConfig(size=a.size, crop=a.crop, batch=a.batch, steps=a.steps, minutes=a.minutes,
                            width=a.width, norm=a.norm, seed=a.seed)
    info = train_expert(a.train, a.out, cfg)
    print(json.dumps({"onnx": str(a.out), "training": info["training"],
                      "map_pearson": info["parity"]["map_pearson"]}))
    return 0
