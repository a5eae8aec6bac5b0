"""``lineguard demo``: the whole job live on a generated line, with default models trained here."""

from __future__ import annotations

import argparse

from lineguard.cli.options import constrain_arg, positive


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="the whole job live on a generated line: default models trained here, "
                                     "serve + camera over ZeroMQ, accuracy against the truth (no downloads)")
    d.add_argument("--out", default="lineguard-demo", help="report folder: summary, results, overlays")
    d.add_argument("--bundle", help="serve this bundle instead of the default one")
    d.add_argument("--duration", type=positive(float),
                   help="seconds of line to send, the video looping if needed (default: the video once)")
    d.add_argument("--rate", type=positive(float), default=10.0, help="line rate, frames/s")
    d.add_argument("--cache", help="where the default bundle is built (default: $LINEGUARD_CACHE or ~/.cache/lineguard)")
    d.add_argument("--rebuild", action="store_true", help="build the default bundle again, even if cached")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")
    d.add_argument("--seed", type=int, default=0)
    constrain_arg(d)
    d.add_argument("--http", default="127.0.0.1:8321", metavar="HOST:PORT",
                   help="the station's web view (another free port if this one is taken; 'off': none)")
    d.add_argument("--hold", action="store_true",
                   help="keep the station and its web view up after the line has run, until Ctrl-C")
    d.set_defaults(run=cmd_demo)


def cmd_demo(a: argparse.Namespace) -> int:
    from lineguard.demo.main import run_demo

    return run_demo(a.out, a.bundle, a.duration, a.rate, a.cache, a.rebuild, a.quiet, a.seed, a.json, a.constrain,
                    None if a.http == "off" else a.http, a.hold)
