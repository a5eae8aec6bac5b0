"""The anomaly expert stage: frames → anomaly maps and scores, batched through one engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import Engine, EngineOptions, tensorrt_available
from lineguard.runtime.errors import BundleError, LineguardError
from lineguard.runtime.stages.preprocess import to_batch
from lineguard.runtime.stages.scoring import normalize, verdict


@dataclass
class ExpertResult:
    anomaly_map: np.ndarray  # float32 [h, w] at the model's input size
    score: float  # raw, in the expert's own units
    score_norm: float | None  # 0..1 with the threshold at 0.5, once calibrated
    verdict: str | None  # "defect" / "good", once calibrated


class Expert:
    """Runs a bundle's expert. Frames of any size and channel count; batches up to ``max_batch``."""

    def __init__(self, bundle: Bundle, precision: str = "fp32", opts: EngineOptions | None = None,
                 graph: str | Path | None = None, engine: Any = None) -> None:
        """``graph`` runs another file than the variant's (a candidate that calibration is gating);
        ``engine`` one already made (the station's remote engine on a Triton pool)."""
        self.bundle = bundle
        self.precision = precision
        stage = bundle.stage("expert")
        self.spec = bundle.input_spec("expert")
        opts = opts or EngineOptions()
        if engine is None and graph is None and precision == "trt":  # TensorRT builds its own int8/fp16 engine from the fp32 graph
            if not tensorrt_available():
                raise LineguardError("precision trt needs onnxruntime-gpu with TensorRT and a GPU; "
                                     "this machine has neither (run fp32/int8 here)")
            trt = stage["variants"]["trt"].get("trt_options", {})
            opts = replace(opts, trt_int8=bool(trt.get("int8", False)), trt_fp16=bool(trt.get("fp16", True)),
                           trt_calibration_table=trt.get("calibration_table_name"),
                           trt_cache_dir=str(bundle.root / trt.get("cache_dir", "engines/trt")))
        if opts.trt_cache_dir is None:  # TensorRT engines are cached beside the graphs they were built from
            opts = replace(opts, trt_cache_dir=str(bundle.root / "engines" / "trt"))
        self.engine = engine or Engine(graph or bundle.variant_path("expert", precision), opts)
        roles = stage.get("roles", {})
        self.map_name = roles.get("anomaly_map") or "anomaly_map"
        self.score_name = roles.get("score")
        if self.map_name not in self.engine.outputs:
            raise BundleError(f"{self.engine.path}: has no output {self.map_name!r} (outputs: {self.engine.outputs})")
        if self.spec.name not in self.engine.inputs:
            raise BundleError(f"{self.engine.path}: has no input {self.spec.name!r}")
        batch_dim = self.engine.inputs[self.spec.name].shape[0]
        if isinstance(batch_dim, int) and batch_dim > 0:  # fixed at export: fed exactly that many, padded
            self.spec = replace(self.spec, batch=batch_dim)
        self.max_batch = self.spec.batch or 64

    def __call__(self, frames: Sequence[np.ndarray]) -> list[ExpertResult]:
        out: list[ExpertResult] = []
        # a graph that resizes itself is fed runs of one frame size (in order), each as it is
        runs = [list(g) for _, g in groupby(frames, key=lambda f: f.shape[:2])] if self.spec.any_size \
            else [frames]
        for run in runs:
            for i in range(0, len(run), self.max_batch):
                out.extend(self._run(run[i : i + self.max_batch]))
        return out

    def _run(self, frames: Sequence[np.ndarray]) -> list[ExpertResult]:
        x = to_batch(frames, self.spec)
        names = [self.map_name] + ([self.score_name] if self.score_name else [])
        r = self.engine.run({self.spec.name: x}, names)
        n = len(frames)  # a padded batch's extra rows are dropped here
        maps = r[self.map_name].astype(np.float32, copy=False)
        maps = maps.reshape(maps.shape[0], *maps.shape[-2:])[:n]  # [N,1,h,w] or [N,h,w] → [n,h,w]
        scores = r[self.score_name].reshape(len(x), -1)[:n, 0] if self.score_name else maps.reshape(n, -1).max(1)
        norm, thr = self.bundle.normalization, self.bundle.thresholds
        return [
            ExpertResult(m, float(s), None if (n := normalize(s, norm, thr.get("image"))) is None else float(n),
                         verdict(float(s), thr))
            for m, s in zip(maps, scores)
        ]
