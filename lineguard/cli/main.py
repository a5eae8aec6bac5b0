"""The ``lineguard`` command line: one entry point, one sub-command per job.

Each command group is a module of ``lineguard.cli`` with ``register(sub)``; a command's handler
imports what it needs when it runs, so a runtime-only install (no torch) still answers
``--help`` and runs inspect and serve.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence

from lineguard import __version__
from lineguard.cli import bundle, calibration, ddqa, demo, export, logs, station, synth, train
from lineguard.cli.options import Parser
from lineguard.runtime.errors import LineguardError

GROUPS = (export, bundle, station, calibration, ddqa, synth, train, demo)


def _leaves(p: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield p
    for s in subs:
        for child in dict.fromkeys(s.choices.values()):  # an alias maps to the same parser
            yield from _leaves(child)


def _log_args(p: argparse.ArgumentParser, default: object) -> None:
    """The logging options, accepted before the command and after it (``default`` SUPPRESS there,
    so an option given before the command is not reset by the sub-parser)."""
    g = p.add_argument_group("logging")
    g.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging on stderr")
    g.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="warnings and errors only, no progress bars")
    g.add_argument("--log-format", choices=logs.FORMATS, default=default,
                   help="text, or json: one JSON object per line (for a station's log collector)")


def build_parser() -> Parser:
    ap = Parser(prog="lineguard", description="lineguard: explainable industrial anomaly detection at line rate")
    ap.add_argument("--version", action="version", version=f"lineguard {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for g in GROUPS:
        g.register(sub)
    for leaf in _leaves(ap):
        _log_args(leaf, argparse.SUPPRESS)
    _log_args(ap, None)
    ap.set_defaults(verbose=False, quiet=False, log_format="text")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logs.setup(a.verbose, a.quiet, a.log_format)
    try:
        return a.run(a)
    except LineguardError as e:
        if a.log_format == "json":
            logging.getLogger(f"lineguard.{a.command}").error("%s", e)
        else:
            sys.stderr.write(f"lineguard {a.command}: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        if a.log_format == "json":
            logging.getLogger(f"lineguard.{a.command}").warning("interrupted")
        else:
            sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
