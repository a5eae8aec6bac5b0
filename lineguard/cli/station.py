"""``lineguard serve | camera | results | bench | keys``: the station and its clients over ZeroMQ."""

from __future__ import annotations

import argparse
import json

from lineguard.cli.options import constrain_arg, engine_args, positive
from lineguard.runtime.errors import LineguardError


def register(sub: argparse._SubParsersAction) -> None:
    sv = sub.add_parser("serve", help="the station: frames in over ZeroMQ, verdicts, masks and explanations out")
    sv.add_argument("bundle")
    sv.add_argument("--ingest", default="tcp://127.0.0.1:5555", help="PULL address for frames (wire protocol v1)")
    sv.add_argument("--publish", default="tcp://127.0.0.1:5556", help="PUB address for results")
    sv.add_argument("--imagezmq", help="REP address for unmodified imagezmq senders, e.g. tcp://127.0.0.1:5557")
    sv.add_argument("--curve-keys", help="folder from `lineguard keys`: encrypt, and refuse clients without a key")
    sv.add_argument("--db", help="SQLite result store (one row per frame, WAL)")
    engine_args(sv)
    sv.add_argument("--sam-precision", help="SAM variant if not the expert's (e.g. int8 next to an fp32 expert)")
    sv.add_argument("--background-threads", type=int, default=1,
                    help="intra-op threads for SAM and the LLM (0: every core)")
    sv.add_argument("--background-nice", type=int, default=10,
                    help="lower SAM's and the LLM's OS priority by this much (0: same as the expert)")
    sv.add_argument("--no-background-idle", dest="background_idle", action="store_false",
                    help="keep SAM and the LLM out of Linux's SCHED_IDLE class (in it they run only on cycles the "
                         "verdict path leaves)")
    sv.add_argument("--max-batch", type=positive(int), default=8, help="expert batch limit")
    sv.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill while every other expert worker is busy (else it takes what is queued)")
    sv.add_argument("--hwm", type=positive(int), default=64, help="ingest socket high-water mark (messages)")
    sv.add_argument("--queue", type=positive(int), default=64, help="frames waiting to decode before drops")
    sv.add_argument("--decode-workers", type=positive(int), default=2,
                    help="frames decoded side by side (JPEG/PNG decoding runs without the GIL)")
    sv.add_argument("--defect-queue", type=positive(int), default=16)
    sv.add_argument("--llm-queue", type=positive(int), default=8, help="pending explanations (oldest dropped)")
    sv.add_argument("--expert-workers", type=int, default=0,
                    help="expert sessions side by side, the cores split between them (0: CPU one per core up to 4)")
    sv.add_argument("--spinning", action="store_true", help="let ONNX Runtime's workers spin (off: they yield)")
    sv.add_argument("--no-explain", action="store_true", help="serve without the LLM stage")
    constrain_arg(sv)
    sv.add_argument("--no-sam", action="store_true", help="serve without SAM (masks from the expert's map)")
    sv.add_argument("--artifacts", help="folder for a mask PNG and overlay JPEG per flagged frame")
    sv.add_argument("--keep-artifacts", type=positive(int), default=1000, help="frames whose artefacts are kept")
    sv.add_argument("--http", metavar="HOST:PORT", help="the web view (live line, history, bundle), its JSON API, "
                    "/metrics and /healthz on one port; loopback unless --http-token is given")
    sv.add_argument("--http-token", help="a secret every web request must carry (required off loopback)")
    sv.add_argument("--http-token-file", help="read --http-token from this file")
    sv.add_argument("--metrics-port", type=int, help="the same server on 127.0.0.1:PORT (short for --http)")
    sv.add_argument("--deadline-ms", type=positive(float),
                    help="every frame gets a decision this long after it arrives: the fail-safe if its verdict is late")
    sv.add_argument("--on-deadline", choices=("reject", "accept", "none"), default="reject",
                    help="the fail-safe verdict: reject (defect), accept (good), or none (only counted and marked)")
    sv.add_argument("--mqtt", action="append", default=[], metavar="URL",
                    help="publish results to an MQTT broker: mqtt://[user:password@]host[:port]/prefix "
                         "(mqtts:// for TLS); repeatable")
    sv.add_argument("--mqtt-qos", type=int, default=1, choices=(0, 1, 2))
    sv.add_argument("--mqtt-backlog", type=positive(int), default=1000,
                    help="messages kept while the broker is away (then dropped, counted)")
    sv.add_argument("--mqtt-ca", help="CA certificate file for mqtts://")
    sv.add_argument("--opcua", metavar="URL", help="serve the verdicts as an OPC UA server: opc.tcp://host:port "
                    "(anonymous on loopback only)")
    sv.add_argument("--opcua-users", help="file of user:password lines: OPC UA clients must log in (off loopback)")
    sv.add_argument("--opcua-cert", help="server certificate (DER/PEM) for Basic256Sha256 Sign/SignAndEncrypt")
    sv.add_argument("--opcua-key", help="its private key")
    sv.add_argument("--webhook", action="append", default=[], metavar="URL",
                    help="POST each result's JSON to this URL; repeatable")
    sv.add_argument("--webhook-timeout", type=positive(float), default=2.0, help="seconds per attempt")
    sv.add_argument("--webhook-tries", type=positive(int), default=3, help="attempts per message (back-off doubles)")
    sv.add_argument("--sink-queue", type=positive(int), default=1000,
                    help="messages each line output may hold before it drops (counted)")
    sv.add_argument("--models", metavar="triton://HOST:PORT[,HOST:PORT]",
                    help="run the expert on these Triton servers (a repository from `export triton` of this bundle) "
                         "instead of local sessions: least-outstanding spreading, failed servers out and back in")
    sv.add_argument("--remote-stages", default="expert,sam",
                    help="what runs on --models: expert, or expert,sam (SAM where the bundle has it)")
    sv.add_argument("--models-timeout", type=positive(float), default=10.0,
                    help="seconds a Triton request may take before its server is taken out (the request is retried)")
    sv.add_argument("--drain", type=float, default=10.0, help="seconds to finish queued frames at SIGTERM")
    sv.add_argument("--max-pixels", type=positive(int), default=40_000_000, help="largest frame accepted")
    sv.set_defaults(run=cmd_serve)

    cm = sub.add_parser("camera", help="send frames from a video, stream, device or folder to a runtime")
    cm.add_argument("--source", required=True, help="video file, rtsp/http URL, device number or image folder")
    cm.add_argument("--connect", default="tcp://127.0.0.1:5555")
    cm.add_argument("--fps", type=positive(float), help="send rate (default: the source's own, folders as fast as sent)")
    cm.add_argument("--jpeg", type=int, metavar="QUALITY", help="send JPEG at this quality instead of raw pixels")
    cm.add_argument("--name", default="cam0", help="camera name in every header")
    cm.add_argument("--run-id", help="frame ids are NAME-RUN-N (default: a new RUN each time, so runs never collide)")
    cm.add_argument("--max-frames", type=positive(int))
    cm.add_argument("--loop", action="store_true", help="start over at the end of a file or folder")
    cm.add_argument("--timeout-ms", type=positive(int), default=1000, help="a send waiting longer counts as failed")
    cm.add_argument("--curve-keys", help="folder with client.key_secret and server.key")
    cm.set_defaults(run=cmd_camera)

    rs = sub.add_parser("results", help="subscribe to a runtime's results and print or save them")
    rs.add_argument("--connect", default="tcp://127.0.0.1:5556")
    rs.add_argument("--mqtt", metavar="URL", help="read from an MQTT broker instead: mqtt://host[:port]/prefix")
    rs.add_argument("--mqtt-ca", help="CA certificate file for mqtts://")
    rs.add_argument("--topics", default="verdict,explanation,error")
    rs.add_argument("--out", help="append results.jsonl and save mask PNGs here")
    rs.add_argument("--count", type=positive(int), help="stop after N messages")
    rs.add_argument("--timeout", type=positive(float), help="stop after this many seconds")
    rs.add_argument("--json", action="store_true")
    rs.add_argument("--curve-keys")
    rs.set_defaults(run=cmd_results)

    bn = sub.add_parser("bench", help="does this bundle keep up with the line? open-loop load over ZeroMQ, PASS/FAIL")
    bn.add_argument("bundle", nargs="?", help="bundle to serve (omit with --connect)")
    bn.add_argument("--images", required=True, help="MVTec-layout category or a flat folder of frames")
    bn.add_argument("--rate", type=positive(float), required=True, help="target line rate, frames/s")
    bn.add_argument("--duration", type=positive(float), default=10.0, help="seconds of load per step")
    bn.add_argument("--defect-rate", type=float, default=0.05, help="share of defect frames sent")
    bn.add_argument("--max-latency-ms", type=positive(float), default=250.0, help="p99 send → verdict limit")
    bn.add_argument("--sweep", action="store_true", help="step the rate ×1.5 until the limit breaks, "
                    "then narrow the limit down (--refine)")
    bn.add_argument("--refine", type=int, default=3, help="with --sweep: steps halving the interval between the "
                    "last rate that held and the first that failed (3: within 5%%)")
    bn.add_argument("--jpeg", type=int, metavar="QUALITY", help="send JPEG at this quality instead of raw pixels")
    bn.add_argument("--connect", nargs=2, metavar=("INGEST", "PUBLISH"), help="a running serve instead of a new one")
    bn.add_argument("--out", help="write report.json, samples.csv (and curve.csv/png with --sweep) here")
    bn.add_argument("--grace", type=positive(float), default=30.0, help="seconds to wait for late results")
    bn.add_argument("--warmup", type=float, default=2.0, help="seconds of unrecorded load before measuring")
    bn.add_argument("--serve-args", default="", help="extra arguments for the served process, e.g. '--max-batch 4'")
    bn.add_argument("--json", action="store_true", help="print report.json instead of the table")
    bn.set_defaults(run=cmd_bench)

    tr = sub.add_parser("triton", help="run a Triton Inference Server on a repository from `export triton` "
                                       "(development and tests)")
    tr.add_argument("repo")
    tr.add_argument("--grpc-port", type=int, default=8001)
    tr.add_argument("--http-port", type=int, default=8000)
    tr.add_argument("--metrics-port", type=int, default=8002)
    tr.set_defaults(run=cmd_triton)

    k = sub.add_parser("keys", help="make CURVE key pairs for serve --curve-keys and camera --curve-keys")
    k.add_argument("folder")
    k.set_defaults(run=cmd_keys)


