"""Measured agreement between an exported graph and its source, recorded in the manifest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def map_parity(reference: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
               candidate: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
               inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Compare (anomaly_map, score) of two implementations on named input batches.

    Reports, per input set and overall, the worst absolute map error, the Pearson correlation
    of the maps, and the worst absolute and relative score error.
    """
    out: dict[str, Any] = {}
    all_ref, all_cand = [], []
    for name, x in inputs.items():
        ref_map, ref_score = reference(x)
        cand_map, cand_score = candidate(x)
        all_ref.append(ref_map.ravel())
        all_cand.append(cand_map.ravel())
        scale = float(np.abs(ref_score).max()) or 1.0
        out[name] = {
            "images": int(x.shape[0]),
            "map_max_abs_err": float(np.abs(ref_map - cand_map).max()),
            "map_pearson": pearson(ref_map, cand_map),
            "score_max_abs_err": float(np.abs(ref_score - cand_score).max()),
            "score_max_rel_err": float(np.abs(ref_score - cand_score).max() / scale),
        }
    out["map_pearson"] = pearson(np.concatenate(all_ref), np.concatenate(all_cand))
    out["map_max_abs_err"] = max(v["map_max_abs_err"] for v in out.values() if isinstance(v, dict))
    out["score_max_rel_err"] = max(v["score_max_rel_err"] for v in out.values() if isinstance(v, dict))
    return out


def torch_vs_onnx(model: Any, engine: Any, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """``map_parity`` of a PyTorch expert (uint8 image → map, score) against its exported graph
    run by ``engine`` (input ``image``, outputs ``anomaly_map`` and ``score``)."""
    import torch

    def ref(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            a, s = model(torch.from_numpy(x))
        return a.numpy(), s.numpy()

    def ort(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = engine.run({"image": x})
        return r["anomaly_map"], r["score"]

    return map_parity(ref, ort, inputs)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays taken as flat vectors (agreement of a variant with its source)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    if den == 0.0:  # both constant: they agree exactly or not at all
        return 1.0 if np.allclose(a, b) else 0.0
    return float((a * b).sum() / den)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
