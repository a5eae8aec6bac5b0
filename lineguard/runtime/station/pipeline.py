"""The serving pipeline's scheduling: decode → expert (dynamic batches) → verdict → defects → explanation.

What happens to a frame at each step is the one-frame path (``lineguard.runtime.inspection``);
where its results go is the outbox (artefacts, store, then PUB). This module only decides which thread runs
which step, and what is shed under load.

Stages are threads joined by bounded queues (ONNX Runtime releases the GIL while it runs).
The verdict path never waits for SAM or the LLM: a full defect queue drops the frame's masks
(counted, the verdict already out) and a full explanation queue drops the *oldest* pending
explanation (counted). Nothing is lost silently: every frame ends as a verdict, an error or a
counted drop, each published and stored. A stage that raises on one frame gives that frame an
``error``; a stage that cannot load degrades the server to what still works (reported in health).

SAM and the LLM are *background* stages: on a CPU station they share cores with the expert, so
their threads (and the ONNX Runtime workers they create) run at a lower OS priority with fewer
threads; they use what the expert leaves idle instead of slowing the verdicts.

Shutdown: one ``STOP`` enters the decode queue after the last frame and flows down the chain
(each stage's ``then`` passes it on); the decoding threads and the expert workers each hand it to
one another, and the last of them out passes it on; the results thread ends when both the defect
and the explanation stage have sent theirs.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import cv2

from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import EngineOptions
from lineguard.runtime.errors import BundleError
from lineguard.runtime.inspection import Inspection, Inspector, load_explainer, load_sam, sam_precision
from lineguard.runtime.stages import classify
from lineguard.runtime.stages.expert import Expert
from lineguard.runtime.stages.findings import summarize
from lineguard.runtime.station.artifacts import Artifacts
from lineguard.runtime.station.deadline import Deadline
from lineguard.runtime.station.outbox import Outbox, Publish
from lineguard.runtime.station.protocol import Frame, FrameError, Limits, parse_frame, parse_imagezmq
from lineguard.runtime.station.stats import Stats
from lineguard.runtime.station.store import ResultStore
from lineguard.runtime.station.triton_pool import (
    EXPERT_MODEL,
    SAM_MODELS,
    ModelsUnreachable,
    RemoteEngine,
    TritonPool,
)

log = logging.getLogger("lineguard.serve")
STOP = object()  # flows down the queues at shutdown, after the last frame


@dataclass
class ServeConfig:
    precision: str = "fp32"
    max_batch: int = 8
    max_wait_ms: float = 5.0
    decode_queue: int = 64  # frames waiting to be decoded; beyond this the ingest drops (counted)
    decode_workers: int = 2  # decoding threads: a 1-MP JPEG takes ~6 ms, and OpenCV decodes without the GIL
    defect_queue: int = 16
    llm_queue: int = 8
    device: str = "auto"  # execution provider: auto tries TensorRT, then CUDA, then CPU
    threads: int = 0  # intra-op threads per session, 0 = every core (measured best with spinning off)
    expert_workers: int = 0  # expert sessions side by side, threads split between them; 0 = auto (CPU: one per
    # core up to 4, GPU: 1). Measured (benchmarks/expert_workers.py): 1.1-1.5x one 2-thread session's frames/s.
    spinning: bool = False  # spinning workers steal the cores the other stages' sessions need
    sam_precision: str | None = None  # None: the expert's precision where SAM has it, else fp32
    background_threads: int = 1  # intra-op threads for SAM and the LLM (0 = every core)
    background_nice: int = 10  # added to SAM's and the LLM's OS niceness (0 = same priority as the expert)
    background_idle: bool = True  # and SAM and the LLM in SCHED_IDLE (Linux): only the cycles the verdicts leave
    top_k: int = 3
    sam_mode: str = "roi"
    explain: bool = True
    constrain: bool | None = None  # grounded decoding; None: the bundle's setting (on)
    masks: bool = True  # False: no SAM even where the bundle has it (masks from the expert's map)
    limits: Limits = field(default_factory=Limits)
    deadline_ms: float | None = None  # every frame gets a decision this long after arrival (fail-safe if need be)
    on_deadline: str = "reject"  # the fail-safe: reject (defect), accept (good), none (only counted)
    models: list[str] | None = None  # Triton servers (HOST:PORT) that run the expert (and SAM) instead of local sessions
    remote_stages: tuple[str, ...] = ("expert", "sam")  # what runs on them (SAM where the bundle has it)
    models_timeout_s: float = 10.0  # a request to one of them taking longer takes it out (and is retried)
    artifacts: str | None = None  # mask PNG + overlay JPEG per flagged frame
    keep_artifacts: int = 1000  # frames whose artefacts are kept; older ones are deleted


class Pipeline:
    """Owns the stage threads and their queues. ``publish(topic, body, png)`` sends one result (thread-safe)."""

    def __init__(self, bundle: Bundle, cfg: ServeConfig, publish: Publish, store: ResultStore | None = None,
                 opts: EngineOptions | None = None, live: Any = None) -> None:
        self.bundle, self.cfg, self.store = bundle, cfg, store
        self.stats = Stats()
        # the station's parallelism is its threads: OpenCV's own pool on top wakes a worker per call,
        # which under load cost more than the work (a 32×32 map's labelling: 74 µs vs 1.5 µs alone)
        cv2.setNumThreads(1)
        opts = opts or EngineOptions(device=cfg.device, threads=cfg.threads, spinning=cfg.spinning)
        self.health: dict[str, str] = {}
        remote = remote_models(bundle, cfg)
        self.models = TritonPool(cfg.models, bundle, remote, cfg.models_timeout_s) if cfg.models else None
        self.experts = expert_sessions(bundle, cfg, opts, self.models)
        self.health["expert"] = f"ok ({self.experts[0].engine.provider})"
        bg = replace(opts, threads=cfg.background_threads)
        sam_engines = tuple(RemoteEngine(self.models, SAM_MODELS[g]) for g in ("encoder", "decoder")) \
            if SAM_MODELS["encoder"] in remote else None
        sam = self._load("sam", lambda: load_sam(bundle, cfg.precision, bg, cfg.sam_precision, sam_engines)) \
            if cfg.masks else None
        if sam is not None and sam_engines:
            self.health["sam"] = "ok (triton)"
        explainer = self._load("llm", lambda: load_explainer(bundle, bg, cfg.constrain)) if cfg.explain else None
        for name, on in (("sam", cfg.masks), ("llm", cfg.explain)):
            if not on:
                self.health[name] = "off"
        classifier = None
        try:
            classifier = classify.from_bundle(bundle)
            self.health["classes"] = "ok" if classifier else "absent"
        except BundleError as e:  # masks and explanations go on without types
            self.health["classes"] = f"degraded: {e}"
            log.error("defect classifier unusable, serving without types: %s", e)
        self.inspector = Inspector(bundle, self.experts[0], sam, classifier, explainer, cfg.top_k, cfg.sam_mode)
        artifacts = Artifacts(cfg.artifacts, cfg.keep_artifacts) if cfg.artifacts else None
        self.outbox = Outbox(publish, self.stats, store, artifacts, bundle.thresholds.get("pixel"), live)
        self.sink_states: Callable[[], dict[str, Any]] = dict  # the line outputs' counters (the server sets it)
        # the station's own frame ids: after the store's last, so a restart never reuses one
        self.seq = itertools.count((store.last_seq() if store else 0) + 1)
        self.run_id = secrets.token_hex(3)  # in imagezmq frames' ids, which their senders do not give
        self.imagezmq_count = itertools.count(1)
        self.deadline = Deadline(cfg.deadline_ms, cfg.on_deadline, self._failsafe) if cfg.deadline_ms else None
        self.q_decode: queue.Queue[Any] = queue.Queue(cfg.decode_queue)
        self.q_expert: queue.Queue[Any] = queue.Queue(max(cfg.max_batch * 4, 8))
        self.q_defect: queue.Queue[Any] = queue.Queue(cfg.defect_queue)
        self.q_llm: queue.Queue[Any] = queue.Queue(cfg.llm_queue)
        self.q_results: queue.Queue[Any] = queue.Queue()  # bounded upstream by the defect and LLM queues
        self.llm_lock = threading.Lock()  # dropping the oldest and putting the newest is one step
        self.decoders_left = decoders = max(1, cfg.decode_workers)
        self.experts_left = len(self.experts)
        self.experts_lock = threading.Lock()
        self.experts_idle = 0  # expert workers waiting for a first frame
        self.results_stops = 0
        low = (cfg.background_nice, cfg.background_idle)
        self.threads = [threading.Thread(target=f, args=args, name=n, daemon=True) for n, f, args in (
            *((f"decode{i}" if i else "decode", self._run, (self.q_decode, self._decode, self._end_decode, 0))
              for i in range(decoders)),
            *((f"expert{i}" if i else "expert", self._expert_loop, (ex,)) for i, ex in enumerate(self.experts)),
            ("defects", self._run, (self.q_defect, self._defects, lambda: self.q_results.put(STOP), *low)),
            ("explain", self._run, (self.q_llm, self._explain, lambda: self.q_results.put(STOP), *low)),
            ("results", self._run, (self.q_results, self._result, self._end_results, 0)))]

    @property
    def explainer(self) -> Any:
        return self.inspector.explainer

    # ---- loading -------------------------------------------------------------------------
    def _load(self, name: str, make: Callable[[], Any]) -> Any:
        if not self.bundle.has_stage(name):
            self.health[name] = "absent"
            return None
        out: dict[str, Any] = {}

        def load() -> None:  # in its own lowered thread: the session's workers inherit its priority
            lower_priority(self.cfg.background_nice, self.cfg.background_idle)
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

    # ---- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        if self.deadline:
            self.deadline.start()
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
        if self.deadline:
            self.deadline.stop()
        if self.models:
            self.models.close()
        return not any(t.is_alive() for t in self.threads)

    def _run(self, q: queue.Queue[Any], handle: Callable[[Any], None], then: Callable[[], bool | None],
             nice: int, idle: bool = False) -> None:
        """One stage's thread: ``handle`` each item until STOP, then ``then`` (which passes STOP on).
        ``handle`` deals with its own frame's failures; a bug that escapes it is logged, not fatal."""
        lower_priority(nice, idle)
        while True:
            item = q.get()
            if item is STOP:
                if then() is not False:
                    return
                continue
            try:
                handle(item)
            except Exception:  # never let one message end a stage's thread
                log.exception("the %s stage failed on one item", threading.current_thread().name)

    # ---- ingest (called from the socket thread; never blocks) ----------------------------
    def offer(self, parts: list[Any], kind: str = "lineguard") -> str | None:
        """Queue a received message for decoding; a full queue drops it (counted, reported).
        Returns an error reason when the message was refused."""
        received = time.time()
        seq = next(self.seq)
        self.stats.inc("received")
        if self.deadline:  # the header part only: it names the frame if its fail-safe must be sent
            self.deadline.register(seq, received, (parts[:1], kind))
        try:
            self.q_decode.put_nowait((seq, parts, kind, received))
            return None
        except queue.Full:
            fid, cam = _peek_ids(parts, kind)
            self.stats.drop(cam, "ingest")
            self.outbox.error(seq, fid, cam, "dropped: the decode queue is full (the line outruns the station)",
                              "dropped", {"received": received}, status="dropped")
            return "dropped"

    def _failsafe(self, seq: int, received: float, ident: tuple[list[Any], str]) -> None:
        fid, cam = _peek_ids(*ident)
        if ident[1] == "imagezmq":
            fid = None  # its id is made at decoding; the fail-safe names the camera and seq
        self.outbox.failsafe(seq, fid, cam, self.deadline.verdict, received, self.cfg.deadline_ms)

    # ---- stages --------------------------------------------------------------------------
    def _decode(self, item: tuple[int, list[Any], str, float]) -> None:
        seq, parts, kind, received = item
        try:
            if kind == "imagezmq":
                frame = parse_imagezmq(parts, next(self.imagezmq_count), self.cfg.limits, received, self.run_id)
            else:
                frame = parse_frame(parts, self.cfg.limits, received)
        except FrameError as e:
            with self.stats.lock:
                self.stats.errors[e.code] += 1
            self.outbox.error(seq, e.frame_id, e.camera, e.reason, e.code, {"received": received})
            return
        except Exception as e:  # a decoder bug: this message only
            log.exception("decoding failed")
            with self.stats.lock:
                self.stats.errors["stage_failed"] += 1
            self.outbox.error(seq, None, None, f"decoding failed: {e}", "stage_failed", {"received": received})
            return
        frame.seq = seq
        frame.ts["decoded"] = time.time()
        self.q_expert.put(frame)  # bounded: the decoder waits for the expert, the ingest queue absorbs

    def _end_decode(self) -> None:
        """A decoding thread took the STOP: it hands it to the next one; the last passes it on."""
        with self.experts_lock:  # the lock that counts the workers out, decoders as experts
            self.decoders_left -= 1
            last = self.decoders_left == 0
        if not last:
            self.q_decode.put(STOP)  # after the frames still queued: a sibling takes it once they are done
            return
        for _ in self.experts:  # one each: a worker stops after taking exactly one
            self.q_expert.put(STOP)

    def _expert_loop(self, expert: Expert) -> None:
        try:
            stopping = False
            while not stopping:
                batch, stopping = self._next_batch()
                try:
                    self._verdicts(expert, batch)
                except Exception:  # a bug or a full disk: logged, this worker goes on with the next batch
                    log.exception("the expert stage failed on a batch")
        except BaseException as e:  # only a bug gets here; the station keeps its other workers
            log.exception("an expert worker stopped")
            self.health["expert"] = f"degraded: a worker stopped ({e})"
        finally:
            with self.experts_lock:  # the last worker out passes the sentinel on
                self.experts_left -= 1
                last = self.experts_left == 0
            if last:
                self.q_defect.put(STOP)

    def _next_batch(self) -> tuple[list[Frame], bool]:
        """(up to ``max_batch`` frames, waiting at most ``max_wait_ms`` after the first while every
        other worker is busy, else only what is queued; whether this worker took its STOP). The
        batch in hand when STOP comes is still inspected."""
        with self.experts_lock:
            self.experts_idle += 1
        first = self.q_expert.get()
        with self.experts_lock:
            self.experts_idle -= 1
            # waiting for company only pays while no other worker is free to take the next frame:
            # with one idle, a lone frame waiting would be latency spent for nothing (Triton's
            # max_queue_delay, 0 by default, makes the same trade)
            wait = self.experts_idle == 0
        if first is STOP:
            return [], True
        batch = [first]
        end = time.monotonic() + self.cfg.max_wait_ms / 1e3
        while len(batch) < self.cfg.max_batch:
            try:
                nxt = self.q_expert.get(timeout=max(0.0, end - time.monotonic())) if wait \
                    else self.q_expert.get_nowait()
            except queue.Empty:
                break
            if nxt is STOP:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _verdicts(self, expert: Expert, batch: list[Frame]) -> None:
        t0 = time.time()
        try:
            results = self.inspector.score([f.image for f in batch], expert)
        except ModelsUnreachable as e:  # the Triton pool is down: errors (fail-safes at their deadline), counted
            with self.stats.lock:
                self.stats.errors["models_unreachable"] += len(batch)
            for f in batch:
                self.outbox.error(f.seq, f.frame_id, f.camera, str(e), "models_unreachable", f.ts)
            return
        except Exception as e:  # one bad batch: its frames get errors, the server goes on
            log.exception("expert stage failed")
            for f in batch:
                self.outbox.error(f.seq, f.frame_id, f.camera, f"expert failed: {e}", "stage_failed", f.ts)
            return
        served_by = getattr(expert.engine, "served_by", None)  # which Triton server answered
        t1 = time.time()
        with self.stats.lock:
            self.stats.batches.append(len(batch))
        items = []
        try:  # the batch's maps summarized at once (a failure here leaves each frame to its own)
            summaries: list[Any] = summarize([r.anomaly_map for r in results])
        except Exception:
            log.exception("summarizing the batch's maps failed")
            summaries = [None] * len(results)
        for f, r, s in zip(batch, results, summaries):
            f.ts |= {"expert_start": t0, "expert_done": t1}
            try:
                ins = Inspection(self.inspector.record(f.image, r, s), r)
                if served_by:
                    ins.record["served_by"] = served_by
                late = None if self.deadline is None or self.deadline.claim(f.seq) else \
                    ("failsafe" if self.deadline.verdict else "missed")
                items.append((f, ins, late))
            except Exception as e:  # this frame only; its batch mates keep their verdicts
                self._verdict_failed(f, e)
        try:
            self.outbox.verdicts(items)  # the batch's rows in one transaction, then each published
        except Exception as e:  # the store or the socket is failing: the batch's frames get errors
            for f, _, _ in items:
                self._verdict_failed(f, e)
            return
        for f, ins, _ in items:
            if ins.result.verdict == "defect":
                try:
                    self.q_defect.put_nowait((f, ins))
                except queue.Full:
                    self.outbox.dropped(f, "defects", "masks dropped: the defect queue is full")

    def _verdict_failed(self, f: Frame, e: Exception) -> None:
        log.exception("verdict failed on %s", f.frame_id)
        try:
            self.outbox.error(f.seq, f.frame_id, f.camera, f"verdict failed: {e}", "stage_failed", f.ts)
        except Exception:  # the store or the socket itself is failing: logged, the worker lives
            log.exception("reporting the failure of %s failed", f.frame_id)

    def _defects(self, item: tuple[Frame, Inspection]) -> None:
        f, ins = item
        try:
            ins.defects = self.inspector.defects(f.image, ins.result)
            ins.record = ins.record | {"defects": [d.to_dict() for d in ins.defects]}
            f.ts["masks"] = time.time()
            files = self.outbox.files(f, ins)  # mask PNG and artefacts: encoded here, in the background
        except Exception as e:  # one frame's failure: an error for it, the stage goes on
            log.exception("defect stage failed on %s", f.frame_id)
            self.q_results.put(("error", f, f"defect stage failed: {e}"))
            return
        self.q_results.put(("masks", f, (ins, files)))

    def _explain(self, item: tuple[Frame, Inspection]) -> None:
        f, ins = item
        try:
            e = self.inspector.explain(ins.record)
            f.ts["explained"] = time.time()
        except Exception as exc:  # one frame's failure: an error for it, the stage goes on
            log.exception("explanation failed on %s", f.frame_id)
            self.q_results.put(("error", f, f"explanation failed: {exc}"))
            return
        self.q_results.put(("explanation", f, e))

    def _result(self, item: tuple[Any, ...]) -> None:
        """Store writes and publishes of the background stages, at normal priority: a lowered
        thread holding the store's lock would make the expert's verdict writes wait for it."""
        kind, f, payload = item
        try:
            if kind == "masks":
                ins, files = payload
                self.outbox.masks(f, ins, *files)
                if self.explainer is not None:
                    self._queue_explanation(f, ins)
            elif kind == "explanation":
                self.outbox.explanation(f, payload)
            else:
                self.outbox.late_error(f, payload)
        except Exception:  # a full disk or a closed socket: logged, the results thread goes on
            log.exception("publishing the %s of %s failed", kind, f.frame_id)

    def _end_results(self) -> bool:
        """The first STOP comes from the defect stage (the LLM may still get work: pass it on), the second
        from the LLM stage. Returns False while the thread must go on."""
        self.results_stops += 1
        if self.results_stops == 1:
            self.q_llm.put(STOP)
            return False
        return True

    def _queue_explanation(self, f: Frame, ins: Inspection) -> None:
        with self.llm_lock:
            if self.q_llm.full():
                try:
                    old_f, _ = self.q_llm.get_nowait()
                    self.outbox.dropped(old_f, "explanation", "explanation dropped: newer defects took its place")
                except queue.Empty:
                    pass
            self.q_llm.put_nowait((f, ins))


