"""What the benchmarks of a station under load share: their options (a bundle, a line's parts, a rate,
segments), the pooling of a condition's segments and the latency plot."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lineguard.demo.build import build_default


def options(doc: str, rate: float, segments: int, out: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--bundle", help="default: the demo's default bundle (built if missing)")
    ap.add_argument("--images", help="MVTec-layout folder (default: the default bundle's line)")
    ap.add_argument("--rate", type=float, default=rate, help="frames/s offered")
    ap.add_argument("--seconds", type=float, default=30.0, help="load per condition, in all")
    ap.add_argument("--segments", type=int, default=segments, help="pieces each condition's load comes in")
    ap.add_argument("--defect-rate", type=float, default=0.05)
    ap.add_argument("--out", default=out)
    return ap


def resolve(a: argparse.Namespace) -> tuple[Path, str, Path]:
    """(the bundle, the images, the output folder, made)."""
    bundle = Path(a.bundle) if a.bundle else build_default()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    return bundle, a.images or str(bundle.parent / "data" / "line"), out


def pooled(reps: list[dict], lat: list[float]) -> dict:
    """One condition over its segments: latency percentiles of all its frames, counts summed."""
    keys = ("verdicts", "dropped", "errors", "unaccounted", "masks_dropped", "explanations_dropped")
    out = {k: sum(r[k] for r in reps) for k in keys}
    x = np.asarray(lat)
    out["verdict_latency_ms"] = {f"p{q}": round(float(np.percentile(x, q)), 2) for q in (50, 90, 99)}
    out["server_cpu_percent"] = round(float(np.mean([r["server_cpu_percent"] for r in reps])), 1)
    return out


def plot(samples: dict[str, list[float]], path: Path, title: str) -> None:
    """Each condition's send → verdict latency as a cumulative distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, lat in samples.items():
        x = np.sort(lat)
        ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=f"{name.replace('_', ' ')} (p99 "
                f"{np.percentile(x, 99):.1f} ms)")
    ax.set_xlabel("send → verdict latency, ms")
    ax.set_ylabel("share of frames")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
