"""Does the served station beat what a user would otherwise run? Sustained rate vs the research loop.

    python -m benchmarks.line_rate [--work runs/serve] [--frames 60] [--defect-rate 0.05]
                                   [--max-latency-ms 500] [--out runs/bench/line_rate]
                                   [--real [--sam-size 384]] [--bundle DIR --data DIR]

Two stacks share the expert (calibrated 256-px PatchCore on generated tiles):
- default: a tiny SAM and a tiny INT4 LLM (the test stack; quick);
- ``--real``: SAM **vit_b** (random weights in the official layout, at ``--sam-size``; served as
  INT8) and a **Qwen2-0.5B**-shaped LLM (random weights; served as INT4) — the sizes a station
  runs. The research loop runs the same checkpoints at the same SAM size in PyTorch.
``--bundle`` serves an existing bundle instead (the demo's: its trained expert, small SAM and
explainer) on an MVTec-layout ``--data`` folder; it has no research loop (its checkpoints are not
PyTorch ones this script can load), only the ceiling and the served sweeps.

Same checkpoints, same images, one run:
- **sequential research loop** (as the EIAD/Myriad code runs): one frame at a time, every frame
  through PyTorch eager PatchCore, segment-anything's ``SamPredictor`` (box from the hottest
  region) and transformers' ``generate`` on the findings prompt (``--research-frames`` of them);
  and the **gated** variant, kinder to the baseline: SAM and ``generate`` only for frames over
  the threshold (all ``--frames``);
- **expert-alone ceiling**: the bundle's expert in ONNX Runtime, in-process, the better of one
  session on every core and one 1-thread session per core, at the largest batch (of 1, 2, 4, 8)
  the latency limit allows: twice its in-process batch time within ``--max-latency-ms`` (a frame
  can wait for the batch in progress, then its own). A larger batch is faster in-process but no
  station under that limit could run it; the station is served with the same ``--max-batch``;
- **lineguard**: `lineguard bench --sweep` on the served bundle, expert only (``--no-sam
  --no-explain``) and with all three stages, open loop at ``--defect-rate``; the highest rate
  with p99 ≤ ``--max-latency-ms``, no drops, every frame answered.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.imageio import list_images, read_image
from lineguard.runtime.stages.expert import Expert
from lineguard.runtime.stages.findings import hottest_region
from lineguard.runtime.stages.preprocess import to_batch
from lineguard.runtime.stages.prompting import DEFAULT_PROMPT, PromptBuilder, findings_for_prompt

from .serve_threads import build


def frame_mix(data: Path, n: int, defect_rate: float, seed: int = 0) -> list[np.ndarray]:
    good = [read_image(p) for p in list_images(data / "test" / "good")]
    bad = [read_image(p) for d in sorted((data / "test").iterdir()) if d.name != "good" for p in list_images(d)]
    rng = np.random.default_rng(seed)
    k = max(1, round(n * defect_rate))
    picks = [bad[i % len(bad)] for i in range(k)] + [good[i % len(good)] for i in range(n - k)]
    return [picks[i] for i in rng.permutation(n)]


@dataclass
class Stack:
    """One bundle and the checkpoints it was exported from."""

    bundle: Path
    data: Path
    sam_arch: str
    sam_size: int
    sam_checkpoint: Path
    llm: Path
    serve_args: list[str] = field(default_factory=list)


def bundle_stack(bundle: Path, data: Path) -> Stack:
    """An existing bundle served as it is (no checkpoints: no research loop)."""
    return Stack(bundle, data, "", 0, Path(), Path())


def tiny_stack(work: Path) -> Stack:
    bundle, data = build(work)
    return Stack(bundle, data, "custom:64:2:2:1", 256, work / "sam.pth", work / "llm")


def real_stack(work: Path, sam_size: int) -> Stack:
    """The tiny stack's expert with SAM vit_b (INT8 variant) and a Qwen2-0.5B-shaped INT4 LLM."""
    base, data = build(work)
    bundle = work / f"bundle_real_{sam_size}"
    ckpt, llm = work / "sam_vit_b.pth", work / "qwen2-0.5b"
    stack = Stack(bundle, data, "vit_b", sam_size, ckpt, llm, ["--sam-precision", "int8"])
    if (bundle / "manifest.json").is_file():
        return stack
    from lineguard.calibration.sam_variants import build_sam_variants
    from lineguard.export.llm.export import export_llm
    from lineguard.export.sam.checkpoint import build_sam, parse_arch
    from lineguard.export.sam.export import export_sam

    from .llm_speed import build_shape

    if not ckpt.is_file():
        torch.manual_seed(0)
        torch.save(build_sam(parse_arch("vit_b"), 1024).state_dict(), ckpt)  # saved as released: 1024 px
    build_shape("qwen2-0.5b", llm)
    tmp = bundle.with_name(bundle.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp)
    export_sam(ckpt, "vit_b", tmp, image_size=sam_size)  # replaces the tiny SAM
    build_sam_variants(tmp, ("int8",))
    export_llm(llm, tmp, ("int4",))  # replaces the tiny LLM
    tmp.rename(bundle)
    return stack


