"""The ``lineguard`` command line: one entry point, one sub-command per job.

Each command group is a module of ``lineguard.cli`` with ``register(sub)``; a command's handler
imports what it needs when it runs, so a runtime-only install (no torch) still answers
``--help`` and runs inspect and serve.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from lineguard import __version__
from lineguard.cli import bundle, calibration, ddqa, demo, export, station, synth, train
from lineguard.cli.options import Parser
from lineguard.runtime.errors import LineguardError

GROUPS = (export, bundle, station, calibration, ddqa, synth, train, demo)


def build_parser() -> Parser:
    ap = Parser(prog="lineguard", description="lineguard: explainable industrial anomaly detection at line rate")
    ap.add_argument("--version", action="version", version=f"lineguard {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for g in GROUPS:
        g.register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return a.run(a)
    except LineguardError as e:
        sys.stderr.write(f"lineguard {a.command}: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
