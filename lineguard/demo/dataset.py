"""The generated product line as one MVTec-layout category holding every part type, so one
bundle serves the whole line; a share of the normal parts is held back for calibration."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def link_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or no hard links: a copy is as good
        shutil.copyfile(src, dst)


def merge_parts(root: Path, parts: list[str], out: Path, calib_share: float = 0.2) -> Path:
    """``root/<part>/...`` → ``out`` with ``train/good`` (for training), ``calib/good`` (held
    out: thresholds must come from normal parts the expert never saw), ``test/<defect>`` and
    ``ground_truth/<defect>``; every file named ``<part>_<name>``."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for part in parts:
        good = sorted((root / part / "train" / "good").glob("*.png"))
        n_calib = max(1, int(round(len(good) * calib_share)))
        for i, f in enumerate(good):
            link_file(f, tmp / ("calib" if i >= len(good) - n_calib else "train") / "good" / f"{part}_{f.name}")
        for sub in ("test", "ground_truth"):
            for f in sorted((root / part / sub).glob("*/*.png")):
                link_file(f, tmp / sub / f.parent.name / f"{part}_{f.name}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
