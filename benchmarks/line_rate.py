"""Does the served station beat what a user would otherwise run? Sustained rate vs the research loop.

    python -m benchmarks.line_rate [--work runs/serve] [--frames 60] [--defect-rate 0.05]
                                   [--max-latency-ms 500] [--out runs/bench/line_rate]

Same checkpoints, same images, one run:
- **sequential research loop** (as the EIAD/Myriad code runs): PyTorch eager PatchCore, one frame
  at a time; for a flagged frame segment-anything's ``SamPredictor`` (box from the hottest
  region) and transformers' ``generate`` on the findings prompt;
- **expert-alone ceiling**: the bundle's expert in ONNX Runtime, in-process, batches of 8;
- **lineguard**: `lineguard bench --sweep` on the served bundle (all three stages), open loop at
  ``--defect-rate``; the highest rate with p99 ≤ ``--max-latency-ms``, no drops, every frame answered.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from runtime.bundle import Bundle
from runtime.engine import EngineOptions
from runtime.expert import Expert
from runtime.findings import hottest_region
from runtime.imageio import list_images, read_image
from runtime.preprocess import to_batch
from runtime.prompting import DEFAULT_PROMPT, PromptBuilder, findings_for_prompt

from .serve_threads import build


def frame_mix(data: Path, n: int, defect_rate: float, seed: int = 0) -> list[np.ndarray]:
    good = [read_image(p) for p in list_images(data / "test" / "good")]
    bad = [read_image(p) for d in sorted((data / "test").iterdir()) if d.name != "good" for p in list_images(d)]
    rng = np.random.default_rng(seed)
    k = max(1, round(n * defect_rate))
    picks = [bad[i % len(bad)] for i in range(k)] + [good[i % len(good)] for i in range(n - k)]
    return [picks[i] for i in rng.permutation(n)]


def research_loop(bundle: Bundle, work: Path, frames: list[np.ndarray]) -> dict:
    """One frame at a time through the PyTorch models, as research code runs them."""
    from segment_anything import SamPredictor
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from export.patchcore.fit import PatchCoreConfig, fit_patchcore, input_spec
    from export.sam.checkpoint import build_sam, parse_arch

    torch.set_num_threads(2)
    train = [read_image(p) for p in list_images(work / "data" / "tile" / "train" / "good")]
    model, _ = fit_patchcore(train, PatchCoreConfig(size=256, coreset=0.1, seed=0), progress=False)  # = the bundle's
    model.requires_grad_(False)
    sam = build_sam(parse_arch("custom:64:2:2:1"), 256)
    sam.load_state_dict(torch.load(work / "sam.pth", weights_only=True))
    predictor = SamPredictor(sam.eval())
    tok = AutoTokenizer.from_pretrained(work / "llm")
    lm = AutoModelForCausalLM.from_pretrained(work / "llm").eval()
    prompts = PromptBuilder(DEFAULT_PROMPT, None, {})
    thr = bundle.thresholds["image"]
    spec = input_spec(256)
    flagged = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for f in frames:
            amap, score = model(torch.from_numpy(to_batch([f], spec)))  # the graph's own input: uint8 NHWC
            if float(score[0]) < thr:
                continue
            flagged += 1
            region = hottest_region(amap.numpy().reshape(amap.shape[-2:]), f.shape[:2], bundle.thresholds.get("pixel"))
            predictor.set_image(f[:, :, ::-1].copy())
            predictor.predict(box=np.array(region.box, np.float32), multimask_output=False)
            result = {"size": [f.shape[1], f.shape[0]], "verdict": "defect", "score": float(score[0]),
                      "hottest": region.to_dict()}
            msgs = prompts.messages(findings_for_prompt(result, "tile"))
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
            lm.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                        max_new_tokens=DEFAULT_PROMPT["sampling"]["max_new_tokens"], pad_token_id=tok.pad_token_id)
    dt = time.perf_counter() - t0
    return {"fps": round(len(frames) / dt, 2), "frames": len(frames), "flagged": flagged, "seconds": round(dt, 2)}


def ceiling(bundle: Bundle, frames: list[np.ndarray], batch: int = 8, repeats: int = 3) -> dict:
    ex = Expert(bundle, "fp32", EngineOptions(device="cpu"))
    ex(frames[:batch])
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(frames), batch):
            ex(frames[i:i + batch])
        rates.append(len(frames) / (time.perf_counter() - t0))
    return {"fps": round(float(np.median(rates)), 2), "batch": batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/serve"))
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--defect-rate", type=float, default=0.05)
    ap.add_argument("--max-latency-ms", type=float, default=500.0)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--start", type=float, default=0.3, help="first sweep rate, as a share of the ceiling")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/line_rate"))
    a = ap.parse_args()
    bundle_path, data = build(a.work)
    bundle = Bundle.load(bundle_path)
    frames = frame_mix(data, a.frames, a.defect_rate)
    seq = research_loop(bundle, a.work, frames)
    ceil = ceiling(bundle, frames)
    from runtime.bench import run_bench

    _, rep = run_bench(str(bundle_path), str(data), rate=round(a.start * ceil["fps"], 2), duration=a.duration,
                       defect_rate=a.defect_rate, max_latency_ms=a.max_latency_ms, sweep=True, step=1.1,
                       out=str(a.out.with_name(a.out.name + "_sweep")))
    best = rep.get("max_sustainable_fps")
    best_step = next((s for s in rep["steps"] if s["offered_fps"] == best), None)
    report = {"date": time.strftime("%Y-%m-%d"), "defect_rate": a.defect_rate, "max_latency_ms": a.max_latency_ms,
              "sequential_research_loop": seq, "expert_alone_ceiling": ceil, "lineguard_max_sustainable_fps": best,
              "lineguard_p99_ms_at_max": best_step["verdict_latency_ms"]["p99"] if best_step else None,
              "unaccounted_at_max": best_step["unaccounted"] if best_step else None,
              "ratio_vs_sequential": round(best / seq["fps"], 1) if best else None,
              "share_of_ceiling": round(best / ceil["fps"], 3) if best else None,
              "steps": [{k: s[k] for k in ("offered_fps", "achieved_verdict_fps", "pass")} | {
                  "p99_ms": s["verdict_latency_ms"]["p99"]} for s in rep["steps"]]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_name(a.out.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
