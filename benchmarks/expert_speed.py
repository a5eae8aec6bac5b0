"""Expert frames/s: ONNX Runtime fp32 and int8 (batched and batch 1) vs PyTorch eager, same model, one run.

    python -m benchmarks.expert_speed [--train DIR] [--size 256] [--batches 1,2,4,8] [--out runs/bench]

PyTorch eager at batch 1 is the research-style loop (one frame at a time, as the EIAD/Myriad
code runs its expert). Each configuration is warmed up, then timed over ``--repeats`` passes of
the same frames; the median pass gives frames/s. Ratios are the figure to quote: absolute
rates hold for this machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lineguard.calibration.quantize import QuantConfig, preprocess, quantize_int8
from lineguard.export.expert import export_patchcore
from lineguard.export.patchcore.fit import PatchCoreConfig, fit_patchcore, input_spec
from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import Engine, EngineOptions
from lineguard.runtime.imageio import list_images, read_image
from lineguard.runtime.stages.preprocess import to_batch
from lineguard.synth.tiles import make_dataset


def time_pass(fn: Callable[[np.ndarray], object], frames: np.ndarray, batch: int, repeats: int) -> dict:
    """Median frames/s over ``repeats`` passes through ``frames`` in batches of ``batch``."""
    for i in range(0, min(len(frames), 2 * batch), batch):  # warm-up
        fn(frames[i : i + batch])
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(frames), batch):
            fn(frames[i : i + batch])
        rates.append(len(frames) / (time.perf_counter() - t0))
    return {"fps_median": statistics.median(rates), "fps_all": rates, "batch": batch}


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch_threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", help="normal images to fit on (default: 30 generated parts)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batches", default="1,2,4,8", help="ONNX Runtime batch sizes to time")
    ap.add_argument("--frames", type=int, default=32, help="frames per timed pass")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="runs/bench")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        train = Path(a.train) if a.train else make_dataset(tmp, "tile", n_train=30, n_good=0, n_defect=0, size=a.size)
        cfg = PatchCoreConfig(size=a.size)
        bundle = Bundle.load(export_patchcore(train, Path(tmp) / "bundle", cfg, force=True))
        files = list_images(train / "train" / "good" if (train / "train").is_dir() else train)
        model, record = fit_patchcore([read_image(p) for p in files], cfg, progress=False)  # same seed: same model
        model.requires_grad_(False)
        rng = np.random.default_rng(0)
        frames = to_batch([read_image(files[i % len(files)]) for i in range(a.frames)], input_spec(a.size))
        frames = np.clip(frames.astype(np.int16) + rng.integers(-8, 9, frames.shape), 0, 255).astype(np.uint8)
        engine = Engine(bundle.variant_path("expert", "fp32"), EngineOptions(device="cpu"))
        with torch.no_grad():
            ref = model(torch.from_numpy(frames[:2]))[0].numpy()
        assert np.corrcoef(ref.ravel(), engine.run({"image": frames[:2]})["anomaly_map"].ravel())[0, 1] > 0.999

        def torch_fn(x: np.ndarray) -> object:
            with torch.no_grad():
                return model(torch.from_numpy(x))

        def ort_fn(x: np.ndarray) -> object:
            return engine.run({"image": x})

        # INT8 as `lineguard quantize` writes it when the gate passes: QDQ body, dynamic-int8 bank tail
        pre = preprocess(bundle.variant_path("expert", "fp32"), Path(tmp) / "pre.onnx")
        calib = [read_image(p) for p in files[:16]]
        quantize_int8(pre, Path(tmp) / "int8.onnx", calib, input_spec(a.size), QuantConfig())
        int8 = Engine(Path(tmp) / "int8.onnx", EngineOptions(device="cpu"))
        fp32_maps = engine.run({"image": frames})["anomaly_map"]
        int8_pearson = float(np.corrcoef(fp32_maps.ravel(), int8.run({"image": frames})["anomaly_map"].ravel())[0, 1])

        def int8_fn(x: np.ndarray) -> object:
            return int8.run({"image": x})

        batches = [int(b) for b in a.batches.split(",")]
        results = {"torch_eager_b1": time_pass(torch_fn, frames, 1, a.repeats),
                   f"torch_eager_b{max(batches)}": time_pass(torch_fn, frames, max(batches), a.repeats)}
        results |= {f"ort_fp32_b{b}": time_pass(ort_fn, frames, b, a.repeats) for b in batches}
        results |= {f"ort_int8_b{b}": time_pass(int8_fn, frames, b, a.repeats) for b in batches[:2]}
    base = results["torch_eager_b1"]["fps_median"]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "model": {"backbone": cfg.backbone, "size": a.size, "bank_size": record["bank_size"],
                  "bank_dim": record["bank_dim"], "score_mode": cfg.score_mode},
        "provider": engine.provider,
        "int8_map_pearson_vs_fp32": int8_pearson,
        "results": results,
        "ratio_vs_torch_eager_b1": {k: v["fps_median"] / base for k, v in results.items()},
    }
    (out / "expert_speed.json").write_text(json.dumps(report, indent=2))
    print(f"{'config':<20}{'frames/s':>10}{'vs torch b1':>13}")
    for k, v in results.items():
        print(f"{k:<20}{v['fps_median']:>10.1f}{v['fps_median'] / base:>12.2f}x")
    print(f"int8 map Pearson vs fp32: {int8_pearson:.4f}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        names = list(results)
        ax.barh(names, [results[k]["fps_median"] for k in names],
                color=["#999" if k.startswith("torch") else "#37a" if "fp32" in k else "#c63" for k in names])
        ax.set_xlabel("frames/s (median)")
        ax.set_title(f"PatchCore {cfg.backbone} {a.size}px, bank {record['bank_size']}, {machine()['cores']} cores")
        fig.tight_layout()
        fig.savefig(out / "expert_speed.png", dpi=120)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
