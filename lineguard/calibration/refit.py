"""Refitting a bundle's expert on a subset of normal frames, for the k-fold threshold rule.

Only experts fitted by lineguard (PatchCore) can be refitted: their configuration and backbone
source are in the manifest. Needs the export extra (torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lineguard.calibration.thresholds import Refit
from lineguard.runtime.bundle import Bundle
from lineguard.runtime.errors import LineguardError


def patchcore_refit(bundle: Bundle, progress: bool = False) -> Refit:
    """A Refit that builds the bundle's PatchCore again (same backbone, config, seed) on other frames."""
    try:
        import torch

        from lineguard.export.patchcore.fit import PatchCoreConfig, fit_patchcore
        from lineguard.runtime.stages.preprocess import to_batch
    except ImportError as e:
        raise LineguardError(f"the k-fold rule refits the expert and needs the export extra ({e.name} is "
                             "missing): pip install 'lineguard[export]', or pass --rule f1/manual") from None
    stage = bundle.stage("expert")
    opts = stage.get("options", {})
    source = stage["variants"]["fp32"].get("provenance", {}).get("source", {})
    weights = source.get("weights")
    if weights and not Path(weights).is_file():
        raise LineguardError(f"{weights}: the backbone weights this expert was fitted with are gone; "
                             "the k-fold rule needs them (or pass --rule f1/manual)")
    fields = PatchCoreConfig.__dataclass_fields__
    cfg = PatchCoreConfig(**{k: v for k, v in opts.items() if k in fields and k != "weights"}, weights=weights)
    spec = bundle.input_spec("expert")

    def refit(frames: Sequence[np.ndarray]) -> Callable[[Sequence[np.ndarray]], tuple[np.ndarray, list[np.ndarray]]]:
        model, _ = fit_patchcore(frames, cfg, progress=progress)

        @torch.no_grad()
        def score(test: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
            scores, maps = [], []
            for i in range(0, len(test), cfg.batch):
                amap, s = model(torch.from_numpy(to_batch(test[i : i + cfg.batch], spec)))
                scores.append(s.numpy())
                maps.extend(amap[:, 0].numpy())
            return np.concatenate(scores).astype(np.float64), maps

        return score

    return refit
