"""The `lineguard` command line: one entry point, one sub-command per job.

Sub-commands that need the training side (torch) import it only when they run, so the
station's runtime-only install still answers ``--help`` and runs inspect/serve.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .errors import LineguardError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="fp32", help="bundle variant to run (fp32, int8, fp16, ...)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"],
                   help="execution provider: auto tries TensorRT, then CUDA, then CPU")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")


def _positive(kind: type) -> object:
    def parse(s: str) -> object:
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{s} must be > 0")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="lineguard", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"lineguard {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    ex = sub.add_parser("export", help="export trained checkpoints into a bundle (needs lineguard[export])")
    exs = ex.add_subparsers(dest="what", metavar="STAGE", parser_class=_Parser)
    exs.required = True
    e = exs.add_parser("expert", help="fit/export the anomaly expert into a new bundle")
    e.add_argument("--kind", choices=["patchcore", "onnx"], default="patchcore")
    e.add_argument("--out", required=True, help="bundle directory to create")
    e.add_argument("--force", action="store_true", help="replace --out if it exists")
    e.add_argument("--product", help="product name in the manifest (default: from the folder)")
    g = e.add_argument_group("patchcore")
    g.add_argument("--train", help="folder of normal images (or an MVTec category root)")
    g.add_argument("--backbone", default="resnet18", help="resnet18, resnet50 or wide_resnet50_2")
    g.add_argument("--weights", help="torchvision state dict for the backbone (default: random init, with a warning)")
    g.add_argument("--size", type=_positive(int), default=256, help="square model input size in pixels")
    g.add_argument("--coreset", type=_positive(float), default=0.1, help="share of patches kept in the memory bank")
    g.add_argument("--max-bank-mb", type=_positive(float), default=512.0, help="cap on memory-bank size")
    g.add_argument("--score", choices=["reweight", "max"], default="reweight", help="image score from patch scores")
    g.add_argument("--seed", type=int, default=0)
    g = e.add_argument_group("onnx import")
    g.add_argument("--model", help="existing ONNX anomaly model (e.g. exported by anomalib)")
    g.add_argument("--map-output", help="name of its anomaly-map output (default: guessed)")
    g.add_argument("--score-output", help="name of its image-score output (default: guessed, else map max)")
    g.add_argument("--input-size", type=_positive(int), nargs=2, metavar=("H", "W"),
                   help="input size where the graph's is dynamic")
    g.add_argument("--color", choices=["RGB", "BGR", "GRAY"], help="channel order the model expects (default RGB)")
    g.add_argument("--mean", type=float, nargs="+", help="per-channel mean after scaling to 0..1 (default 0)")
    g.add_argument("--std", type=float, nargs="+", help="per-channel std after scaling to 0..1 (default 1)")

    i = sub.add_parser("inspect", help="inspect image files: score, verdict, hottest region, overlays")
    i.add_argument("bundle")
    i.add_argument("images", nargs="+", help="image files or folders")
    i.add_argument("--out", help="write overlay PNGs here")
    i.add_argument("--json", action="store_true", help="print one JSON array of results to stdout")
    _engine_args(i)

    n = sub.add_parser("info", help="verify a bundle and print what it holds")
    n.add_argument("bundle")
    n.add_argument("--json", action="store_true", help="print the manifest as JSON")

    d = sub.add_parser("demo", help="build a demo bundle on generated parts and inspect some (no downloads)")
    d.add_argument("--out", default="lineguard-demo", help="folder for the generated data, bundle and overlays")
    d.add_argument("--seed", type=int, default=0)
    return ap


def cmd_export(a: argparse.Namespace) -> int:
    try:
        from export.cli import run_export
    except ImportError as e:
        raise LineguardError(f"lineguard export needs the export extra ({e.name} is missing): "
                             "pip install 'lineguard[export]'") from None
    return run_export(a)


def cmd_inspect(a: argparse.Namespace) -> int:
    from .bundle import Bundle
    from .engine import EngineOptions
    from .inspect import format_table, inspect_files

    bundle = Bundle.load(a.bundle)
    results = inspect_files(bundle, a.images, a.out, a.precision, EngineOptions(device=a.device, threads=a.threads))
    if a.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(results))
    return 1 if any("error" in r for r in results) else 0


def cmd_info(a: argparse.Namespace) -> int:
    from .bundle import Bundle

    b = Bundle.load(a.bundle)
    if a.json:
        json.dump(b.manifest, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"bundle   {b.root}  (format v{b.manifest['format_version']}, product {b.product!r}, files verified)")
    for name, st in b.manifest["stages"].items():
        spec = st.get("input_spec", {})
        size = f"{spec.get('height')}x{spec.get('width')} {spec.get('color')}" if spec else ""
        print(f"stage    {name}: {st['kind']} {size}  variants: {', '.join(st['variants'])}")
        for prec, v in st["variants"].items():
            par = v.get("parity", {})
            if "map_pearson" in par:
                print(f"         {prec}: map Pearson {par['map_pearson']:.6f}, max |err| {par['map_max_abs_err']:.3g}")
        for w in st.get("warnings", []):
            print(f"warning  {w}")
    print(f"thresholds    {b.thresholds or 'none (not calibrated)'}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from benchmarks.demo import run_demo

    return run_demo(a.out, a.seed)


COMMANDS = {"export": cmd_export, "inspect": cmd_inspect, "info": cmd_info, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[a.command](a)
    except LineguardError as e:
        sys.stderr.write(f"lineguard {a.command}: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