def expert_sessions(bundle: Bundle, cfg: ServeConfig, opts: EngineOptions, pool: TritonPool | None = None) \
        -> list[Expert]:
    """The expert's sessions. On a CPU several small sessions side by side beat one wide one: a
    line's batches are small, and one frame's intra-op work does not keep every core busy. On a
    Triton pool they are client threads: two requests in flight per server keep each one busy (and
    give its dynamic batcher something to join)."""
    if pool is not None:
        n = cfg.expert_workers or 2 * len(pool.members)
        return [Expert(bundle, cfg.precision, engine=RemoteEngine(pool, EXPERT_MODEL, bundle.stage("expert")))
                for _ in range(n)]
    cores = os.cpu_count() or 1
    want = cfg.expert_workers or min(4, cores)
    # warmed up at the largest batch: its memory (and a GPU's engine for it) taken at start, not in
    # steps at the first bursts of a shift (the soak's RSS grew 7 % that way)
    opts = replace(opts, warmup_batch=cfg.max_batch)
    per = max(1, (opts.threads or cores) // want)  # the threads asked for (or the cores), split
    first = Expert(bundle, cfg.precision, replace(opts, threads=per if want > 1 else opts.threads))
    if first.engine.provider != "CPUExecutionProvider" and not cfg.expert_workers:
        return [first]  # a GPU runs one session's batches; more would only contend for it
    return [first] + [Expert(bundle, cfg.precision, replace(opts, threads=per)) for _ in range(want - 1)]


def remote_models(bundle: Bundle, cfg: ServeConfig) -> dict[str, str]:
    """The Triton models a station on a pool uses, each with the precision it must serve."""
    if not cfg.models:
        return {}
    out = {EXPERT_MODEL: cfg.precision}
    if "sam" in cfg.remote_stages and cfg.masks and bundle.has_stage("sam"):
        out |= dict.fromkeys(SAM_MODELS.values(), sam_precision(bundle, cfg.precision, cfg.sam_precision))
    return out


def lower_priority(nice: int, idle: bool = False) -> None:
    """Raise the calling thread's niceness by ``nice``; with ``idle``, also put it in Linux's
    SCHED_IDLE class: it runs only on cycles no other thread wants (Linux: both per thread, and
    inherited by the threads it creates)."""
    if not sys.platform.startswith("linux"):  # elsewhere the id would name a process
        return
    tid = threading.get_native_id()
    try:
        if nice > 0:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        if idle:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except OSError as e:  # a sandbox may forbid it; the station still serves, at equal priority
        log.warning("could not lower the background stages' priority: %s", e)


def _peek_ids(parts: list[Any], kind: str) -> tuple[str | None, str]:
    """frame_id and camera from a header without decoding the payload (for drop reports)."""
    try:
        h = json.loads(bytes(parts[0].buffer if hasattr(parts[0], "buffer") else parts[0])[:4096])
        if kind == "imagezmq":
            return None, str(h.get("msg", "imagezmq"))
        return (str(h["frame_id"]) if "frame_id" in h else None), str(h.get("camera", "unknown"))
    except Exception:  # a malformed header on a dropped frame: count it under "unknown"
        return None, "unknown"
