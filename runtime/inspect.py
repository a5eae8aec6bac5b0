"""`lineguard inspect`: one-shot inspection of image files with a bundle's expert."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .bundle import Bundle
from .classify import from_bundle
from .defects import find_defects
from .engine import EngineOptions
from .errors import LineguardError
from .expert import Expert, ExpertResult
from .findings import hottest_region, map_stats
from .imageio import list_images, read_image
from .overlay import heat_overlay
from .sam import SamStage

log = logging.getLogger("lineguard.inspect")


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders expand to the images anywhere below them."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = list_images(p, recursive=True)
            if not found:
                raise LineguardError(f"{p}: no image files in this folder")
            out.extend(found)
        else:
            out.append(p)
    return out


def describe(frame: np.ndarray, r: ExpertResult, pixel_t: float | None) -> dict[str, Any]:
    """One frame's verdict record: size, score, verdict, map statistics, hottest region."""
    return {"size": [int(frame.shape[1]), int(frame.shape[0])], "score": r.score, "score_norm": r.score_norm,
            "verdict": r.verdict, "map": map_stats(r.anomaly_map),
            "hottest": hottest_region(r.anomaly_map, frame.shape[:2], pixel_t).to_dict()}


def mask_png(defects: list[Any]) -> bytes | None:
    """The union of a frame's defect masks as a PNG (255 = defect), or None without defects."""
    if not defects:
        return None
    ok, buf = cv2.imencode(".png", np.any([d.mask for d in defects], axis=0).astype(np.uint8) * 255)
    return buf.tobytes() if ok else None


def inspect_files(bundle: Bundle, paths: Sequence[str | Path], out_dir: str | Path | None = None,
                  precision: str = "fp32", opts: EngineOptions | None = None,
                  batch: int = 8, top_k: int = 3, sam_mode: str = "roi") -> list[dict[str, Any]]:
    """Inspect each file; unreadable ones get ``{"path", "error"}`` and the rest go on.

    Frames the calibrated expert flags get ``defects`` (masks from SAM where the bundle has it,
    else from the thresholded map), and a mask PNG with ``out_dir``.
    """
    expert = Expert(bundle, precision, opts)
    sam = None
    if bundle.has_stage("sam"):  # the same precision as the expert where SAM has it
        sam_variants = bundle.stage("sam")["variants"]
        sam = SamStage(bundle, precision if precision in sam_variants else "fp32", opts)
    classifier = from_bundle(bundle)
    pixel_t = bundle.thresholds.get("pixel")
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    files = expand_paths(paths)
    results: list[dict[str, Any]] = []
    used: set[Path] = set()  # overlay names taken, so same stems from two folders do not overwrite
    for i in range(0, len(files), batch):
        chunk, frames = [], []
        for p in files[i : i + batch]:
            try:
                frames.append(read_image(p))
                chunk.append(p)
            except LineguardError as e:
                log.error("%s", e)
                results.append({"path": str(p), "error": str(e)})
        for p, frame, r in zip(chunk, frames, expert(frames) if frames else []):
            res = {"path": str(p)} | describe(frame, r, pixel_t)
            region = res["hottest"]
            defects = []
            if r.verdict == "defect":
                defects = find_defects(frame, r.anomaly_map, bundle.thresholds, sam, top_k, sam_mode,
                                       classifier=classifier)
                res["defects"] = [d.to_dict() for d in defects]
            if out:
                vmin, vmax = (0.0, 2.0 * pixel_t) if pixel_t is not None else (None, None)
                dst = out / f"{p.stem}_overlay.png"
                n = 1
                while dst in used:
                    dst, n = out / f"{p.stem}_{n}_overlay.png", n + 1
                used.add(dst)
                boxes = [d.region.box for d in defects] or [region["box"]]
                cv2.imwrite(str(dst), heat_overlay(frame, r.anomaly_map, vmin, vmax, boxes))
                res["overlay"] = str(dst)
                if defects:
                    mpath = dst.with_name(dst.name.replace("_overlay.png", "_mask.png"))
                    mpath.write_bytes(mask_png(defects) or b"")
                    res["mask"] = str(mpath)
            results.append(res)
    order = {str(p): i for i, p in enumerate(files)}  # unreadable files were appended first in a chunk
    results.sort(key=lambda r: order[r["path"]])
    return results


def format_table(results: list[dict[str, Any]]) -> str:
    """A readable table: one line per image, paths shown below their common folder."""
    rows = [("image", "score", "norm", "verdict", "hottest box (x0,y0,x1,y1)", "cell", "defects")]
    parents = [str(Path(r["path"]).resolve().parent) for r in results]
    common = Path(os.path.commonpath(parents)) if parents else Path()

    def name(r: dict[str, Any]) -> str:
        return str(Path(r["path"]).resolve().relative_to(common))

    for r in results:
        if "error" in r:
            rows.append((name(r), "-", "-", "ERROR", r["error"].removeprefix(f"{r['path']}: "), "", ""))
            continue
        norm = "-" if r["score_norm"] is None else f"{r['score_norm']:.3f}"
        found = r.get("defects", [])
        defects = f"{len(found)} ({', '.join(sorted({d['mask_source'] for d in found}))})" if found else ""
        rows.append((name(r), f"{r['score']:.4g}", norm, r["verdict"] or "uncalibrated",
                     ",".join(map(str, r["hottest"]["box"])), r["hottest"]["cell"], defects))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)

