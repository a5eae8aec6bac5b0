"""What grounded decoding costs: decode tokens/s and explanation time with and without the guard.

    python -m benchmarks.constrain_cost --bundle BUNDLE --dataset CATEGORY [--limit 40] [--llm-shape qwen2-0.5b]

The bundle's own expert flags the category's test images; each flagged frame is explained twice
by the same LLM session, constrained and not, in alternating order (so drift on a busy machine
falls on both). Reports medians of decode tok/s and of seconds per explanation, their ratio, and
the consistent / complete / rule-written rates of each way. Writes JSON (``--out``) and a PNG.
``--llm-shape qwen2-0.5b`` swaps the bundle's LLM for a Qwen2-0.5B-shaped one (random weights,
INT4, as ``benchmarks.llm_speed`` builds it) in a copy of the bundle: the guard's cost per token
is the same, the model's is a real model's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lineguard.cli.options import write_report


def with_llm_shape(bundle_path: Path, shape: str, work: Path) -> Path:
    """A copy of the bundle whose LLM is a random-weight model of ``shape`` (built once, INT4)."""
    import shutil

    from benchmarks.llm_speed import build_shape
    from lineguard.export.llm.export import export_llm

    out = work / f"bundle-{shape}"
    if not (out / "manifest.json").is_file():
        shutil.copytree(bundle_path, out)
        export_llm(build_shape(shape, work / shape), out, ("int4",))  # replaces the llm stage and its files
    return out


def run(bundle_path: Path, dataset: Path, limit: int) -> dict[str, Any]:
    from lineguard.runtime.bundle import Bundle
    from lineguard.runtime.bundle.engine import EngineOptions
    from lineguard.runtime.imageio import list_images, read_image
    from lineguard.runtime.inspection import Inspector

    bundle = Bundle.load(bundle_path)
    ins = Inspector.load(bundle, "fp32", EngineOptions(device="cpu"), explain=True)
    files = [f for f in list_images(dataset / "test", recursive=True) if f.parent.name != "good"][:limit]
    rows: dict[str, list[dict[str, Any]]] = {"constrained": [], "unconstrained": []}
    for i, f in enumerate(files):
        rec = ins.inspect([read_image(f)])[0].record
        if rec.get("verdict") != "defect":
            continue
        order = (True, False) if i % 2 == 0 else (False, True)
        for constrain in order:
            e = ins.explainer.explain(rec, constrain=constrain)
            rows["constrained" if constrain else "unconstrained"].append(e)
    out: dict[str, Any] = {"bundle": str(bundle_path), "dataset": str(dataset), "explained": len(rows["constrained"])}
    for mode, es in rows.items():
        out[mode] = {"decode_tok_s_median": float(np.median([e["decode_tok_s"] for e in es if e["decode_tok_s"]])),
                     "seconds_median": float(np.median([e["seconds"] for e in es])),
                     "new_tokens_median": float(np.median([e["new_tokens"] for e in es])),
                     "consistent_percent": round(100 * float(np.mean([e["consistent"] for e in es])), 1),
                     "complete_percent": round(100 * float(np.mean([e["complete"] for e in es])), 1),
                     "rules_percent": round(100 * float(np.mean([e["source"] == "rules" for e in es])), 1),
                     "refused_tokens_mean": round(float(np.mean([e["refused_tokens"] for e in es])), 2),
                     "tok_s": [e["decode_tok_s"] for e in es]}
    c, u = out["constrained"], out["unconstrained"]
    out["tok_s_ratio"] = round(c["decode_tok_s_median"] / u["decode_tok_s_median"], 3)
    return out


def plot(rep: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.boxplot([rep["unconstrained"]["tok_s"], rep["constrained"]["tok_s"]])
    ax.set_xticks([1, 2], ["unconstrained", "constrained"])
    ax.set(ylabel="decode tokens/s", title=f"grounded decoding: {rep['tok_s_ratio']:.2f}× the tokens/s")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True, help="a bundle with an llm stage, calibrated")
    ap.add_argument("--dataset", type=Path, required=True, help="MVTec-layout category (its defect images)")
    ap.add_argument("--limit", type=int, default=40, help="defect images to try")
    ap.add_argument("--out", type=Path, default=Path("constrain_cost.json"))
    ap.add_argument("--llm-shape", choices=["qwen2-0.5b"], help="measure with a real-size LLM instead")
    ap.add_argument("--work", type=Path, default=Path("runs/constrain"))
    a = ap.parse_args()
    bundle = with_llm_shape(a.bundle, a.llm_shape, a.work) if a.llm_shape else a.bundle
    rep = run(bundle, a.dataset, a.limit) | {"date": time.strftime("%Y-%m-%d"),
                                              "command": " ".join(["python -m benchmarks.constrain_cost", *sys.argv[1:]])}
    write_report(a.out, rep, plot)
    print(json.dumps({k: v for k, v in rep.items() if k not in ("constrained", "unconstrained")}
                     | {m: {k: v for k, v in rep[m].items() if k != "tok_s"} for m in ("constrained", "unconstrained")},
                     indent=2))


if __name__ == "__main__":
    main()