def cmd_serve(a: argparse.Namespace) -> int:
    from lineguard.runtime.bundle import Bundle
    from lineguard.runtime.station.pipeline import ServeConfig
    from lineguard.runtime.station.protocol import Limits
    from lineguard.runtime.station.server import Endpoints, Server
    from lineguard.runtime.station.triton_pool import parse_models

    cfg = ServeConfig(precision=a.precision, device=a.device, max_batch=a.max_batch, max_wait_ms=a.max_wait_ms, decode_queue=a.queue, decode_workers=a.decode_workers,
                      defect_queue=a.defect_queue, llm_queue=a.llm_queue, threads=a.threads, spinning=a.spinning, explain=not a.no_explain, constrain=a.constrain,
                      sam_precision=a.sam_precision, masks=not a.no_sam, expert_workers=a.expert_workers, background_threads=a.background_threads,
                      background_nice=a.background_nice, background_idle=a.background_idle,
                      limits=Limits(max_pixels=a.max_pixels), artifacts=a.artifacts, keep_artifacts=a.keep_artifacts,
                      deadline_ms=a.deadline_ms, on_deadline=a.on_deadline,
                      models=parse_models(a.models) if a.models else None, models_timeout_s=a.models_timeout,
                      remote_stages=remote_stages(a.remote_stages))
    ep = Endpoints(ingest=a.ingest, publish=a.publish, imagezmq=a.imagezmq, curve_keys=a.curve_keys, hwm=a.hwm,
                   http=http_address(a), http_token=http_token(a))
    if a.expert_workers < 0:
        raise LineguardError(f"--expert-workers {a.expert_workers}: use 0 (auto) or a positive count")
    bundle = Bundle.load(a.bundle)
    if a.sam_precision and bundle.has_stage("sam") and a.sam_precision not in bundle.stage("sam")["variants"]:
        raise LineguardError(f"--sam-precision {a.sam_precision}: the bundle's SAM has "
                             f"{', '.join(bundle.stage('sam')['variants'])}")
    return Server(bundle, cfg, ep, a.db, line_sinks(a)).serve(a.drain)