def research_loop(bundle: Bundle, stack: Stack, frames: list[np.ndarray], gated: bool) -> dict:
    """One frame at a time through the PyTorch models. ``gated=False`` is how the EIAD/Myriad code
    runs: every frame through the expert, SAM and the LLM (the LLM's answer is the verdict).
    ``gated=True`` is kinder to the baseline: SAM and the LLM only for frames over the threshold."""
    from segment_anything import SamPredictor
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lineguard.export.patchcore.fit import PatchCoreConfig, fit_patchcore, input_spec
    from lineguard.export.sam.checkpoint import load_sam, parse_arch

    torch.set_num_threads(2)
    train = [read_image(p) for p in list_images(stack.data / "train" / "good")]
    model, _ = fit_patchcore(train, PatchCoreConfig(size=256, coreset=0.1, seed=0), progress=False)  # = the bundle's
    model.requires_grad_(False)
    sam, _ = load_sam(stack.sam_checkpoint, parse_arch(stack.sam_arch), stack.sam_size)
    predictor = SamPredictor(sam.eval())
    tok = AutoTokenizer.from_pretrained(stack.llm)
    lm = AutoModelForCausalLM.from_pretrained(stack.llm).eval()
    prompts = PromptBuilder(DEFAULT_PROMPT, None, {})
    thr = bundle.thresholds["image"]
    spec = input_spec(256)
    flagged = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for f in frames:
            amap, score = model(torch.from_numpy(to_batch([f], spec)))  # the graph's own input: uint8 NHWC
            over = float(score[0]) >= thr
            flagged += over
            if gated and not over:
                continue
            region = hottest_region(amap.numpy().reshape(amap.shape[-2:]), f.shape[:2], bundle.thresholds.get("pixel"))
            predictor.set_image(f[:, :, ::-1].copy())
            predictor.predict(box=np.array(region.box, np.float32), multimask_output=False)
            result = {"size": [f.shape[1], f.shape[0]], "verdict": "defect" if over else "normal",
                      "score": float(score[0]), "hottest": region.to_dict()}
            msgs = prompts.messages(findings_for_prompt(result, "tile"))
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
            lm.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                        max_new_tokens=DEFAULT_PROMPT["sampling"]["max_new_tokens"], pad_token_id=tok.pad_token_id)
    dt = time.perf_counter() - t0
    return {"fps": round(len(frames) / dt, 3), "frames": len(frames), "flagged": flagged, "seconds": round(dt, 2),
            "gated": gated}


def _side_by_side(exs: list[Expert], frames: list[np.ndarray], batch: int, seconds: float) -> float:
    """Frames/s of ``exs`` each running batches in its own thread for ``seconds``."""
    import threading

    done = [0] * len(exs)
    stop = time.perf_counter() + seconds

    def run(i: int) -> None:
        k = i * batch
        while time.perf_counter() < stop:
            exs[i]([frames[(k + j) % len(frames)] for j in range(batch)])
            done[i] += batch
            k += batch * len(exs)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(exs))]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return round(sum(done) / (time.perf_counter() - t0), 2)


