"""``lineguard synth``: the generated product line written as MVTec-layout datasets (one per part
type) and as a video of parts passing the camera, with the ground truth of every frame."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lineguard.progress import bar
from lineguard.runtime.errors import InputError
from lineguard.synth.defects import DEFECTS
from lineguard.synth.parts import PARTS

MIN_PX = 3  # the smallest defect's extent in pixels


def defect_scale(rng: np.random.Generator, size: int) -> float:
    """Log-uniform from a few pixels to a fifth of the image: most defects small, some large."""
    return float(np.exp(rng.uniform(np.log(MIN_PX / size), np.log(0.2))))


def sample(part: str, defect: str | None, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One part image and its defect mask (empty for a good part); retried until the mask is non-empty."""
    img, body = PARTS[part](rng, size)
    if defect is None:
        return img, np.zeros((size, size), bool)
    for _ in range(20):
        out, mask = DEFECTS[defect](img, body, rng, defect_scale(rng, size))
        if mask.any():
            return out, mask
    raise RuntimeError(f"could not place a {defect} on a {part}")  # a painter bug, not bad input


def parse_list(value: str | None, known: dict[str, Any], what: str) -> list[str]:
    names = [v.strip() for v in (value or ",".join(known)).split(",") if v.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise InputError(f"--{what} {value}: use a comma list of {', '.join(known)}")
    return names


def make_line(out: str | Path, n: int = 40, parts: str | None = None, defects: str | None = None, size: int = 256,
              seed: int = 0, video: bool = True, fps: float = 10.0, progress: bool = True,
              trigger: bool = False) -> dict[str, Any]:
    """Per part type: ``n`` train/good, ``n // 4`` test/good and ``n // 4`` test images per defect
    type with masks; then a line video of the test parts, in a seeded order."""
    if n < 4:
        raise InputError(f"--n {n}: need at least 4 parts per type")
    if size < 64:
        raise InputError(f"--size {size}: need at least 64 pixels")
    part_names, defect_names = parse_list(parts, PARTS, "parts"), parse_list(defects, DEFECTS, "defects")
    root = Path(out)
    rng = np.random.default_rng(seed)
    line: list[tuple[str, str, Path]] = []
    counts: dict[str, int] = {}
    jobs = [(p, None, "train/good", i) for p in part_names for i in range(n)]
    jobs += [(p, None, "test/good", i) for p in part_names for i in range(max(1, n // 4))]
    jobs += [(p, d, f"test/{d}", i) for p in part_names for d in defect_names for i in range(max(1, n // 4))]
    for part, defect, sub, i in bar(jobs, desc="synth", unit="img", progress=progress):
        img, mask = sample(part, defect, rng, size)
        path = root / part / sub / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), img)
        if defect:
            mpath = root / part / "ground_truth" / defect / f"{i:03d}_mask.png"
            mpath.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(mpath), mask.astype(np.uint8) * 255)
        if sub.startswith("test"):
            line.append((part, defect or "good", path))
        counts[f"{part}/{sub}"] = counts.get(f"{part}/{sub}", 0) + 1
    report: dict[str, Any] = {"root": str(root), "parts": part_names, "defects": defect_names, "size": size,
                              "seed": seed, "images": counts}
    if video:
        order = [line[i] for i in rng.permutation(len(line))]
        report["video"] = write_video(root / "line.avi", order, size, fps, **(TRIGGERED if trigger else {}))
    (root / "synth.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


# A triggered camera (a photo-eye fires when the part is in position): one frame per part,
# centred and filling the view, as most inspection stations acquire.
TRIGGERED = {"travel": 0, "hold": 1, "margin": 1.0}


def write_video(path: Path, items: list[tuple[str, str, Path]], size: int, fps: float, travel: int = 6,
                hold: int = 2, margin: float = 1.5) -> dict[str, Any]:
    """Parts slide along a belt through the view (``travel`` frames in, ``hold`` centred, out;
    the frame is ``margin`` times a part wide); ``line.csv`` says for each frame which part is in
    view, its defect, whether it is centred and where its left edge is (``x``; parts enter on
    the right and leave on the left)."""
    h, w = size, int(size * margin)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise InputError(f"{path}: OpenCV cannot write an MJPG video here")
    belt = np.full((h, w, 3), 50, np.uint8)
    belt[:, ::16] = 40  # belt seams move with the parts
    rows = []
    frame_no = 0
    centre = (w - size) // 2
    xs = list(np.linspace(w, centre, travel, endpoint=False).round().astype(int)) + [centre] * hold \
        + (list(np.linspace(centre, -size, travel + 1)[1:].round().astype(int)) if travel else [])
    for k, (part, defect, src) in enumerate(items):
        img = cv2.imread(str(src))
        for x in xs:
            frame = np.roll(belt, -frame_no * 4, axis=1).copy()
            a, b = max(0, x), min(w, x + size)
            if b > a:
                frame[:, a:b] = img[:, a - x:b - x]
            writer.write(frame)
            rows.append({"frame": frame_no, "item": k, "part": part, "defect": defect, "source": str(src),
                         "centred": int(x == centre), "x": int(x)})
            frame_no += 1
    writer.release()
    with open(path.with_name("line.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    return {"file": str(path), "frames": frame_no, "parts": len(items), "fps": fps, "width": w, "height": h,
            "triggered": travel == 0, "truth": str(path.with_name("line.csv"))}