def remote_stages(spec: str) -> tuple[str, ...]:
    stages = tuple(s.strip() for s in spec.split(",") if s.strip())
    if "expert" not in stages or set(stages) - {"expert", "sam"}:
        raise LineguardError(f"--remote-stages {spec}: expert, or expert,sam")
    return stages


def line_sinks(a: argparse.Namespace) -> list[tuple[str, dict]]:
    """The line outputs asked for on the command line, as (kind, arguments) for the sink process."""
    q = {"queue_size": a.sink_queue}
    return ([("mqtt", {"url": u, "qos": a.mqtt_qos, "backlog": a.mqtt_backlog, "ca": a.mqtt_ca} | q) for u in a.mqtt]
            + ([("opcua", {"url": a.opcua, "users": a.opcua_users, "cert": a.opcua_cert, "key": a.opcua_key} | q)]
               if a.opcua else [])
            + [("webhook", {"url": u, "timeout_s": a.webhook_timeout, "tries": a.webhook_tries} | q)
               for u in a.webhook])


def http_address(a: argparse.Namespace) -> tuple[str, int] | None:
    if a.http and a.metrics_port is not None:
        raise LineguardError("--http and --metrics-port name the same server: give one")
    if a.http:
        from lineguard.runtime.station.web.server import parse_http

        return parse_http(a.http)
    return ("127.0.0.1", a.metrics_port) if a.metrics_port is not None else None


