"""Served verdict rate by session threads and spinning, all stages loaded (expert + SAM + LLM).

    python -m benchmarks.serve_threads [--frames 120] [--work runs/serve] [--out runs/serve/threads]

Several ONNX Runtime sessions share 2 cores in `lineguard serve`. This floods a real server
process (loopback ZeroMQ, open loop: every frame sent at once) with generated parts, half of
them defective, and times first send → last verdict, per configuration, in one run. Every
frame must come back as a verdict or a counted drop.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import zmq

from lineguard.runtime.imageio import list_images, read_image
from lineguard.runtime.ports import free_ports
from lineguard.runtime.station.protocol import encode_frame

CONFIGS = [("1 thread, no spin", ["--threads", "1"]), ("2 threads, no spin", ["--threads", "2"]),
           ("2 threads, spinning", ["--threads", "2", "--spinning"])]


def expert_bundle(work: Path, backbone: str = "resnet18", n_train: int = 30) -> tuple[Path, Path]:
    """Generated tiles (``work/data/tile``) and a calibrated 256-px PatchCore on ``backbone``
    (random weights) fitted to ``n_train`` of them (``work/bundle``): the expert stage alone.
    Wipes ``work`` first."""
    from lineguard.calibration.calibrate import calibrate
    from lineguard.export.expert import export_patchcore
    from lineguard.export.patchcore.fit import PatchCoreConfig
    from lineguard.synth.tiles import make_dataset

    bundle = work / "bundle"
    shutil.rmtree(work, ignore_errors=True)
    data = make_dataset(work / "data", "tile", n_train=n_train, n_good=20, n_defect=20, size=256, seed=1)
    export_patchcore(data, bundle, PatchCoreConfig(backbone=backbone, size=256, coreset=0.1, seed=0), progress=False)
    calibrate(bundle, dataset=str(data), rule="f1", progress=False)
    return bundle, data


def build(work: Path) -> tuple[Path, Path]:
    """A calibrated 256-px PatchCore on generated tiles, with a tiny SAM and a tiny INT4 LLM."""
    bundle = work / "bundle"
    data = work / "data" / "tile"
    if (bundle / "manifest.json").is_file():
        return bundle, data
    import torch

    from lineguard.export.llm.export import export_llm
    from lineguard.export.llm.tiny import build_tiny
    from lineguard.export.sam.checkpoint import build_sam, parse_arch
    from lineguard.export.sam.export import export_sam

    bundle, data = expert_bundle(work)
    torch.manual_seed(0)
    torch.save(build_sam(parse_arch("custom:64:2:2:1"), 256).state_dict(), work / "sam.pth")
    export_sam(work / "sam.pth", "custom:64:2:2:1", bundle, image_size=256)
    export_llm(build_tiny(work / "llm", "qwen2"), bundle, ("int4",))
    return bundle, data


def run(bundle: Path, frames: list, extra: list[str]) -> dict:
    ports = free_ports(2)
    ing, pub = (f"tcp://127.0.0.1:{p}" for p in ports)
    proc = subprocess.Popen([sys.executable, "-m", "lineguard", "serve", str(bundle), "--ingest", ing, "--publish",
                             pub, "--queue", "1000", "--hwm", "1000", *extra], stdout=subprocess.PIPE, text=True)
    assert json.loads(proc.stdout.readline())["event"] == "ready"
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub)
    push = ctx.socket(zmq.PUSH)
    push.sndhwm = 10_000
    push.connect(ing)
    time.sleep(0.5)
    t0 = time.perf_counter()
    for i, img in enumerate(frames):
        push.send_multipart(encode_frame(f"t{i}", "bench", image=img), copy=False)
    done, expl, t_last = set(), 0, t0
    while len(done) < len(frames) and sub.poll(60_000):
        topic, body = sub.recv_multipart()[:2]
        b = json.loads(body)
        if topic == b"explanation":
            expl += 1
        elif not b.get("update"):
            done.add(b["frame_id"])
            t_last = time.perf_counter()
    proc.terminate()
    summary = json.loads(proc.communicate(timeout=120)[0].splitlines()[-1])
    ctx.destroy(0)
    return {"verdict_fps": round(len(done) / (t_last - t0), 2), "accounted": len(done), "sent": len(frames),
            "explanations_before_last_verdict": expl, "mean_batch": summary.get("mean_batch"),
            "dropped": summary["counts"].get("dropped", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--work", type=Path, default=Path("runs/serve"))
    ap.add_argument("--out", type=Path, default=Path("runs/serve/threads"))
    a = ap.parse_args()
    bundle, data = build(a.work)
    imgs = [read_image(p) for p in list_images(data / "test", recursive=True)]
    frames = [imgs[i % len(imgs)] for i in range(a.frames)]
    rows = {}
    for name, extra in CONFIGS:
        print(f"measuring {name} …", file=sys.stderr)
        rows[name] = run(bundle, frames, extra)
    report = {"date": time.strftime("%Y-%m-%d"), "frames": a.frames, "defect_share": 0.5, "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_name(a.out.name + ".json").write_text(json.dumps(report, indent=2) + "\n")
    print("| sessions | verdicts/s | mean batch | explanations done by the last verdict | dropped |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['verdict_fps']} | {r['mean_batch']:.2f} | {r['explanations_before_last_verdict']} | "
              f"{r['dropped']} |")


if __name__ == "__main__":
    main()
