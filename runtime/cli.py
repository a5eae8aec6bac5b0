"""The `lineguard` command line: one entry point, one sub-command per job.

Sub-commands that need the training side (torch) import it only when they run, so the
station's runtime-only install still answers ``--help`` and runs inspect/serve.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .engine import EngineOptions
from .errors import LineguardError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="fp32", help="bundle variant to run (fp32, int8, fp16, ...)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"],
                   help="execution provider: auto tries TensorRT, then CUDA, then CPU")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")


def _positive(kind: type) -> object:
    def parse(s: str) -> object:
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{s} must be > 0")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="lineguard", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"lineguard {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    ex = sub.add_parser("export", help="export trained checkpoints into a bundle (needs lineguard[export])")
    exs = ex.add_subparsers(dest="what", metavar="STAGE", parser_class=_Parser)
    exs.required = True
    e = exs.add_parser("expert", help="fit/export the anomaly expert into a new bundle")
    e.add_argument("--kind", choices=["patchcore", "onnx"], default="patchcore")
    e.add_argument("--out", required=True, help="bundle directory to create")
    e.add_argument("--force", action="store_true", help="replace --out if it exists")
    e.add_argument("--product", help="product name in the manifest (default: from the folder)")
    g = e.add_argument_group("patchcore")
    g.add_argument("--train", help="folder of normal images (or an MVTec category root)")
    g.add_argument("--backbone", default="resnet18", help="resnet18, resnet50 or wide_resnet50_2")
    g.add_argument("--weights", help="torchvision state dict for the backbone (default: random init, with a warning)")
    g.add_argument("--size", type=_positive(int), default=256, help="square model input size in pixels")
    g.add_argument("--coreset", type=_positive(float), default=0.1, help="share of patches kept in the memory bank")
    g.add_argument("--max-bank-mb", type=_positive(float), default=512.0, help="cap on memory-bank size")
    g.add_argument("--score", choices=["reweight", "max"], default="reweight", help="image score from patch scores")
    g.add_argument("--seed", type=int, default=0)
    g = e.add_argument_group("onnx import")
    g.add_argument("--model", help="existing ONNX anomaly model (e.g. exported by anomalib)")
    g.add_argument("--map-output", help="name of its anomaly-map output (default: guessed)")
    g.add_argument("--score-output", help="name of its image-score output (default: guessed, else map max)")
    g.add_argument("--input-size", type=_positive(int), nargs=2, metavar=("H", "W"),
                   help="input size where the graph's is dynamic")
    g.add_argument("--color", choices=["RGB", "BGR", "GRAY"], help="channel order the model expects (default RGB)")
    g.add_argument("--mean", type=float, nargs="+", help="per-channel mean after scaling to 0..1 (default 0)")
    g.add_argument("--std", type=float, nargs="+", help="per-channel std after scaling to 0..1 (default 1)")

    s = exs.add_parser("sam", help="export Segment Anything (encoder, prompt decoder, sparse decoder) into a bundle")
    s.add_argument("--checkpoint", required=True, help="segment-anything state dict (e.g. sam_vit_b_01ec64.pth)")
    s.add_argument("--model-type", required=True, help="vit_b, vit_l, vit_h, or custom:EMBED:DEPTH:HEADS:G1,G2")
    s.add_argument("--bundle", required=True, help="bundle to add the SAM stage to (created if missing)")
    s.add_argument("--image-size", type=_positive(int), default=1024,
                   help="encoder input (1024 as released; 512 or 384 interpolate the position embeddings)")
    s.add_argument("--product", help="product name for a new bundle")

    m = exs.add_parser("llm", help="export a causal LM (Llama, Qwen2, Phi-3, Gemma, Mistral) with a KV cache")
    m.add_argument("--model", required=True, help="local Hugging Face checkpoint folder (save_pretrained layout)")
    m.add_argument("--bundle", required=True, help="bundle to add the LLM stage to (created if missing)")
    m.add_argument("--precision", default="int4", help="comma list of int4, fp16, fp32 (default int4)")
    m.add_argument("--block-size", type=_positive(int), default=32, help="INT4 block size (MatMulNBits)")
    m.add_argument("--asymmetric", action="store_true", help="INT4 with zero points (default symmetric)")
    m.add_argument("--accuracy-level", type=int, choices=[0, 1, 2, 3, 4], default=4,
                   help="MatMulNBits compute: 4 = int8 activations (fastest on CPU), 0 = fp32")
    m.add_argument("--no-merge", action="store_true", help="keep q/k/v and gate/up projections separate")
    m.add_argument("--graph", choices=["auto", "fused", "traced"], default="auto",
                   help="fused: ONNX Runtime's attention/norm kernels (fast); traced: torch.onnx of the model "
                        "(any family transformers runs); auto: fused where it matches generate")
    m.add_argument("--quantize-embeddings", action="store_true", help="also 4-bit the embedding table")
    m.add_argument("--nf4", action="store_true",
                   help="also measure bitsandbytes NF4 (PyTorch-side, CUDA only) against the same reference")
    m.add_argument("--product", help="product name for a new bundle")

    i = sub.add_parser("inspect", help="inspect image files: score, verdict, hottest region, overlays")
    i.add_argument("bundle")
    i.add_argument("images", nargs="+", help="image files or folders")
    i.add_argument("--out", help="write overlay PNGs here")
    i.add_argument("--json", action="store_true", help="print one JSON array of results to stdout")
    i.add_argument("--top-k", type=_positive(int), default=3, help="defect regions per flagged frame")
    i.add_argument("--sam-mode", choices=["roi", "frame"], default="roi",
                   help="SAM encodes a crop around the flagged regions (roi) or the whole frame")
    i.add_argument("--explain", action="store_true", help="explain flagged frames with the bundle's LLM")
    _engine_args(i)

    x = sub.add_parser("explain", help="run the bundle's LLM on findings (inspect --json output) or a prompt")
    x.add_argument("bundle")
    src = x.add_mutually_exclusive_group(required=True)
    src.add_argument("--findings", help="JSON file: one inspect result or a list of them ('-' for stdin)")
    src.add_argument("--prompt", help="free text, sent through the chat template as the user turn")
    x.add_argument("--precision", help="llm variant (default: the smallest the bundle has)")
    x.add_argument("--max-new-tokens", type=_positive(int))
    x.add_argument("--temperature", type=float, help="0 = greedy")
    x.add_argument("--top-p", type=float)
    x.add_argument("--seed", type=int)
    x.add_argument("--time-budget", type=_positive(float), help="seconds per explanation")
    x.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    x.add_argument("--threads", type=int, default=0)
    x.add_argument("--json", action="store_true", help="print JSON instead of streaming text")

    sv = sub.add_parser("serve", help="the station: frames in over ZeroMQ, verdicts, masks and explanations out")
    sv.add_argument("bundle")
    sv.add_argument("--ingest", default="tcp://127.0.0.1:5555", help="PULL address for frames (wire protocol v1)")
    sv.add_argument("--publish", default="tcp://127.0.0.1:5556", help="PUB address for results")
    sv.add_argument("--imagezmq", help="REP address for unmodified imagezmq senders, e.g. tcp://127.0.0.1:5557")
    sv.add_argument("--curve-keys", help="folder from `lineguard keys`: encrypt, and refuse clients without a key")
    sv.add_argument("--db", help="SQLite result store (one row per frame, WAL)")
    sv.add_argument("--precision", default="fp32", help="expert (and SAM) variant")
    sv.add_argument("--sam-precision", help="SAM variant if not the expert's (e.g. int8 next to an fp32 expert)")
    sv.add_argument("--background-threads", type=int, default=1,
                    help="intra-op threads for SAM and the LLM (0: every core)")
    sv.add_argument("--background-nice", type=int, default=10,
                    help="lower SAM's and the LLM's OS priority by this much (0: same as the expert)")
    sv.add_argument("--max-batch", type=_positive(int), default=8, help="expert batch limit")
    sv.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    sv.add_argument("--hwm", type=_positive(int), default=64, help="ingest socket high-water mark (messages)")
    sv.add_argument("--queue", type=_positive(int), default=64, help="frames waiting to decode before drops")
    sv.add_argument("--defect-queue", type=_positive(int), default=16)
    sv.add_argument("--llm-queue", type=_positive(int), default=8, help="pending explanations (oldest dropped)")
    sv.add_argument("--threads", type=int, default=0, help="intra-op threads per session (0: every core)")
    sv.add_argument("--expert-workers", type=int, default=0,
                    help="expert sessions side by side, the cores split between them (0: CPU one per core up to 4)")
    sv.add_argument("--spinning", action="store_true", help="let ONNX Runtime's workers spin (off: they yield)")
    sv.add_argument("--no-explain", action="store_true", help="serve without the LLM stage")
    sv.add_argument("--no-sam", action="store_true", help="serve without SAM (masks from the expert's map)")
    sv.add_argument("--artifacts", help="folder for a mask PNG and overlay JPEG per flagged frame")
    sv.add_argument("--keep-artifacts", type=_positive(int), default=1000, help="frames whose artefacts are kept")
    sv.add_argument("--metrics-port", type=int, help="serve /metrics and /healthz on 127.0.0.1:PORT")
    sv.add_argument("--drain", type=float, default=10.0, help="seconds to finish queued frames at SIGTERM")
    sv.add_argument("--max-pixels", type=_positive(int), default=40_000_000, help="largest frame accepted")

    cm = sub.add_parser("camera", help="send frames from a video, stream, device or folder to a runtime")
    cm.add_argument("--source", required=True, help="video file, rtsp/http URL, device number or image folder")
    cm.add_argument("--connect", default="tcp://127.0.0.1:5555")
    cm.add_argument("--fps", type=_positive(float), help="send rate (default: the source's own, folders as fast as sent)")
    cm.add_argument("--jpeg", type=int, metavar="QUALITY", help="send JPEG at this quality instead of raw pixels")
    cm.add_argument("--name", default="cam0", help="camera name in every header")
    cm.add_argument("--max-frames", type=_positive(int))
    cm.add_argument("--loop", action="store_true", help="start over at the end of a file or folder")
    cm.add_argument("--timeout-ms", type=_positive(int), default=1000, help="a send waiting longer counts as failed")
    cm.add_argument("--curve-keys", help="folder with client.key_secret and server.key")

    rs = sub.add_parser("results", help="subscribe to a runtime's results and print or save them")
    rs.add_argument("--connect", default="tcp://127.0.0.1:5556")
    rs.add_argument("--topics", default="verdict,explanation,error")
    rs.add_argument("--out", help="append results.jsonl and save mask PNGs here")
    rs.add_argument("--count", type=_positive(int), help="stop after N messages")
    rs.add_argument("--timeout", type=_positive(float), help="stop after this many seconds")
    rs.add_argument("--json", action="store_true")
    rs.add_argument("--curve-keys")

    bn = sub.add_parser("bench", help="does this bundle keep up with the line? open-loop load over ZeroMQ, PASS/FAIL")
    bn.add_argument("bundle", nargs="?", help="bundle to serve (omit with --connect)")
    bn.add_argument("--images", required=True, help="MVTec-layout category or a flat folder of frames")
    bn.add_argument("--rate", type=_positive(float), required=True, help="target line rate, frames/s")
    bn.add_argument("--duration", type=_positive(float), default=10.0, help="seconds of load per step")
    bn.add_argument("--defect-rate", type=float, default=0.05, help="share of defect frames sent")
    bn.add_argument("--max-latency-ms", type=_positive(float), default=250.0, help="p99 send → verdict limit")
    bn.add_argument("--sweep", action="store_true", help="step the rate ×1.5 until the limit breaks")
    bn.add_argument("--connect", nargs=2, metavar=("INGEST", "PUBLISH"), help="a running serve instead of a new one")
    bn.add_argument("--out", help="write report.json, samples.csv (and curve.csv/png with --sweep) here")
    bn.add_argument("--grace", type=_positive(float), default=30.0, help="seconds to wait for late results")
    bn.add_argument("--warmup", type=float, default=2.0, help="seconds of unrecorded load before measuring")
    bn.add_argument("--serve-args", default="", help="extra arguments for the served process, e.g. '--max-batch 4'")
    bn.add_argument("--json", action="store_true", help="print report.json instead of the table")

    k = sub.add_parser("keys", help="make CURVE key pairs for serve --curve-keys and camera --curve-keys")
    k.add_argument("folder")

    n = sub.add_parser("info", help="verify a bundle and print what it holds")
    n.add_argument("bundle")
    n.add_argument("--json", action="store_true", help="print the manifest as JSON")

    c = sub.add_parser("calibrate", help="thresholds and score normalisation into a bundle (with a report)")
    c.add_argument("bundle")
    c.add_argument("--normal", help="folder of normal images (or an MVTec category: its train/good)")
    c.add_argument("--dataset", help="MVTec-layout category with defect images and masks (for the f1 rule)")
    c.add_argument("--rule", default="auto", choices=["auto", "myriad", "f1", "manual"],
                   help="auto: manual if --threshold, f1 if --dataset, else myriad (k-fold max normal score)")
    c.add_argument("--threshold", type=float, help="image threshold on the raw score (rule manual)")
    c.add_argument("--pixel-threshold", type=float, help="anomaly-map threshold for the defect region")
    c.add_argument("--folds", type=int, default=3, help="k for the myriad rule")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--report", help="also write calibration.json/.png here")
    c.add_argument("--classes", action="store_true",
                   help="also fit the defect classifier from --dataset's defect folders and masks")
    c.add_argument("--shots", type=_positive(int), help="labelled images per defect type for --classes (default: all)")
    c.add_argument("--classes-only", action="store_true",
                   help="fit the defect classifier from --dataset and leave the thresholds as they are")

    q = sub.add_parser("quantize", help="INT8/FP16/TensorRT variants of the expert, each through an accuracy gate")
    q.add_argument("bundle")
    q.add_argument("--stage", choices=["expert", "sam"], default="expert", help="which stage to quantize")
    q.add_argument("--normal", help="normal images for calibration (folder or MVTec category; expert only)")
    q.add_argument("--dataset", help="MVTec-layout category to gate on (else: held-out normal images)")
    q.add_argument("--precision", help="comma list of int8, fp16, trt (default: int8,fp16,trt; sam: int8,fp16)")
    q.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"],
                   help="how int8 activation ranges are calibrated")
    q.add_argument("--activations", default="uint8", choices=["uint8", "int8"],
                   help="uint8 runs fastest on x86 CPUs (VNNI); int8 for symmetric targets")
    q.add_argument("--max-drop", type=float, default=0.5, help="largest allowed AUROC drop in points")
    q.add_argument("--calib-images", type=_positive(int), default=32)
    q.add_argument("--no-tail", action="store_true", help="never quantize the memory-bank tail")
    q.add_argument("--every", type=_positive(int), default=1, help="gate on every n-th test image only")

    v = sub.add_parser("evaluate", help="metrics of each variant on an MVTec-layout category")
    v.add_argument("bundle")
    v.add_argument("--dataset", required=True, help="MVTec-layout category folder")
    v.add_argument("--precisions", help="comma list (default: every CPU variant in the bundle)")
    v.add_argument("--every", type=_positive(int), default=1, help="every n-th test image only")
    v.add_argument("--json", help="write the results here as JSON")
    v.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"])
    v.add_argument("--threads", type=int, default=0)

    sy = sub.add_parser("synth", help="a generated product line: parts, defects with masks (MVTec layout), a line video")
    sy.add_argument("--out", required=True, help="folder to write (one MVTec category per part type)")
    sy.add_argument("--n", type=int, default=40, help="train/good images per part type (test: a quarter of it each)")
    sy.add_argument("--parts", help="comma list of tile, disc, label (default: all)")
    sy.add_argument("--defects", help="comma list of scratch, crack, hole, stain, chip (default: all)")
    sy.add_argument("--size", type=int, default=256)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--fps", type=float, default=10.0, help="frame rate of the line video")
    sy.add_argument("--no-video", action="store_true")
    sy.add_argument("--trigger", action="store_true",
                    help="one centred frame per part (a triggered camera) instead of parts sliding past")

    try:
        from ddqa.cli import add_parsers
    except ImportError:  # a runtime-only install has no ddqa package
        pass
    else:
        add_parsers(sub, _Parser)
    try:
        from train.cli import add_parsers as add_train
    except ImportError:  # a runtime-only install has no train package
        pass
    else:
        add_train(sub, _Parser, _positive)

    d = sub.add_parser("demo", help="the whole job live on a generated line: default models trained here, "
                                     "serve + camera over ZeroMQ, accuracy against the truth (no downloads)")
    d.add_argument("--out", default="lineguard-demo", help="report folder: summary, results, overlays")
    d.add_argument("--bundle", help="serve this bundle instead of the default one")
    d.add_argument("--duration", type=_positive(float),
                   help="seconds of line to send, the video looping if needed (default: the video once)")
    d.add_argument("--rate", type=_positive(float), default=10.0, help="line rate, frames/s")
    d.add_argument("--cache", help="where the default bundle is built (default: $LINEGUARD_CACHE or ~/.cache/lineguard)")
    d.add_argument("--rebuild", action="store_true", help="build the default bundle again, even if cached")
    d.add_argument("--quiet", action="store_true", help="print only the summary")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")
    d.add_argument("--seed", type=int, default=0)
    return ap


def cmd_export(a: argparse.Namespace) -> int:
    try:
        from export.cli import run_export
    except ImportError as e:
        raise LineguardError(f"lineguard export needs the export extra ({e.name} is missing): "
                             "pip install 'lineguard[export]'") from None
    return run_export(a)


def cmd_inspect(a: argparse.Namespace) -> int:
    from .bundle import Bundle
    from .inspect import format_table, inspect_files

    bundle = Bundle.load(a.bundle)
    opts = EngineOptions(device=a.device, threads=a.threads)
    results = inspect_files(bundle, a.images, a.out, a.precision, opts, top_k=a.top_k, sam_mode=a.sam_mode)
    if a.explain:
        from .explain import Explainer

        explainer = Explainer(bundle, opts=opts)
        for r in results:
            if r.get("verdict") == "defect":
                r["explanation"] = explainer.explain(r)
    if a.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(results))
    return 1 if any("error" in r for r in results) else 0


def cmd_explain(a: argparse.Namespace) -> int:
    from .bundle import Bundle
    from .explain import Explainer

    ex = Explainer(Bundle.load(a.bundle), a.precision, EngineOptions(device=a.device, threads=a.threads))
    over = {k: v for k, v in (("max_new_tokens", a.max_new_tokens), ("temperature", a.temperature),
                              ("top_p", a.top_p), ("seed", a.seed), ("time_budget_s", a.time_budget)) if v is not None}
    try:
        s = dataclasses.replace(ex.sampling, **over)
        s.validate()
    except ValueError as e:
        raise LineguardError(str(e)) from None
    if a.prompt is not None:
        ids = ex.tokenizer.encode(ex.prompts.render([{"role": "user", "content": a.prompt}]),
                                  add_special_tokens=False).ids
        gen = ex.lm.generate(ids, s)
        print(ex.tokenizer.decode(gen.ids).strip())
        print(f"[{gen.prompt_tokens} prompt tokens at {gen.prefill_tok_s:.1f} tok/s, {len(gen.ids)} new at "
              f"{gen.decode_tok_s:.1f} tok/s, stop: {gen.stop}]", file=sys.stderr)
        return 0
    try:
        raw = sys.stdin.read() if a.findings == "-" else Path(a.findings).read_text(encoding="utf-8")
        items = json.loads(raw)
    except (OSError, json.JSONDecodeError) as e:
        raise LineguardError(f"--findings {a.findings}: {e}") from None
    items = items if isinstance(items, list) else [items]
    out = []
    for r in items:
        if not isinstance(r, dict) or "verdict" not in r:
            raise LineguardError(f"--findings {a.findings}: each item must be an inspect result with a verdict")
        if not a.json:
            print(f"{r.get('path', 'frame')}: ", end="", flush=True)
        e = ex.explain(r, None if a.json else (lambda t: print(t, end="", flush=True)), **over)
        if not a.json:
            print("" if e["consistent"] else f"\n  [inconsistent with the findings: {e['reason']}]")
        out.append(e)
    if a.json:
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from .bundle import Bundle
    from .pipeline import ServeConfig
    from .protocol import Limits
    from .server import Endpoints, Server

    cfg = ServeConfig(precision=a.precision, max_batch=a.max_batch, max_wait_ms=a.max_wait_ms, decode_queue=a.queue,
                      defect_queue=a.defect_queue, llm_queue=a.llm_queue, threads=a.threads, spinning=a.spinning, explain=not a.no_explain,
                      sam_precision=a.sam_precision, masks=not a.no_sam, expert_workers=a.expert_workers, background_threads=a.background_threads,
                      background_nice=a.background_nice,
                      limits=Limits(max_pixels=a.max_pixels), artifacts=a.artifacts, keep_artifacts=a.keep_artifacts)
    ep = Endpoints(ingest=a.ingest, publish=a.publish, imagezmq=a.imagezmq, curve_keys=a.curve_keys, hwm=a.hwm)
    if a.expert_workers < 0:
        raise LineguardError(f"--expert-workers {a.expert_workers}: use 0 (auto) or a positive count")
    bundle = Bundle.load(a.bundle)
    if a.sam_precision and bundle.has_stage("sam") and a.sam_precision not in bundle.stage("sam")["variants"]:
        raise LineguardError(f"--sam-precision {a.sam_precision}: the bundle's SAM has "
                             f"{', '.join(bundle.stage('sam')['variants'])}")
    return Server(bundle, cfg, ep, a.db, a.metrics_port).serve(a.drain)


def cmd_camera(a: argparse.Namespace) -> int:
    from .camera import run_camera

    r = run_camera(a.source, a.connect, a.fps, a.jpeg, a.name, a.max_frames, a.loop, a.timeout_ms, a.curve_keys)
    print(json.dumps(r))
    return 0 if r["failed"] == 0 else 3


def cmd_results(a: argparse.Namespace) -> int:
    from .subscriber import run_results

    return run_results(a.connect, a.topics.split(","), a.out, a.count, a.timeout, a.json, a.curve_keys)


def cmd_bench(a: argparse.Namespace) -> int:
    import shlex

    from .bench import run_bench, table

    if not a.connect and not a.bundle:
        raise LineguardError("give a BUNDLE to serve, or --connect INGEST PUBLISH for a running one")
    if not 0 <= a.defect_rate <= 1:
        raise LineguardError(f"--defect-rate {a.defect_rate}: must be between 0 and 1")
    ok, report = run_bench(a.bundle, a.images, a.rate, a.duration, a.defect_rate, a.max_latency_ms, a.sweep,
                           tuple(a.connect) if a.connect else None, shlex.split(a.serve_args), a.out, a.grace,
                           warmup_s=a.warmup)
    print(json.dumps(report, indent=2) if a.json else table(report))
    if report["result"]["unaccounted"]:
        return 4  # the server did not answer every frame: a partial report
    return 0 if ok else 3


def cmd_keys(a: argparse.Namespace) -> int:
    from .curve import make_keys

    d = make_keys(a.folder)
    print(f"wrote CURVE keys to {d}: serve --curve-keys {d}; copy client.key_secret and server.key to each camera")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from .bundle import Bundle

    b = Bundle.load(a.bundle)
    if a.json:
        json.dump(b.manifest, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"bundle   {b.root}  (format v{b.manifest['format_version']}, product {b.product!r}, files verified)")
    for name, st in b.manifest["stages"].items():
        spec = st.get("input_spec", {})
        size = f"{spec.get('height')}x{spec.get('width')} {spec.get('color')}" if spec else ""
        print(f"stage    {name}: {st['kind']} {size}  variants: {', '.join(st['variants'])}")
        for prec, v in st["variants"].items():
            par = v.get("parity", {})
            if "image_auroc_drop_points" in par:
                print(f"         {prec}: image AUROC {par['image_auroc']:.4f} ({-par['image_auroc_drop_points']:+.2f} "
                      f"points vs fp32), map Pearson {par['map_pearson']:.4f}, {par.get('speedup')}x fp32 frames/s")
            elif "map_pearson" in par:
                err = (f"max |err| {par['map_max_abs_err']:.3g}" if "map_max_abs_err" in par
                       else f"max |err| {par['map_max_abs_err_rel']:.3g} of the map's range")
                print(f"         {prec}: map Pearson {par['map_pearson']:.6f}, {err}")
            elif "teacher_forced_agreement" in par:
                print(f"         {prec}: {par['identical_sequences']}/{par['prompts']} greedy sequences identical to "
                      f"transformers, next-token agreement {par['teacher_forced_agreement']:.3f}")
            elif "trt_options" in v:
                print(f"         {prec}: TensorRT EP options {v['trt_options']}")
        for prec, r in st.get("rejected", {}).items():
            print(f"         {prec}: rejected by the gate ({r['reason']})")
        for w in st.get("warnings", []):
            print(f"warning  {w}")
    print(f"thresholds    {b.thresholds or 'none (not calibrated)'}")
    return 0


def _calibration() -> None:
    try:
        import matplotlib  # noqa: F401  (calibration runs on the workstation, with the export extra)
        import onnx  # noqa: F401
    except ImportError as e:
        raise LineguardError(f"this command needs the export extra ({e.name} is missing): "
                             "pip install 'lineguard[export]'") from None


def cmd_calibrate(a: argparse.Namespace) -> int:
    _calibration()
    from calibration.calibrate import calibrate, describe

    if not a.normal and not a.dataset and a.threshold is None and not a.classes_only:
        raise LineguardError("give --normal DIR, --dataset ROOT or --threshold T")
    if (a.classes or a.classes_only) and not a.dataset:
        raise LineguardError("--classes needs --dataset ROOT (defect folders with masks)")
    if a.classes_only:
        _print_classes(a)
        return 0
    rep = calibrate(a.bundle, a.normal, a.dataset, a.rule, a.threshold, a.pixel_threshold, a.folds, a.seed,
                    a.report)
    print(describe(rep))
    if a.classes:
        _print_classes(a)
    return 0


def _print_classes(a: argparse.Namespace) -> None:
    from calibration.classes import fit_classes

    c = fit_classes(a.bundle, a.dataset, a.shots, seed=a.seed)
    print(f"classes   {', '.join(f'{n} ({k})' for n, k in c['examples'].items())}; leave-one-out accuracy "
          f"{100 * c['loo_accuracy']:.1f}%, unknown beyond distance {c['max_distance']:.2f}")


def cmd_synth(a: argparse.Namespace) -> int:
    from synth.line import make_line

    rep = make_line(a.out, a.n, a.parts, a.defects, a.size, a.seed, not a.no_video, a.fps, trigger=a.trigger)
    print(json.dumps(rep))
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from train.cli import run

    return run(a)


def cmd_adapt(a: argparse.Namespace) -> int:
    from train.cli import run_adapt

    return run_adapt(a)


def cmd_ddqa(a: argparse.Namespace) -> int:
    from ddqa.cli import run

    return run(a)


def cmd_quantize(a: argparse.Namespace) -> int:
    _calibration()
    from calibration.quantize import QuantConfig
    from calibration.variants import build_variants, describe

    if a.stage == "sam":
        from calibration.sam_variants import build_sam_variants

        precisions = tuple(p.strip() for p in (a.precision or "int8,fp16").split(",") if p.strip())
        for prec, g in build_sam_variants(a.bundle, precisions).items():
            print(f"sam {prec} {'written' if g['passed'] else 'NOT written'}: mean mask IoU vs fp32 "
                  f"{g['mean_iou_vs_fp32']:.4f} (min {g['min_iou_vs_fp32']:.4f}) on {g['cases']} cases")
        return 0
    if not a.normal:
        raise LineguardError("quantizing the expert needs --normal DIR (calibration images)")
    cfg = QuantConfig(method=a.method, activations=a.activations, quantize_tail=not a.no_tail)
    precisions = tuple(p.strip() for p in (a.precision or "int8,fp16,trt").split(",") if p.strip())
    summary = build_variants(a.bundle, a.normal, a.dataset, precisions, cfg, a.max_drop, a.calib_images, a.every)
    print(describe(summary))
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    _calibration()
    from calibration.evaluate import describe, evaluate_all

    results = evaluate_all(a.bundle, a.dataset, a.precisions, a.every, EngineOptions(device=a.device, threads=a.threads))
    print(describe(results))
    if a.json:
        from calibration.report import plot_variants

        out = Path(a.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        plot_variants(results, out.with_suffix(".png"))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from demo.main import run_demo

    return run_demo(a.out, a.bundle, a.duration, a.rate, a.cache, a.rebuild, a.quiet, a.seed, a.json)


COMMANDS = {"export": cmd_export, "inspect": cmd_inspect, "explain": cmd_explain, "info": cmd_info, "serve": cmd_serve,
            "camera": cmd_camera, "results": cmd_results, "keys": cmd_keys, "bench": cmd_bench, "calibrate": cmd_calibrate,
            "quantize": cmd_quantize, "evaluate": cmd_evaluate, "demo": cmd_demo, "ddqa": cmd_ddqa, "synth": cmd_synth,
            "train": cmd_train, "adapt": cmd_adapt}


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[a.command](a)
    except LineguardError as e:
        sys.stderr.write(f"lineguard {a.command}: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