def http_token(a: argparse.Namespace) -> str | None:
    if a.http_token and a.http_token_file:
        raise LineguardError("--http-token and --http-token-file: give one")
    if a.http_token_file:
        try:
            token = open(a.http_token_file, encoding="utf-8").read().strip()
        except OSError as e:
            raise LineguardError(f"--http-token-file {a.http_token_file}: {e.strerror}") from None
        if not token:
            raise LineguardError(f"--http-token-file {a.http_token_file}: the file is empty")
        return token
    return a.http_token or None


def cmd_camera(a: argparse.Namespace) -> int:
    from lineguard.runtime.clients.camera import run_camera

    r = run_camera(a.source, a.connect, a.fps, a.jpeg, a.name, a.max_frames, a.loop, a.timeout_ms, a.curve_keys,
                   run=a.run_id)
    print(json.dumps(r))
    return 0 if r["failed"] == 0 else 3


def cmd_results(a: argparse.Namespace) -> int:
    from lineguard.runtime.clients.subscriber import run_results

    return run_results(a.connect, a.topics.split(","), a.out, a.count, a.timeout, a.json, a.curve_keys, a.mqtt,
                       a.mqtt_ca)


def cmd_bench(a: argparse.Namespace) -> int:
    import shlex

    from lineguard.runtime.clients.bench import run_bench, table

    if not a.connect and not a.bundle:
        raise LineguardError("give a BUNDLE to serve, or --connect INGEST PUBLISH for a running one")
    if not 0 <= a.defect_rate <= 1:
        raise LineguardError(f"--defect-rate {a.defect_rate}: must be between 0 and 1")
    if a.jpeg is not None and not 1 <= a.jpeg <= 100:
        raise LineguardError(f"--jpeg {a.jpeg}: a quality from 1 to 100")
    ok, report = run_bench(a.bundle, a.images, a.rate, a.duration, a.defect_rate, a.max_latency_ms, a.sweep,
                           tuple(a.connect) if a.connect else None, shlex.split(a.serve_args), a.out, a.grace,
                           warmup_s=a.warmup, jpeg=a.jpeg, refine=a.refine)
    print(json.dumps(report, indent=2) if a.json else table(report))
    if report["result"]["unaccounted"]:
        return 4  # the server did not answer every frame: a partial report
    return 0 if ok else 3


def cmd_keys(a: argparse.Namespace) -> int:
    from lineguard.runtime.station.curve import make_keys

    d = make_keys(a.folder)
    print(f"wrote CURVE keys to {d}: serve --curve-keys {d}; copy client.key_secret and server.key to each camera")
    return 0


def cmd_triton(a: argparse.Namespace) -> int:
    from lineguard.runtime.clients.tritonserver import run_triton

    return run_triton(a.repo, a.grpc_port, a.http_port, a.metrics_port)
