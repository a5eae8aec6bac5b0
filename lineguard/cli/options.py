"""Options and helpers every command group shares, defined once."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lineguard.runtime.errors import LineguardError

DEVICES = ("auto", "cpu", "cuda", "tensorrt")


GLUED = ("--serve-args",)  # options whose value is itself a command line


def glue_values(argv: Sequence[str]) -> list[str]:
    """``--serve-args --no-sam`` → ``--serve-args=--no-sam``: argparse would take a value that
    starts with a dash for an option of its own and refuse the line."""
    out, args = [], list(argv)
    i = 0
    while i < len(args):
        if args[i] in GLUED and i + 1 < len(args) and args[i + 1].startswith("-"):
            out.append(f"{args[i]}={args[i + 1]}")
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out


class Parser(argparse.ArgumentParser):
    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        return super().parse_known_args(glue_values(sys.argv[1:] if args is None else args), namespace)

    def error(self, message: str) -> None:  # one line, not argparse's usage block
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def positive(kind: type) -> Callable[[str], object]:
    """An argparse type: a number of ``kind`` that must be > 0."""
    def parse(s: str) -> object:
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{s} must be > 0")
        return v
    return parse


def subcommands(sub: argparse._SubParsersAction, name: str, help: str, metavar: str) -> argparse._SubParsersAction:
    """``lineguard NAME WHAT ...``: a command whose own sub-command (``a.what``) names what it acts on."""
    inner = sub.add_parser(name, help=help).add_subparsers(dest="what", metavar=metavar, parser_class=Parser)
    inner.required = True
    return inner


def device_args(p: argparse.ArgumentParser, default: str = "auto", choices: tuple[str, ...] = DEVICES,
                threads_help: str = "intra-op threads (0: all cores)") -> None:
    p.add_argument("--device", default=default, choices=choices,
                   help="execution provider: auto tries TensorRT, then CUDA, then CPU")
    p.add_argument("--threads", type=int, default=0, help=threads_help)


def engine_args(p: argparse.ArgumentParser) -> None:
    """What runs a bundle's stages: the variant, the provider and the threads."""
    p.add_argument("--precision", default="fp32", help="bundle variant to run (fp32, int8, fp16, ...)")
    device_args(p)


def constrain_arg(p: argparse.ArgumentParser) -> None:
    """Grounded decoding: on by default (the bundle's setting); off only to compare."""
    p.add_argument("--no-constrain", dest="constrain", action="store_const", const=False, default=None,
                   help="let the LLM name positions and types the findings contradict (for comparison)")


def needs(extra: str, *modules: str) -> None:
    """Refuse, in one line, a command whose extra is not installed (the station installs the runtime alone)."""
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise LineguardError(f"this command needs the {extra} extra ({e.name} is missing): "
                                 f"pip install 'lineguard[{extra}]'") from None


def write_report(path: str | Path, report: dict[str, Any], plot: Callable[[dict[str, Any], Path], None]) -> None:
    """A command's ``--json`` report, and its plot beside it (same name, ``.png``)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))


def non_negative(a: argparse.Namespace, *names: str) -> None:
    for n in names:
        if getattr(a, n) < 0:
            raise LineguardError(f"--{n.replace('_', '-')} {getattr(a, n)}: must not be negative")
