"""The accuracy gate: a quantized variant is written only if it scores like fp32.

With labelled defect images the gate is the task itself: image and pixel AUROC may drop by at
most ``max_drop`` points. With normal images only, it is agreement: the candidate's maps must
correlate with fp32's (Pearson ≥ ``min_pearson``). Every measured delta is kept, pass or fail,
so the manifest says how close each variant is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lineguard.calibration.dataset import Labelled
from lineguard.calibration.evaluate import Scored, evaluate_scored
from lineguard.export.parity import pearson


@dataclass
class Gate:
    max_drop: float = 0.5  # AUROC points (0.5 = 0.005)
    min_pearson: float = 0.98  # normal-only: map agreement with fp32
    min_score_pearson: float = 0.95  # normal-only: image-score agreement with fp32
    thresholds: dict[str, Any] = field(default_factory=dict)

    def check(self, ref: Scored, cand: Scored, data: Labelled | None,
              ref_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        """Deltas of ``cand`` against ``ref`` and the verdict: ``{"passed", "reason", ...}``."""
        maps_r = np.concatenate([m.ravel() for m in ref.maps])
        maps_c = np.concatenate([m.ravel() for m in cand.maps])
        span = float(maps_r.max() - maps_r.min()) or 1.0
        out: dict[str, Any] = {
            "images": len(ref.scores),
            "score_pearson": pearson(ref.scores, cand.scores),
            "map_pearson": pearson(maps_r, maps_c),
            "map_max_abs_err_rel": float(np.abs(maps_r - maps_c).max() / span),
            "score_max_rel_err": float(np.abs(ref.scores - cand.scores).max() / (np.abs(ref.scores).max() or 1.0)),
        }
        if (t := self.thresholds.get("image")) is not None:
            out["verdict_agreement"] = float(((ref.scores >= t) == (cand.scores >= t)).mean())
        failures = []
        if data is not None and len(set(data.labels.tolist())) == 2:
            ref_metrics = ref_metrics or evaluate_scored(data, ref)
            cand_metrics = evaluate_scored(data, cand)
            for key in ("image_auroc", "pixel_auroc"):
                r, c = ref_metrics.get(key), cand_metrics.get(key)
                if r is None or c is None:
                    continue
                drop = 100.0 * (r - c)
                out[f"{key}_fp32"], out[key], out[f"{key}_drop_points"] = r, c, drop
                if drop > self.max_drop:
                    failures.append(f"{key} drops {drop:.2f} points (> {self.max_drop})")
            out["basis"] = f"AUROC drop ≤ {self.max_drop} points on {len(data.labels)} labelled images"
        else:
            if out["map_pearson"] < self.min_pearson:
                failures.append(f"map Pearson {out['map_pearson']:.4f} < {self.min_pearson}")
            if out["score_pearson"] < self.min_score_pearson:
                failures.append(f"score Pearson {out['score_pearson']:.4f} < {self.min_score_pearson}")
            out["basis"] = (f"map Pearson ≥ {self.min_pearson} and score Pearson ≥ {self.min_score_pearson} "
                            f"on {len(ref.scores)} normal images")
        out["passed"] = not failures
        out["reason"] = "; ".join(failures) or "within the gate"
        return out
