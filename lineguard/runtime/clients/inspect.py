"""`lineguard inspect`: one-shot inspection of image files with a bundle's expert."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.errors import LineguardError
from lineguard.runtime.imageio import list_images, read_image
from lineguard.runtime.inspection import Inspection, Inspector, mask_png
from lineguard.runtime.overlay import heat_overlay, map_range

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


def inspect_files(bundle: Bundle, paths: Sequence[str | Path], out_dir: str | Path | None = None,
                  precision: str = "fp32", opts: EngineOptions | None = None, batch: int = 8, top_k: int = 3,
                  sam_mode: str = "roi", explain: bool = False, constrain: bool | None = None) -> list[dict[str, Any]]:
    """Inspect each file; unreadable ones get ``{"path", "error"}`` and the rest go on.

    Frames the calibrated expert flags get ``defects`` (masks from SAM where the bundle has it,
    else from the thresholded map), and a mask PNG with ``out_dir``; with ``explain``, an explanation.
    """
    inspector = Inspector.load(bundle, precision, opts, explain=explain, top_k=top_k, sam_mode=sam_mode,
                               constrain=constrain)
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
        for p, frame, ins in zip(chunk, frames, inspector.inspect(frames, explain=explain) if frames else []):
            res = {"path": str(p)} | ins.record
            if out:
                res |= _overlay(out, p, frame, ins, pixel_t, used)
            results.append(res)
    order = {str(p): i for i, p in enumerate(files)}  # unreadable files were appended first in a chunk
    results.sort(key=lambda r: order[r["path"]])
    return results


def _overlay(out: Path, p: Path, frame: np.ndarray, ins: Inspection, pixel_t: float | None,
             used: set[Path]) -> dict[str, str]:
    """Overlay PNG (and the mask PNG of a flagged frame) under ``out``; names taken are kept in ``used``."""
    vmin, vmax = map_range(pixel_t)
    dst = out / f"{p.stem}_overlay.png"
    n = 1
    while dst in used:  # same stems from two folders must not overwrite each other
        dst, n = out / f"{p.stem}_{n}_overlay.png", n + 1
    used.add(dst)
    boxes = [d.region.box for d in ins.defects] or [ins.record["hottest"]["box"]]
    cv2.imwrite(str(dst), heat_overlay(frame, ins.result.anomaly_map, vmin, vmax, boxes))
    paths = {"overlay": str(dst)}
    if ins.defects:
        mpath = dst.with_name(dst.name.replace("_overlay.png", "_mask.png"))
        mpath.write_bytes(mask_png(ins.defects) or b"")
        paths["mask"] = str(mpath)
    return paths


def format_table(results: list[dict[str, Any]]) -> str:
    """A readable table: one line per image, paths shown below their common folder."""
    rows = [("image", "score", "norm", "verdict", "hottest box (x0,y0,x1,y1)", "cell", "defects")]
    # the paths as given, made absolute but not resolved: a symlink keeps its own name, as in --json
    paths = [Path(os.path.abspath(r["path"])) for r in results]
    common = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path()

    def name(r: dict[str, Any]) -> str:
        return str(Path(os.path.abspath(r["path"])).relative_to(common))

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

