"""anomalib's own exports, imported unmodified: lineguard's scores and maps against anomalib's inference.

    python -m benchmarks.anomalib_interop                         # generated parts (no download)
    python -m benchmarks.anomalib_interop --data ../shared/data/mtd/magnetic_tile --train-every 5

For PatchCore and PaDiM (resnet18, random backbone: no weights can be downloaded here): fit with
anomalib's ``Engine`` on the category's ``train/good``, export with anomalib's default ONNX call
(``engine.export(model, ExportType.ONNX)``) and as a torch model, import the ONNX file with
``lineguard export expert --kind onnx`` exactly as written, then score every test image both ways:
lineguard's runtime (the bundle's expert, fed in the graph's own batch) and anomalib's
``TorchInferencer``. Writes ``anomalib_interop.json`` and a ``.png`` of the score scatter.
Needs the interop extra (``pip install 'lineguard[interop]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lineguard.cli.options import write_report

MODELS = ("patchcore", "padim")


def fixed_mmap_threshold() -> None:
    """glibc raises its mmap threshold after each large free, and anomalib's coreset loop (one
    temporary of N×d floats per step) then fragments the heap: 11 GB RSS for 12 images at 256 px,
    an OOM kill for 24. A fixed threshold (as ``MALLOC_MMAP_THRESHOLD_`` would set) keeps it at 1.2 GB."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB
    except OSError:  # not glibc: nothing to fix
        pass


def fit_and_export(kind: str, category: Path, out: Path, size: int = 256, seed: int = 0) -> dict[str, Path]:
    """Fit ``kind`` with anomalib's Engine on ``category/train/good``; export ONNX (default call) and torch."""
    import torch
    from anomalib.data import Folder
    from anomalib.deploy import ExportType
    from anomalib.engine import Engine
    from anomalib.models import Padim, Patchcore

    fixed_mmap_threshold()
    torch.manual_seed(seed)
    defects = sorted(p.name for p in (category / "test").iterdir() if p.is_dir() and p.name != "good")
    dm = Folder(name=category.name, root=category, normal_dir="train/good", normal_test_dir="test/good",
                abnormal_dir=[f"test/{d}" for d in defects], train_batch_size=8, eval_batch_size=8,
                num_workers=0, seed=seed)
    cls = Patchcore if kind == "patchcore" else Padim
    # anomalib's own default pre-processor (resize to 256, ImageNet normalisation), at ``size``
    common = {"backbone": "resnet18", "pre_trained": False, "evaluator": False, "visualizer": False,
              "pre_processor": cls.configure_pre_processor(image_size=(size, size))}
    model = Patchcore(coreset_sampling_ratio=0.1, **common) if kind == "patchcore" else Padim(n_features=64, **common)
    engine = Engine(default_root_dir=str(out), logger=False, accelerator="cpu", devices=1,
                    enable_progress_bar=False, enable_model_summary=False)
    engine.fit(model=model, datamodule=dm)
    onnx_path = engine.export(model=model, export_type=ExportType.ONNX, export_root=str(out))
    torch_path = engine.export(model=model, export_type=ExportType.TORCH, export_root=str(out))
    return {"onnx": Path(onnx_path), "torch": Path(torch_path)}


def anomalib_inference(torch_path: Path, files: list[Path]) -> dict[str, np.ndarray]:
    """anomalib's TorchInferencer on each file: scores, labels and maps as anomalib reports them."""
    from anomalib.deploy import TorchInferencer

    os.environ["TRUST_REMOTE_CODE"] = "1"  # our own checkpoint, written a moment ago
    inf = TorchInferencer(path=torch_path, device="cpu")
    preds = [inf.predict(f) for f in files]
    return {"scores": np.array([float(p.pred_score.reshape(-1)[0]) for p in preds]),
            "labels": np.array([bool(p.pred_label.reshape(-1)[0]) for p in preds]),
            "maps": np.stack([p.anomaly_map.reshape(p.anomaly_map.shape[-2:]).numpy() for p in preds])}


def lineguard_inference(bundle: Path, files: list[Path]) -> dict[str, np.ndarray]:
    """The bundle's expert through lineguard's runtime: the graph's own batch, short batches padded."""
    from lineguard.runtime.bundle import Bundle
    from lineguard.runtime.imageio import read_image
    from lineguard.runtime.stages.expert import Expert

    results = Expert(Bundle.load(bundle))([read_image(f) for f in files])
    return {"scores": np.array([r.score for r in results]),
            "labels": np.array([r.verdict == "defect" for r in results]),
            "maps": np.stack([r.anomaly_map for r in results])}