def batch_ms(bundle: Bundle, frames: list[np.ndarray], batch: int, precision: str, repeats: int = 5) -> float:
    """Median in-process time of one batch of ``batch`` frames, one session on every core."""
    ex = Expert(bundle, precision, EngineOptions(device="cpu"))
    ex(frames[:batch])  # first run: allocations
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        ex([frames[(i * batch + j) % len(frames)] for j in range(batch)])
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def allowed_batch(bundle: Bundle, frames: list[np.ndarray], max_latency_ms: float, precision: str) -> dict:
    """The largest batch (1, 2, 4, 8) whose in-process time, twice over, fits the latency limit."""
    times = {b: round(batch_ms(bundle, frames, b, precision), 1) for b in (1, 2, 4, 8)}
    fits = [b for b, ms in times.items() if 2 * ms <= max_latency_ms]
    return {"batch": max(fits) if fits else 1, "batch_ms": times}


def ceiling(bundle: Bundle, frames: list[np.ndarray], batch: int = 8, seconds: float = 6.0,
            precision: str = "fp32") -> dict:
    """The expert alone, in-process, batches of ``batch``: one session on every core, and one
    1-thread session per core side by side; the better of the two is the ceiling."""
    import os

    cores = os.cpu_count() or 1
    out = {}
    for name, n, threads in (("one session", 1, 0), (f"{cores} sessions x 1 thread", cores, 1)):
        exs = [Expert(bundle, precision, EngineOptions(device="cpu", threads=threads)) for _ in range(n)]
        for ex in exs:
            ex(frames[:batch])
        out[name] = _side_by_side(exs, frames, batch, seconds)
    best = max(out, key=out.get)
    return {"fps": out[best], "batch": batch, "best": best, "configs": out}


def sweep(stack: Stack, start: float, a: argparse.Namespace, extra: list[str], name: str) -> dict:
    """``lineguard bench --sweep`` on the stack's bundle with ``extra`` serve arguments."""
    from lineguard.runtime.clients.bench import run_bench

    _, rep = run_bench(str(stack.bundle), str(stack.data), rate=start, duration=a.duration,
                       defect_rate=a.defect_rate, max_latency_ms=a.max_latency_ms, sweep=True, step=1.25,
                       max_steps=20, refine=5,  # past the ceiling, then down or halving: within 1 %
                       serve_args=["--precision", a.precision, *stack.serve_args, *extra],
                       out=str(a.out.with_name(f"{a.out.name}_{name}")))
    best = rep.get("max_sustainable_fps")
    at = next((s for s in rep["steps"] if s["offered_fps"] == best and s["pass"]), None)  # not its failed try
    keys = ("offered_fps", "achieved_verdict_fps", "pass", "flagged", "masks_dropped", "explained",
            "explanations_dropped", "explanations_pending", "server_cpu_percent", "loadgen_cpu_percent")
    return {"max_sustainable_fps": best, "p99_ms_at_max": at["verdict_latency_ms"]["p99"] if at else None,
            "explanation_p50_ms_at_max": at["explanation_latency_ms"]["p50"] if at else None,
            "unaccounted_at_max": at["unaccounted"] if at else None,
            "steps": [{k: s.get(k) for k in keys} | {"p99_ms": s["verdict_latency_ms"]["p99"]} for s in rep["steps"]]}


