"""The report: the stage table and the markdown, the latency plot, and the files it writes
(gpu_check.json, gpu_check.md, gpu_check.png)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def cell(v: Any) -> str:
    return "" if v is None else f"{v:,}" if isinstance(v, (int, float)) else str(v)


def stage_table(rows: list[dict[str, Any]]) -> list[str]:
    """Stages down, providers across; a cell is "median ms · throughput", or skipped/failed with a
    numbered note (one reason is shared by many cells)."""
    provs = list(dict.fromkeys(r["provider"] for r in rows))
    keys = list(dict.fromkeys((r["stage"], r["size"]) for r in rows))
    notes: dict[str, int] = {}
    lines = ["| stage | size | " + " | ".join(provs) + " |", "|---|---:|" + "---:|" * len(provs)]
    for stage, size in keys:
        cells = []
        for prov in provs:
            r = next((r for r in rows if (r["stage"], r["size"], r["provider"]) == (stage, size, prov)), None)
            if r is None:
                cells.append("")
            elif r["status"] == "ok":
                unit = {"frames/s": "/s", "prompts/s": "/s", "tokens/s": " tok/s"}[r["unit"]]
                batch = f" (b{r['batch']})" if stage == "expert" else ""
                extra = f" [{notes.setdefault(r['note'], len(notes) + 1)}]" if r.get("note") else ""
                cells.append(f"{r['median_ms']:,} ms · {r['throughput']:,}{unit}{batch}{extra}")
            else:
                cells.append(f"{r['status']} [{notes.setdefault(r['reason'], len(notes) + 1)}]")
        lines.append(f"| {stage} | {cell(size)} | " + " | ".join(cells) + " |")
    return lines + [""] + [f"[{i}] {why}  " for why, i in notes.items()]


def markdown(rep: dict[str, Any]) -> str:
    env = rep["environment"]
    lines = [f"# GPU check, {rep['date']}: {rep['mode']}", "",
             f"GPU: {env.get('gpu') or 'none'}; versions: {env.get('versions')}", "",
             "## Stages: median ms at batch 1 · throughput (the expert's at batch 8)", "",
             *stage_table(rep["stages"])]
    lines += ["", f"## LLM tokens/s (export llm's parity prompts, up to {rep['llm_new_tokens']} new tokens each)", "",
              "| engine | status | tokens/s (prefill + decode) | decode tokens/s | note |", "|---|---|---:|---:|---|"]
    for r in rep["llm_tokens"]:
        note = r.get("reason") or ", ".join(f"{k} {r[k]}" for k in ("teacher_forced_agreement", "gpu_memory_mb")
                                           if r.get(k) is not None)
        lines.append(f"| {r.get('engine')} | {r['status']} | {cell(r.get('tok_s'))} | {cell(r.get('decode_tok_s'))} | "
                     f"{note} |")
    mem, srv = rep.get("station_memory") or {}, rep.get("served") or {}
    lines += ["", "## The station, all three stages loaded", "", "| figure | value |", "|---|---|",
              f"| serve arguments | `{' '.join(rep['serve_args'])}` |",
              f"| engines | {mem.get('health', '')} |",
              "| GPU memory | " + (f"{mem['gpu_memory_mb']:,} MB ({mem['gpu_memory_source']})" if mem.get("gpu_memory_mb")
                                   is not None else f"skipped: {mem.get('gpu_memory_skipped')}") + " |",
              f"| peak RSS | {cell(mem.get('peak_rss_mb'))} MB |",
              f"| served verdicts/s (p99 ≤ {rep['max_latency_ms']} ms, {rep['defect_rate']:.0%} defects, no drops) | "
              + (f"{srv['max_sustainable_fps']:,} (p99 {srv['p99_ms_at_max']} ms)" if srv.get("max_sustainable_fps")
                 else "none (see the steps)")
              + ("" if srv.get("limit_found", True) else "; no step failed: the limit is higher (raise --start)")
              + " |",
              "", "## Steps", "", "| step | status | seconds | reason |", "|---|---|---:|---|"]
    shown = [s for s in rep["steps"] if not (s.get("kind") == "stage" and s["status"] == "skipped")]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['reason'] or ''} |" for s in shown]
    if len(shown) < len(rep["steps"]):
        lines.append(f"| {len(rep['steps']) - len(shown)} stage measurements skipped (the stage table's notes) | "
                     "skipped | | |")
    lines += ["", f"Total: {rep['seconds']} s. Command: `{rep['command']}`", ""]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Median latency per stage and size, one bar per provider that ran (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    def name(r: dict[str, Any]) -> str:
        return f"{r['stage']} {r['size']} px" if r["size"] else r["stage"]

    groups = list(dict.fromkeys(name(r) for r in ok))
    provs = list(dict.fromkeys(r["provider"] for r in ok))
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.45 * max(1, len(groups)) * max(1, len(provs)) ** 0.5))
    h = 0.8 / max(1, len(provs))
    for j, prov in enumerate(provs):
        ys, xs = [], []
        for i, g in enumerate(groups):
            r = next((r for r in ok if r["provider"] == prov and name(r) == g), None)
            if r:
                ys.append(i + j * h)
                xs.append(r["median_ms"])
        ax.barh(ys, xs, height=h, label=prov)
    ax.set_yticks([i + 0.4 - h / 2 for i in range(len(groups))], groups)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median ms (batch 1; LLM prefill: 64 tokens, decode: per token)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(rep: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(rep, indent=2, default=str) + "\n")
    md = markdown(rep)
    (out / "gpu_check.md").write_text(md)
    try:
        plot(rep["stages"], out / "gpu_check.png", f"{rep['mode']} ({rep['date']})")
    except ImportError:
        pass  # matplotlib is the report extra; the JSON and the table hold the same numbers
    print(md)
    print(f"wrote {out / 'gpu_check.json'}, {out / 'gpu_check.md'} and {out / 'gpu_check.png'}", file=sys.stderr)
