"""One expert session on every core vs one 1-thread session per core, side by side, in-process.

    python -m benchmarks.expert_workers BUNDLE [--images DIR] [--precision fp32] [--batches 1,8] [--seconds 6]

Frames/s of the bundle's expert at each batch size, both ways, in one run: the measurement
behind ``serve --expert-workers`` (auto: one session per core on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.imageio import list_images, read_image
from lineguard.runtime.stages.expert import Expert

from .line_rate import _side_by_side


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--images", default="runs/serve/data/tile/test")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/expert_workers.json"))
    a = ap.parse_args()
    bundle = Bundle.load(a.bundle)
    frames = [read_image(p) for p in list_images(Path(a.images), recursive=True)[:32]]
    cores = os.cpu_count() or 1
    rows = []
    for batch in (int(b) for b in a.batches.split(",")):
        row = {"batch": batch}
        for name, n, threads in (("one session, every core", 1, 0), (f"{cores} sessions x 1 thread", cores, 1)):
            exs = [Expert(bundle, a.precision, EngineOptions(device="cpu", threads=threads)) for _ in range(n)]
            for ex in exs:
                ex(frames[:batch])
            row[name] = _side_by_side(exs, frames, batch, a.seconds)
        vals = [v for k, v in row.items() if k != "batch"]
        row["ratio"] = round(vals[1] / vals[0], 2)
        rows.append(row)
        print(json.dumps(row))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "bundle": a.bundle, "precision": a.precision,
                                 "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
