"""The serving pipeline: decode → expert (dynamic batches) → verdict → defects (SAM) → explanation.

Stages are threads joined by bounded queues (ONNX Runtime releases the GIL while it runs).
The verdict path never waits for SAM or the LLM: a full defect queue drops the frame's masks
(counted, the verdict already out) and a full explanation queue drops the *oldest* pending
explanation (counted). Nothing is lost silently: every frame ends as a verdict, an error or a
counted drop, each published and stored. A stage that raises on one frame gives that frame an
``error``; a stage that cannot load degrades the server to what still works (reported in health).

SAM and the LLM are *background* stages: on a CPU station they share cores with the expert, so
their threads (and the ONNX Runtime workers they create) run at a lower OS priority with fewer
threads; they use what the expert leaves idle instead of slowing the verdicts.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from . import classify
from .artifacts import Artifacts
from .bundle import Bundle
from .defects import find_defects
from .engine import EngineOptions
from .errors import BundleError
from .expert import Expert
from .inspect import describe, mask_png
from .protocol import Frame, FrameError, Limits, parse_frame, parse_imagezmq
from .store import ResultStore

log = logging.getLogger("lineguard.serve")
STOP = object()  # flows down the queues at shutdown, after the last frame
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds, per-stage latency


@dataclass
class ServeConfig:
    precision: str = "fp32"
    max_batch: int = 8
    max_wait_ms: float = 5.0
    decode_queue: int = 64  # frames waiting to be decoded; beyond this the ingest drops (counted)
    defect_queue: int = 16
    llm_queue: int = 8
    threads: int = 0  # intra-op threads per session, 0 = every core (measured best with spinning off)
    expert_workers: int = 0  # expert sessions side by side, threads split between them; 0 = auto (CPU: one per
    # core up to 4, GPU: 1). Measured (benchmarks/expert_workers.py): 1.1-1.5x one 2-thread session's frames/s.
    spinning: bool = False  # spinning workers steal the cores the other stages' sessions need
    sam_precision: str | None = None  # None: the expert's precision where SAM has it, else fp32
    background_threads: int = 1  # intra-op threads for SAM and the LLM (0 = every core)
    background_nice: int = 10  # added to SAM's and the LLM's OS niceness (0 = same priority as the expert)
    top_k: int = 3
    sam_mode: str = "roi"
    explain: bool = True
    masks: bool = True  # False: no SAM even where the bundle has it (masks from the expert's map)
    limits: Limits = field(default_factory=Limits)
    artifacts: str | None = None  # mask PNG + overlay JPEG per flagged frame
    keep_artifacts: int = 1000  # frames whose artefacts are kept; older ones are deleted


class Stats:
    """Counters the health endpoint and the metrics read; one lock, cheap increments."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.dropped: dict[str, Counter[str]] = defaultdict(Counter)  # camera → stage → n
        self.verdicts: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)  # stage → recent seconds (bounded)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))  # histogram counts
        self.latency_sum: Counter[str] = Counter()
        self.batches: list[int] = []

    def inc(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def drop(self, camera: str, stage: str) -> None:
        with self.lock:
            self.dropped[camera][stage] += 1
            self.counts["dropped"] += 1

    def observe(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.buckets[stage][next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))] += 1
            self.latency_sum[stage] += seconds
            lst = self.latency[stage]
            lst.append(seconds)
            if len(lst) > 4096:
                del lst[:2048]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"counts": dict(self.counts), "errors": dict(self.errors), "verdicts": dict(self.verdicts),
                    "dropped": {c: dict(v) for c, v in self.dropped.items()},
                    "mean_batch": (sum(self.batches[-1000:]) / len(self.batches[-1000:])) if self.batches else None}