def compare(ref: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> dict[str, Any]:
    """Pearson of scores and of maps, largest differences, and verdict agreement."""
    return {
        "images": int(len(ref["scores"])),
        "score_pearson": float(np.corrcoef(ref["scores"], ours["scores"])[0, 1]),
        "map_pearson": float(np.corrcoef(ref["maps"].ravel(), ours["maps"].ravel())[0, 1]),
        "max_abs_score_diff": float(np.abs(ref["scores"] - ours["scores"]).max()),
        "verdict_agreement": float((ref["labels"] == ours["labels"]).mean()),
    }


def subset(category: Path, out: Path, every: int) -> Path:
    """A category with every n-th training image and the whole test set, as symlinks (nothing copied)."""
    import shutil

    from lineguard.runtime.imageio import list_images

    shutil.rmtree(out, ignore_errors=True)
    (out / "train" / "good").mkdir(parents=True)
    for f in list_images(category / "train" / "good")[::every]:
        (out / "train" / "good" / f.name).symlink_to(f.resolve())
    (out / "test").symlink_to((category / "test").resolve())
    return out


def category_images(category: Path) -> tuple[list[Path], np.ndarray]:
    """Every test image of the category and whether it is a defect (``calibration.dataset``'s reading)."""
    from lineguard.calibration.dataset import test_samples

    samples = test_samples(category)
    return [x.path for x in samples], np.array([bool(x.label) for x in samples])


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from lineguard.calibration.metrics import auroc

    return None if labels.all() or not labels.any() else float(auroc(labels, scores))


def plot(report: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report["models"]), figsize=(4.5 * len(report["models"]), 4.2), squeeze=False)
    for ax, (name, r) in zip(axes[0], report["models"].items()):
        ax.scatter(r["anomalib_scores"], r["lineguard_scores"], s=10)
        ax.axline((0, 0), slope=1, color="k", lw=0.6, ls="--")
        ax.set(xlabel="anomalib TorchInferencer pred_score", ylabel="lineguard runtime score",
               title=f"{name}: Pearson {r['parity']['score_pearson']:.4f}")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="MVTec-layout category (default: generated parts)")
    ap.add_argument("--size", type=int, default=256, help="the size anomalib trains and exports at")
    ap.add_argument("--train-every", type=int, default=1,
                    help="fit on every n-th train/good image (anomalib's coreset step is O(bank) per pick)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lineguard-anomalib")
    ap.add_argument("--out", type=Path, default=Path("anomalib_interop.json"))
    a = ap.parse_args()
    category = a.data
    if category is None:
        from lineguard.synth.tiles import make_dataset

        category = make_dataset(a.work / "data", "tile", n_train=24, n_good=8, n_defect=8, size=128, seed=0)
    if a.train_every > 1:
        category = subset(category, a.work / "subset" / category.name, a.train_every)
    files, labels = category_images(category)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "data": str(category), "size": a.size,
                              "command": " ".join(["python -m benchmarks.anomalib_interop", *sys.argv[1:]]),
                              "models": {}}
    for kind in a.models.split(","):
        t0 = time.perf_counter()
        paths = fit_and_export(kind, category, a.work / kind, a.size)
        fit_s = time.perf_counter() - t0
        bundle = a.work / f"{kind}-bundle"
        subprocess.run([sys.executable, "-m", "lineguard", "export", "expert", "--kind", "onnx", "--model",
                        str(paths["onnx"]), "--out", str(bundle), "--force"], check=True)
        ref, ours = anomalib_inference(paths["torch"], files), lineguard_inference(bundle, files)
        r = {"fit_and_export_s": round(fit_s, 1), "onnx": str(paths["onnx"]), "parity": compare(ref, ours),
             "image_auroc": {"anomalib": _auroc(labels, ref["scores"]), "lineguard": _auroc(labels, ours["scores"])},
             "anomalib_scores": ref["scores"].round(5).tolist(), "lineguard_scores": ours["scores"].round(5).tolist()}
        report["models"][kind] = r
        print(json.dumps({"model": kind, **r["parity"], "image_auroc": r["image_auroc"]}), flush=True)
    write_report(a.out, report, plot)
    print(f"wrote {a.out} and {a.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
