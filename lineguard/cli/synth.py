"""``lineguard synth``: a generated product line (parts, defects with masks, a line video)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    sy = sub.add_parser("synth", help="a generated product line: parts, defects with masks (MVTec layout), a line video")
    sy.add_argument("--out", required=True, help="folder to write (one MVTec category per part type)")
    sy.add_argument("--n", type=int, default=40, help="train/good images per part type (test: a quarter of it each)")
    sy.add_argument("--parts", help="comma list of tile, disc, label (default: all)")
    sy.add_argument("--defects", help="comma list of scratch, crack, hole, stain, chip (default: all)")
    sy.add_argument("--size", type=int, default=256)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--fps", type=float, default=10.0, help="frame rate of the line video")
    sy.add_argument("--no-video", action="store_true")
    sy.add_argument("--trigger", action="store_true",
                    help="one centred frame per part (a triggered camera) instead of parts sliding past")
    sy.set_defaults(run=cmd_synth)


def cmd_synth(a: argparse.Namespace) -> int:
    from lineguard.synth.line import make_line

    rep = make_line(a.out, a.n, a.parts, a.defects, a.size, a.seed, not a.no_video, a.fps, trigger=a.trigger)
    print(json.dumps(rep))
    return 0