class Pipeline:
    """Owns the stage threads. ``publish(parts)`` sends one result message (thread-safe)."""

    def __init__(self, bundle: Bundle, cfg: ServeConfig, publish: Callable[[str, dict[str, Any], bytes | None], None],
                 store: ResultStore | None = None, opts: EngineOptions | None = None) -> None:
        self.bundle, self.cfg, self.publish, self.store = bundle, cfg, publish, store
        self.stats = Stats()
        opts = opts or EngineOptions(threads=cfg.threads, spinning=cfg.spinning)
        self.health: dict[str, str] = {}
        self.experts = expert_sessions(bundle, cfg, opts)
        self.expert = self.experts[0]
        self.health["expert"] = f"ok ({self.expert.engine.provider})"
        self.experts_left = len(self.experts)
        self.experts_lock = threading.Lock()
        bg = replace(opts, threads=cfg.background_threads)
        self.sam = self._load("sam", lambda: self._sam(bg)) if cfg.masks else None
        if not cfg.masks:
            self.health["sam"] = "off"
        self.explainer = self._load("llm", lambda: self._llm(bg)) if cfg.explain else None
        self.classifier = None
        try:
            self.classifier = classify.from_bundle(bundle)
            self.health["classes"] = "ok" if self.classifier else "absent"
        except BundleError as e:  # masks and explanations go on without types
            self.health["classes"] = f"degraded: {e}"
            log.error("defect classifier unusable, serving without types: %s", e)
        if not cfg.explain:
            self.health["llm"] = "off"
        self.q_decode: queue.Queue[Any] = queue.Queue(cfg.decode_queue)
        self.q_expert: queue.Queue[Any] = queue.Queue(max(cfg.max_batch * 4, 8))
        self.q_defect: queue.Queue[Any] = queue.Queue(cfg.defect_queue)
        self.q_llm: queue.Queue[Any] = queue.Queue(cfg.llm_queue)
        self.q_results: queue.Queue[Any] = queue.Queue()  # bounded upstream by the defect and LLM queues
        self.llm_lock = threading.Lock()  # dropping the oldest and putting the newest is one step
        self.imagezmq_count = 0
        self.artifacts = Artifacts(cfg.artifacts, cfg.keep_artifacts) if cfg.artifacts else None
        self.threads = [threading.Thread(target=f, args=args, name=n, daemon=True) for n, f, args in (
            ("decode", self._decode_loop, ()),
            *((f"expert{i}" if i else "expert", self._expert_loop, (ex,)) for i, ex in enumerate(self.experts)),
            ("defects", self._defect_loop, ()), ("explain", self._llm_loop, ()), ("results", self._results_loop, ()))]

    # ---- loading -------------------------------------------------------------------------
    def _load(self, name: str, make: Callable[[], Any]) -> Any:
        if not self.bundle.has_stage(name):
            self.health[name] = "absent"
            return None
        out: dict[str, Any] = {}

        def load() -> None:  # in its own lowered thread: the session's workers inherit its priority
            lower_priority(self.cfg.background_nice)
            try:
                out["stage"] = make()
            except Exception as e:  # any failure to load degrades, it does not stop the station
                out["error"] = e

        t = threading.Thread(target=load, name=f"load-{name}")
        t.start()
        t.join()
        if "error" in out:
            self.health[name] = f"degraded: failed to load ({out['error']})"
            log.error("%s stage failed to load, serving without it: %s", name, out["error"])
            return None
        self.health[name] = "ok"
        return out["stage"]

    def _sam(self, opts: EngineOptions) -> Any:
        from .sam import SamStage

        variants = self.bundle.stage("sam")["variants"]
        prec = self.cfg.sam_precision or (self.cfg.precision if self.cfg.precision in variants else "fp32")
        return SamStage(self.bundle, prec, opts)

    def _llm(self, opts: EngineOptions) -> Any:
        from .explain import Explainer

        return Explainer(self.bundle, opts=opts)

    # ---- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self, deadline_s: float = 10.0) -> bool:
        """Let every queued frame finish (until the deadline); True if all stages drained."""
        end = time.monotonic() + deadline_s
        try:
            self.q_decode.put(STOP, timeout=max(0.0, end - time.monotonic()))
        except queue.Full:
            return False
        for t in self.threads:
            t.join(max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    # ---- ingest (called from the socket thread; never blocks) ----------------------------
    def offer(self, parts: list[Any], kind: str = "lineguard") -> str | None:
        """Queue a received message for decoding; a full queue drops it (counted, reported).
        Returns an error reason when the message was refused."""
        received = time.time()
        self.stats.inc("received")
        try:
            self.q_decode.put_nowait((parts, kind, received))
            return None
        except queue.Full:
            fid, cam = _peek_ids(parts, kind)
            self.stats.drop(cam, "ingest")
            self._error(fid, cam, "dropped: the decode queue is full (the line outruns the station)", "dropped",
                        {"received": received}, status="dropped")
            return "dropped"

    # ---- stages --------------------------------------------------------------------------
    def _decode_loop(self) -> None:
        while True:
            item = self.q_decode.get()
            if item is STOP:
                for _ in self.experts:  # one each: a worker stops after taking exactly one
                    self.q_expert.put(STOP)
                return
            parts, kind, received = item
            try:
                if kind == "imagezmq":
                    self.imagezmq_count += 1
                    frame = parse_imagezmq(parts, self.imagezmq_count, self.cfg.limits, received)
                else:
                    frame = parse_frame(parts, self.cfg.limits, received)
            except FrameError as e:
                with self.stats.lock:
                    self.stats.errors[e.code] += 1
                self._error(e.frame_id, e.camera, e.reason, e.code, {"received": received})
                continue
            except Exception as e:  # never let one message end the decode thread
                log.exception("decoding failed")
                with self.stats.lock:
                    self.stats.errors["stage_failed"] += 1
                self._error(None, None, f"decoding failed: {e}", "stage_failed", {"received": received})
                continue
            frame.ts["decoded"] = time.time()
            self.q_expert.put(frame)  # bounded: the decoder waits for the expert, the ingest queue absorbs

    def _expert_loop(self, expert: Expert) -> None:
        try:
            self._expert_batches(expert)
        except BaseException as e:  # only a bug gets here; the station keeps its other workers
            log.exception("an expert worker stopped")
            self.health["expert"] = f"degraded: a worker stopped ({e})"
        finally:
            with self.experts_lock:  # the last worker out passes the sentinel on
                self.experts_left -= 1
                last = self.experts_left == 0
            if last:
                self.q_defect.put(STOP)

    def _expert_batches(self, expert: Expert) -> None:
        stopping = False
        while not stopping:
            first = self.q_expert.get()
            if first is STOP:
                break
            batch = [first]
            end = time.monotonic() + self.cfg.max_wait_ms / 1e3
            while len(batch) < self.cfg.max_batch:
                try:
                    nxt = self.q_expert.get(timeout=max(0.0, end - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is STOP:
                    stopping = True
                    break
                batch.append(nxt)
            try:
                self._run_expert(expert, batch)
            except Exception as e:  # a bug or a full disk: these frames get errors, the thread lives on
                log.exception("expert stage failed")
                for f in batch:
                    self._error(f.frame_id, f.camera, f"expert stage failed: {e}", "stage_failed", f.ts)

    def _run_expert(self, expert: Expert, batch: list[Frame]) -> None:
        t0 = time.time()
        try:
            results = expert([f.image for f in batch])
        except Exception as e:  # one bad batch: its frames get errors, the server goes on
            for f in batch:
                self._error(f.frame_id, f.camera, f"expert failed: {e}", "stage_failed", f.ts)
            return
        t1 = time.time()
        with self.stats.lock:
            self.stats.batches.append(len(batch))
        for f, r in zip(batch, results):
            f.ts |= {"expert_start": t0, "expert_done": t1}
            try:
                self._verdict(f, r)
            except Exception as e:  # this frame only; its batch mates keep their verdicts
                log.exception("verdict failed on %s", f.frame_id)
                self._error(f.frame_id, f.camera, f"verdict failed: {e}", "stage_failed", f.ts)

    def _verdict(self, f: Frame, r: Any) -> None:
        rec = describe(f.image, r, self.bundle.thresholds.get("pixel"))
        body = self._body(f) | rec
        if self.store:
            self.store.verdict(f.frame_id, f.camera, rec | {"findings": {"hottest": rec["hottest"]}}, f.ts)
        f.ts["verdict"] = time.time()
        body["ts"] = dict(f.ts)
        self.publish("verdict", body, None)
        self.stats.inc("verdicts")
        with self.stats.lock:
            self.stats.verdicts[str(r.verdict)] += 1
        self.stats.observe("verdict", f.ts["verdict"] - f.ts["received"])
        if r.verdict == "defect":
            try:
                self.q_defect.put_nowait((f, r, rec))
            except queue.Full:
                self.stats.drop(f.camera, "defects")
                self._note_drop(f, "defects", "masks dropped: the defect queue is full")

    def _defect_loop(self) -> None:
        lower_priority(self.cfg.background_nice)
        while True:
            item = self.q_defect.get()
            if item is STOP:
                self.q_results.put(STOP)  # the results thread passes it on to the LLM, after the masks
                return
            f, r, rec = item
            try:
                self._defects(f, r, rec)
            except Exception as e:  # one frame's failure: an error for it, the stage goes on
                log.exception("defect stage failed on %s", f.frame_id)
                self.q_results.put(("error", f, f"defect stage failed: {e}"))

    def _defects(self, f: Frame, r: Any, rec: dict[str, Any]) -> None:
        defects = find_defects(f.image, r.anomaly_map, self.bundle.thresholds, self.sam, self.cfg.top_k,
                               self.cfg.sam_mode, classifier=self.classifier)
        f.ts["masks"] = time.time()
        rec = rec | {"defects": [d.to_dict() for d in defects]}
        png = mask_png(defects)
        paths = self.artifacts.save(f, r, defects, png, self.bundle.thresholds.get("pixel")) if self.artifacts else {}
        self.q_results.put(("masks", f, rec, png, paths))

    def _masks_out(self, f: Frame, rec: dict[str, Any], png: bytes | None, paths: dict[str, str]) -> None:
        if self.store:
            self.store.update(f.frame_id, f.camera, f.ts, findings={"hottest": rec["hottest"],
                                                                    "defects": rec["defects"]},
                              mask_path=paths.get("mask"))
        self.publish("verdict", self._body(f) | rec | {"update": "masks", "ts": dict(f.ts),
                                                      "has_mask": png is not None}, png)
        self.stats.observe("masks", f.ts["masks"] - f.ts["received"])
        if self.explainer is not None:
            self._queue_explanation(f, rec)

    def _queue_explanation(self, f: Frame, rec: dict[str, Any]) -> None:
        with self.llm_lock:
            if self.q_llm.full():
                try:
                    old_f, _ = self.q_llm.get_nowait()
                    self.stats.drop(old_f.camera, "explanation")
                    self._note_drop(old_f, "explanation", "explanation dropped: newer defects took its place")
                except queue.Empty:
                    pass
            self.q_llm.put_nowait((f, rec))

    def _llm_loop(self) -> None:
        lower_priority(self.cfg.background_nice)
        while True:
            item = self.q_llm.get()
            if item is STOP:
                self.q_results.put(STOP)
                return
            f, rec = item
            try:
                e = self.explainer.explain(rec)
                f.ts["explained"] = time.time()
            except Exception as exc:  # one frame's failure: an error for it, the stage goes on
                log.exception("explanation failed on %s", f.frame_id)
                self.q_results.put(("error", f, f"explanation failed: {exc}"))
                continue
            self.q_results.put(("explanation", f, e))

    def _results_loop(self) -> None:
        """Store writes and publishes of the background stages, at normal priority: a lowered
        thread holding the store's lock would make the expert's verdict writes wait for it."""
        stops = 0
        while True:
            item = self.q_results.get()
            if item is STOP:  # the first from the defect stage (pass it on), the second from the LLM
                stops += 1
                if stops == 2:
                    return
                self.q_llm.put(STOP)
                continue
            kind, f, *rest = item
            try:
                if kind == "masks":
                    self._masks_out(f, *rest)
                elif kind == "explanation":
                    if self.store:
                        self.store.update(f.frame_id, f.camera, f.ts, explanation=rest[0])
                    self.publish("explanation", self._body(f) | {"explanation": rest[0], "ts": dict(f.ts)}, None)
                    self.stats.inc("explanations")
                    self.stats.observe("explanation", f.ts["explained"] - f.ts["received"])
                else:
                    self._error(f.frame_id, f.camera, rest[0], "stage_failed", f.ts, status="verdict")
            except Exception:  # a full disk or a closed socket: logged, the results thread goes on
                log.exception("publishing the %s of %s failed", kind, f.frame_id)

    # ---- helpers -------------------------------------------------------------------------
    @staticmethod
    def _body(f: Frame) -> dict[str, Any]:
        return {"frame_id": f.frame_id, "camera": f.camera, "ts_sent": f.ts_sent}

    def _error(self, fid: str | None, cam: str | None, reason: str, code: str, ts: dict[str, float],
               status: str = "error") -> None:
        """A frame's failure: stored (a verdict already stored keeps its verdict), then published."""
        if status != "dropped":
            self.stats.inc("errors")
        if self.store:
            if status == "verdict":
                self.store.update(fid, cam or "unknown", ts, error=reason, error_code=code)
            else:
                self.store.error(fid, cam, reason, code, ts, status)
        self.publish("error", {"frame_id": fid, "camera": cam, "code": code, "reason": reason, "ts": dict(ts)}, None)

    def _note_drop(self, f: Frame, stage: str, reason: str) -> None:
        if self.store:
            self.store.update(f.frame_id, f.camera, f.ts, error=reason, error_code=f"dropped_{stage}")
        self.publish("error", self._body(f) | {"code": f"dropped_{stage}", "reason": reason, "ts": dict(f.ts),
                                               "verdict_published": True}, None)


def expert_sessions(bundle: Bundle, cfg: ServeConfig, opts: EngineOptions) -> list[Expert]:
    """The expert's sessions. On a CPU several small sessions side by side beat one wide one: a
    line's batches are small, and one frame's intra-op work does not keep every core busy."""
    cores = os.cpu_count() or 1
    want = cfg.expert_workers or min(4, cores)
    per = max(1, (opts.threads or cores) // want)  # the threads asked for (or the cores), split
    first = Expert(bundle, cfg.precision, replace(opts, threads=per if want > 1 else opts.threads))
    if first.engine.provider != "CPUExecutionProvider" and not cfg.expert_workers:
        return [first]  # a GPU runs one session's batches; more would only contend for it
    return [first] + [Expert(bundle, cfg.precision, replace(opts, threads=per)) for _ in range(want - 1)]


def lower_priority(nice: int) -> None:
    """Raise the calling thread's niceness by ``nice`` (Linux: per thread; new threads inherit it)."""
    if nice <= 0 or not sys.platform.startswith("linux"):  # elsewhere the id would name a process
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as e:  # a sandbox may forbid it; the station still serves, at equal priority
        log.warning("could not lower the background stages' priority: %s", e)


def _peek_ids(parts: list[Any], kind: str) -> tuple[str | None, str]:
    """frame_id and camera from a header without decoding the payload (for drop reports)."""
    import json

    try:
        h = json.loads(bytes(parts[0].buffer if hasattr(parts[0], "buffer") else parts[0])[:4096])
        if kind == "imagezmq":
            return None, str(h.get("msg", "imagezmq"))
        return (str(h["frame_id"]) if "frame_id" in h else None), str(h.get("camera", "unknown"))
    except Exception:  # a malformed header on a dropped frame: count it under "unknown"
        return None, "unknown"
