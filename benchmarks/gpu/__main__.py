"""``python -m benchmarks.gpu``: the options, then the run (the usage is the package's docstring)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __doc__ as USAGE
from .machine import install, with_library_path
from .providers import GPU_PROVIDERS, PROVIDERS
from .run import run_check


def main() -> None:
    ap = argparse.ArgumentParser(description=USAGE.splitlines()[0])
    ap.add_argument("--install", action="store_true", help="pip-install the GPU extras here and exit")
    ap.add_argument("--dry-run", action="store_true", help="every step on the CPU EP with tiny models")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu"))
    ap.add_argument("--work", type=Path, help="bundles and checkpoints (default: OUT/work, OUT/work-dry)")
    ap.add_argument("--providers", default=GPU_PROVIDERS, help=f"of {', '.join(PROVIDERS)}")
    ap.add_argument("--serve-device", default="cuda", choices=["cuda", "tensorrt"],
                    help="the served station's --device (tensorrt: fp32 TensorRT engines, built at its start)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--duration", type=float, help="seconds per sweep step (default 5; dry run 1.5)")
    ap.add_argument("--defect-rate", type=float, default=0.05)
    ap.add_argument("--max-latency-ms", type=float, default=250.0)
    ap.add_argument("--start", type=float, help="first sweep rate, as a share of the expert's in-process frames/s "
                    "(default 0.3; dry run 0.5)")
    a = ap.parse_args()
    if a.install:
        sys.exit(install())
    bad = [k for k in a.providers.split(",") if k and k not in PROVIDERS]
    if bad:
        ap.error(f"--providers: unknown {', '.join(bad)} (use {', '.join(PROVIDERS)})")
    # the dry run's sweep only has to go through its steps: short ones, started nearer the limit
    a.duration = a.duration or (1.5 if a.dry_run else 5.0)
    a.start = a.start or (0.5 if a.dry_run else 0.3)
    if not a.dry_run:
        with_library_path()
        try:  # torch first: it loads CUDA and cuDNN before onnxruntime looks for them
            import torch  # noqa: F401
        except ImportError:
            pass
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(run_check(a))


if __name__ == "__main__":
    main()