def int8_expert(stack: Stack) -> bool:
    """Add the expert's INT8 variant (through the accuracy gate) if missing; False if the gate refused it."""
    if "int8" not in Bundle.load(stack.bundle).stage("expert")["variants"]:
        from lineguard.calibration.variants import build_variants

        build_variants(stack.bundle, str(stack.data), str(stack.data), ("int8",), progress=False)
    return "int8" in Bundle.load(stack.bundle).stage("expert")["variants"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/serve"))
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--defect-rate", type=float, default=0.05)
    ap.add_argument("--max-latency-ms", type=float, default=500.0)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--start", type=float, default=0.5, help="first sweep rate, as a share of the ceiling")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/line_rate"))
    ap.add_argument("--real", action="store_true", help="SAM vit_b and a Qwen2-0.5B-shaped LLM instead of tiny ones")
    ap.add_argument("--sam-size", type=int, default=384, help="SAM input size of the --real stack")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "int8"],
                    help="the served expert's variant (and the ceiling's); int8 is added through its gate")
    ap.add_argument("--research-frames", type=int, default=10,
                    help="frames for the ungated research loop (every frame through all three models; 0: no research loop)")
    ap.add_argument("--skip-research", type=Path, help="reuse the research loop's figures from this line_rate JSON")
    ap.add_argument("--bundle", type=Path, help="serve this existing bundle (e.g. the demo's) instead of a built stack")
    ap.add_argument("--data", type=Path, help="with --bundle: its MVTec-layout data folder")
    a = ap.parse_args()
    if a.bundle and not a.data:
        raise SystemExit("--bundle needs --data: the MVTec-layout folder its frames come from")
    if a.bundle:
        stack = bundle_stack(a.bundle, a.data)
    else:
        stack = real_stack(a.work, a.sam_size) if a.real else tiny_stack(a.work)
    if a.precision == "int8" and not int8_expert(stack):
        raise SystemExit("the expert's INT8 variant did not pass its accuracy gate; run with --precision fp32")
    bundle = Bundle.load(stack.bundle)
    frames = frame_mix(stack.data, a.frames, a.defect_rate)
    if a.skip_research:
        old = json.loads(a.skip_research.read_text())
        seq, gated = (old[k] | {"reused_from": str(a.skip_research)} for k in ("research_loop", "research_loop_gated"))
    elif a.bundle or a.research_frames <= 0:
        seq = gated = None
    else:
        seq = research_loop(bundle, stack, frames[:a.research_frames], gated=False)
        gated = research_loop(bundle, stack, frames, gated=True)
    allowed = allowed_batch(bundle, frames, a.max_latency_ms, a.precision)
    ceil = ceiling(bundle, frames, batch=allowed["batch"], precision=a.precision) | allowed
    start = round(a.start * ceil["fps"], 2)
    batch = ["--max-batch", str(allowed["batch"])]
    alone = sweep(stack, start, a, ["--no-sam", "--no-explain", *batch], "expert_only")
    full = sweep(stack, start, a, batch, "all_stages")
    best = full["max_sustainable_fps"]
    report = {"date": time.strftime("%Y-%m-%d"), "stack": "bundle" if a.bundle else "real" if a.real else "tiny",
              "bundle": str(stack.bundle), "expert": a.precision,
              "sam": f"{stack.sam_arch} at {stack.sam_size} px" if stack.sam_arch else "the bundle's",
              "llm": stack.llm.name or "the bundle's", "serve_args": stack.serve_args + batch,
              "defect_rate": a.defect_rate, "max_latency_ms": a.max_latency_ms,
              "research_loop": seq, "research_loop_gated": gated, "expert_alone_ceiling": ceil,
              "served_expert_only": alone, "served_all_stages": full,
              "ratio_vs_research_loop": round(best / seq["fps"], 1) if best and seq else None,
              "ratio_vs_gated_research_loop": round(best / gated["fps"], 1) if best and gated else None,
              "share_of_ceiling": round(best / ceil["fps"], 3) if best else None,
              "expert_only_share_of_ceiling": round(alone["max_sustainable_fps"] / ceil["fps"], 3)
              if alone["max_sustainable_fps"] else None}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_name(a.out.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("served_expert_only", "served_all_stages")} | {
        "served_expert_only_fps": alone["max_sustainable_fps"], "served_all_stages_fps": best}, indent=2))


if __name__ == "__main__":
    main()
