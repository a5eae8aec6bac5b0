"""``lineguard train expert``: a self-supervised anomaly segmenter trained from scratch on
normal images with synthetic anomalies pasted in, exported to one ONNX graph that any bundle
imports with ``lineguard export expert --kind onnx``.

No pretrained weights: on a fresh machine this is the expert that works (random-feature
PatchCore misses most generated defects, see BENCHMARKS.md).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lineguard.calibration.dataset import read_frames
from lineguard.export.onnx_export import export_onnx
from lineguard.export.parity import torch_vs_onnx
from lineguard.export.versions import library_versions
from lineguard.runtime.bundle.engine import Engine, EngineOptions
from lineguard.runtime.errors import InputError
from lineguard.runtime.imageio import normal_images
from lineguard.runtime.stages.preprocess import resize
from lineguard.train.anomalies import paste_anomaly
from lineguard.train.loop import Steps
from lineguard.train.losses import bce_dice
from lineguard.train.segnet import DeployedSegNet, SegNet, normalize

MIN_PEARSON = 0.999
log = logging.getLogger("lineguard.train")


@dataclass
class ExpertTrainConfig:
    size: int = 256  # the deployed graph's input side; frames are resized to it
    crop: int = 128  # training crops: the network is fully convolutional
    batch: int = 16
    steps: int = 700
    minutes: float = 0.0  # > 0: fail if the steps take longer (a limit, never a shorter run)
    width: int = 24
    norm: str = "batch"  # or "group" for an expert of several products (see SegNet)
    lr: float = 2e-3
    anomaly_share: float = 0.75  # share of training crops with a pasted anomaly
    seed: int = 0


class CropSampler:
    """Random crops of normal images, most with an anomaly pasted in."""

    def __init__(self, images: list[np.ndarray], cfg: ExpertTrainConfig) -> None:
        self.images, self.cfg = images, cfg
        self.rng = np.random.default_rng(cfg.seed)

    def crop(self) -> np.ndarray:
        img = self.images[int(self.rng.integers(len(self.images)))]
        c, h, w = self.cfg.crop, img.shape[0], img.shape[1]
        y, x = int(self.rng.integers(0, h - c + 1)), int(self.rng.integers(0, w - c + 1))
        # no flips: parts have a handedness (printed text, notches) that a flip would make normal
        return np.ascontiguousarray(img[y:y + c, x:x + c])

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(self.cfg.batch):
            img = self.crop()
            label = np.zeros(img.shape[:2], bool)
            if self.rng.random() < self.cfg.anomaly_share:
                img, label = paste_anomaly(img, self.crop(), self.rng)
            xs.append(img)
            ys.append(label)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)[:, None].astype(np.float32))


def load_normals(folder: str | Path, size: int) -> list[np.ndarray]:
    """Normal images of a folder (or an MVTec category's train/good), BGR at ``size`` square."""
    frames = read_frames(normal_images(folder), desc="read normals")
    out = []
    for f in frames:
        f = f if f.ndim == 3 else np.repeat(f[..., None], 3, axis=2)
        out.append(resize(f[..., :3], size, size))
    return out


def train_segnet(images: list[np.ndarray], cfg: ExpertTrainConfig, progress: bool = True) -> tuple[SegNet, dict]:
    if cfg.crop > cfg.size:
        raise InputError(f"--crop {cfg.crop} is larger than --size {cfg.size}")
    torch.manual_seed(cfg.seed)
    net = SegNet(cfg.width, cfg.norm)
    loop = Steps(net.parameters(), cfg.lr, cfg.steps, cfg.minutes, "train expert", progress)
    sampler = CropSampler(images, cfg)
    net.train()
    for _ in loop:
        x, y = sampler.batch()
        logits = F.interpolate(net(normalize(x)), size=y.shape[-2:], mode="bilinear", align_corners=False)
        loop.step(bce_dice(logits, y))
    net.eval()
    record = loop.record() | {"train_images": len(images), "parameters": sum(p.numel() for p in net.parameters())}
    return net, record


def export_segnet(net: SegNet, out: str | Path, cfg: ExpertTrainConfig, images: list[np.ndarray],
                  record: dict[str, Any]) -> dict[str, Any]:
    """Write the deployable graph to ``out`` (uint8 NHWC BGR in, map and score out), check it
    against PyTorch on real and random frames, and write ``out`` + ``.json`` with the record."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = DeployedSegNet(net).eval()
    real = np.stack(images[:4])
    noise = np.random.default_rng(cfg.seed).integers(0, 256, (2, cfg.size, cfg.size, 3), dtype=np.uint8)
    prov = export_onnx(model, (torch.from_numpy(real[:2]),), out, ["image"], ["anomaly_map", "score"],
                       {"image": {0: "N"}, "anomaly_map": {0: "N"}, "score": {0: "N"}},
                       {"anomaly_map": ["N", 1, cfg.size, cfg.size], "score": ["N"]})
    engine = Engine(out, EngineOptions(device="cpu", warmup=0))
    parity = torch_vs_onnx(model, engine, {"real": real, "random": noise})
    if parity["map_pearson"] < MIN_PEARSON:
        raise RuntimeError(f"exported expert disagrees with PyTorch: map Pearson {parity['map_pearson']:.5f}")
    info = {"kind": "segnet", "config": asdict(cfg), "training": record, "parity": parity,
            "input": {"layout": "NHWC", "dtype": "uint8", "color": "BGR", "size": cfg.size},
            "export": prov, "libraries": library_versions()}
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def train_expert(train: str | Path, out: str | Path, cfg: ExpertTrainConfig, progress: bool = True) -> dict[str, Any]:
    """Normal images → trained, exported, parity-checked ``out`` ONNX file; returns its record."""
    images = load_normals(train, cfg.size)
    net, record = train_segnet(images, cfg, progress)
    record["train_dir"] = str(normal_images(train)[0].parent.resolve())  # train/good of a category root
    return export_segnet(net, out, cfg, images, record)
