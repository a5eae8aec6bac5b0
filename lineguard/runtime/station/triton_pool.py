"""The station's models on a pool of Triton servers (``serve --models triton://HOST:PORT[,HOST:PORT]``).

The station stays the line's front end (ingest, decode, verdict, store, sinks, the LLM); the
expert's graph (and SAM's, unless ``--remote-stages expert``) runs remotely, through
``RemoteEngine``, which a stage uses as it uses a local ``Engine``. The pool:

- **checks** each server before using it: ready, the models loaded, and each built from this
  station's bundle (the repository's ``lineguard_bundle_hash`` and precision). A server that
  answers with another bundle refuses the station's start; one that does not answer is left out
  and checked again every second, so a station may start before its pool.
- **spreads** requests: each goes to the server with the fewest requests outstanding.
- **takes a server out** when a request to it fails in transport (unavailable, timed out), and
  **retries** that request once on each other server still in: the expert has no side effects, so
  a retry cannot double anything, and a frame answered late beats an error on a line. Only when no
  server is left does the batch fail (``ModelsUnreachable``: each frame gets an ``error``, and the
  fail-safe where a deadline is set). A failure the request caused (a bad input) is not retried.
- **takes it back in** when the check passes again (a fresh channel: gRPC's own reconnect back-off
  can wait minutes).
"""

from __future__ import annotations

import logging
import threading
from collections import namedtuple
from pathlib import Path
from typing import Any

import numpy as np

from lineguard.runtime.bundle import Bundle
from lineguard.runtime.errors import LineguardError

log = logging.getLogger("lineguard.triton")
EXPERT_MODEL = "lineguard_expert"  # the names `export triton` gives the models in the repository
SAM_MODELS = {"encoder": "lineguard_sam_encoder", "decoder": "lineguard_sam_decoder"}
TRITON_TYPES = {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16",
                np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32", np.dtype(np.bool_): "BOOL"}
# transport failures: the server, not the request, is at fault; the request is tried elsewhere
SERVER_FAULTS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "NOT_FOUND", "RESOURCE_EXHAUSTED")
IO = namedtuple("IO", "name shape type")


class ModelsUnreachable(LineguardError):
    """No server of the pool could answer."""


def parse_models(spec: str) -> list[str]:
    """``triton://h:p,h:p`` (or ``triton://h:p,triton://h:p``) → ``["h:p", "h:p"]``."""
    if not spec.startswith("triton://"):
        raise LineguardError(f"--models {spec}: give triton://HOST:PORT[,HOST:PORT...]")
    out = []
    for part in spec.split(","):
        addr = part.removeprefix("triton://").strip()
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise LineguardError(f"--models {spec}: {part!r} is not HOST:PORT")
        out.append(addr)
    if len(set(out)) != len(out):
        raise LineguardError(f"--models {spec}: a server is named twice")
    return out


class Member:
    """One Triton server of the pool and what the station knows of it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.client: Any = None
        self.state = "out"  # in | out (not answering) | refused (another bundle)
        self.reason = "not checked yet"
        self.outstanding = self.requests = self.failures = self.times_out = 0
        self.max_batch: dict[str, int] = {}  # per model, the repository's max_batch_size (0: not batched)

    def describe(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "outstanding": self.outstanding,
                "requests": self.requests, "failures": self.failures, "taken_out": self.times_out}


class TritonPool:
    """``models``: the Triton models this station uses and the precision each must serve."""

    def __init__(self, addresses: list[str], bundle: Bundle, models: dict[str, str], timeout_s: float = 10.0,
                 check_every_s: float = 1.0) -> None:
        try:
            import tritonclient.grpc as grpc
        except ImportError:
            raise LineguardError("--models triton://… needs tritonclient: pip install 'lineguard[triton]'") from None
        self._grpc = grpc
        self.digest, self.models, self.timeout_s = bundle.content_hash(), models, timeout_s
        self.members = [Member(a) for a in addresses]
        self.lock = threading.Lock()
        self.retried = self.unreachable = 0
        for m in self.members:
            self.check(m)
        refused = [m for m in self.members if m.state == "refused"]
        if refused:
            raise LineguardError(f"triton://{refused[0].address}: {refused[0].reason}")
        for m in self.members:
            if m.state == "out":
                log.warning("triton://%s is not answering (%s): serving without it until it does", m.address, m.reason)
        self._stop = threading.Event()
        self._checker = threading.Thread(target=self._check_loop, args=(check_every_s,), name="triton-check",
                                         daemon=True)
        self._checker.start()

    # ---- membership ----------------------------------------------------------------------
    def check(self, m: Member) -> None:
        """Ask ``m`` whether it is ready and serves this bundle's models; set its state."""
        configs = {}
        try:
            if m.client is None:
                m.client = self._grpc.InferenceServerClient(m.address)
            t = min(self.timeout_s, 2.0)
            if not m.client.is_server_ready(client_timeout=t):
                raise LineguardError("the server is not ready")
            for name in self.models:
                if not m.client.is_model_ready(name, client_timeout=t):
                    raise LineguardError(f"{name} is not ready (a repository exported with --stages expert "
                                         "serves no SAM: serve --remote-stages expert)" if name in
                                         SAM_MODELS.values() else f"{name} is not ready")
                configs[name] = m.client.get_model_config(name, as_json=True, client_timeout=t)["config"]
        except Exception as e:  # any failure to answer leaves it out; a new channel next time
            self._out(m, _reason(e))
            return
        for name, cfg in configs.items():
            params = {k: v.get("string_value") for k, v in cfg.get("parameters", {}).items()}
            theirs = params.get("lineguard_bundle_hash")
            if theirs != self.digest:
                m.state, m.reason = "refused", (f"its {name} was exported from bundle {str(theirs)[:12]}, this "
                                                f"station's bundle is {self.digest[:12]}: export the repository "
                                                "from this bundle (lineguard export triton)")
                return
            if params.get("precision") != self.models[name]:
                m.state, m.reason = "refused", (f"its {name} serves the {params.get('precision')} variant, this "
                                                f"station asks for {self.models[name]}")
                return
        with self.lock:
            was = m.state
            m.max_batch = {name: int(cfg.get("max_batch_size", 0)) for name, cfg in configs.items()}
            m.state, m.reason = "in", "ready"
        if was == "out" and m.requests:
                log.warning("triton://%s answers again: taken back in", m.address)

    def _out(self, m: Member, reason: str) -> None:
        with self.lock:
            if m.state == "in":
                m.times_out += 1
                log.warning("triton://%s taken out: %s", m.address, reason)
            m.state, m.reason = "out", reason
            client, m.client = m.client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # a broken channel may fail to close; it is dropped either way
                pass

    def _check_loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            for m in self.members:
                if m.state != "in" or m.outstanding == 0:  # a busy server shows its health by answering
                    self.check(m)

    def close(self) -> None:
        self._stop.set()
        self._checker.join(5)
        for m in self.members:
            if m.client is not None:
                m.client.close()

    # ---- requests ------------------------------------------------------------------------
    def _pick(self, tried: set[str]) -> Member | None:
        with self.lock:
            live = [m for m in self.members if m.state == "in" and m.address not in tried]
            if not live:
                return None
            m = min(live, key=lambda m: (m.outstanding, m.requests))  # ties: the least used, so idle servers share
            m.outstanding += 1
            m.requests += 1
            return m

    def infer(self, model: str, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) \
            -> tuple[dict[str, np.ndarray], str]:
        """``model``'s outputs (all where ``outputs`` is None) and the address of the server that answered."""
        tried: set[str] = set()
        while True:
            m = self._pick(tried)
            if m is None:
                with self.lock:
                    self.unreachable += 1
                states = "; ".join(f"{x.address} {x.state} ({x.reason})" for x in self.members)
                raise ModelsUnreachable(f"no Triton server answered: {states}")
            if tried:
                with self.lock:
                    self.retried += 1
            tried.add(m.address)
            try:
                return self._infer_on(m, model, feeds, outputs), m.address
            except Exception as e:
                with self.lock:
                    m.failures += 1
                if not _server_fault(e):
                    raise LineguardError(f"triton://{m.address}: {_reason(e)}") from None
                self._out(m, _reason(e))
            finally:
                with self.lock:
                    m.outstanding -= 1

    def _infer_on(self, m: Member, model: str, feeds: dict[str, np.ndarray], outputs: list[str] | None) \
            -> dict[str, np.ndarray]:
        client = m.client
        if client is None:
            raise ConnectionError("taken out while the request waited")
        n = len(next(iter(feeds.values())))
        batch = m.max_batch.get(model, 0)
        step = batch or n  # a request larger than the repository's max_batch_size goes in parts
        parts = []
        for i in range(0, n, step):
            inputs = []
            for name, x in feeds.items():
                x = np.ascontiguousarray(x[i : i + step] if batch else x)
                inp = self._grpc.InferInput(name, list(x.shape), TRITON_TYPES[x.dtype])
                inp.set_data_from_numpy(x)
                inputs.append(inp)
            asked = [self._grpc.InferRequestedOutput(o) for o in outputs] if outputs else None
            r = client.infer(model, inputs, outputs=asked, client_timeout=self.timeout_s)
            names = outputs or [o.name for o in r.get_response().outputs]  # none asked: all of them
            parts.append({o: r.as_numpy(o) for o in names})
        return parts[0] if len(parts) == 1 else {o: np.concatenate([p[o] for p in parts]) for o in parts[0]}

    # ---- reports -------------------------------------------------------------------------
    def states(self) -> dict[str, Any]:
        with self.lock:
            servers = {m.address: m.describe() for m in self.members}
        return {"servers": servers, "in": sum(s["state"] == "in" for s in servers.values()),
                "retried": self.retried, "unreachable": self.unreachable}

    def statistics(self) -> dict[str, dict[str, Any]]:
        """Each answering server's cumulative figures for the expert (Triton's statistics API): requests,
        executions (batches it ran), inferences (frames), and queue and compute time in ms. The expert
        only: it is the line rate (SAM's requests are the flagged frames', counted by the station)."""
        out = {}
        for m in self.members:
            client = m.client
            if m.state != "in" or client is None:
                continue
            try:
                s = client.get_inference_statistics(EXPERT_MODEL, as_json=True, client_timeout=2.0)["model_stats"]
            except Exception as e:  # a report must not fail the station; the server shows as missing
                log.debug("statistics of %s: %s", m.address, e)
                continue
            st = s[0] if s else {}
            inf = st.get("inference_stats", {})
            ms = {k: int(inf.get(k, {}).get("ns", 0)) / 1e6 for k in ("queue", "compute_input", "compute_infer",
                                                                       "compute_output")}
            out[m.address] = {"requests": int(inf.get("success", {}).get("count", 0)),
                              "executions": int(st.get("execution_count", 0)),
                              "inferences": int(st.get("inference_count", 0)), "queue_ms": ms["queue"],
                              "compute_ms": ms["compute_input"] + ms["compute_infer"] + ms["compute_output"]}
        return out


class RemoteEngine:
    """What a stage needs of an ``Engine`` (inputs, outputs, run), answered by the pool's ``model``.
    ``inputs``/``outputs`` come from the manifest where it has them (the expert's); ``run`` without
    output names asks for all. ``served_by`` is the server that answered the last ``run`` (one
    engine per thread that runs it)."""

    provider = "triton"

    def __init__(self, pool: TritonPool, model: str, stage: dict[str, Any] | None = None) -> None:
        self.pool, self.model = pool, model
        self.path = Path(f"triton://{model}")
        stage = stage or {"inputs": [], "outputs": []}
        self.inputs = {s["name"]: IO(s["name"], s["shape"], s["dtype"]) for s in stage["inputs"]}
        self.outputs = [s["name"] for s in stage["outputs"]]
        self.served_by: str | None = None

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        r, self.served_by = self.pool.infer(self.model, feeds, outputs or self.outputs or None)
        return r


def _server_fault(e: Exception) -> bool:
    status = getattr(e, "status", None)
    code = str(status() if callable(status) else "")
    return isinstance(e, (ConnectionError, OSError)) or any(c in code for c in SERVER_FAULTS)


def _reason(e: Exception) -> str:
    msg = getattr(e, "message", None)
    text = str(msg() if callable(msg) else e) or type(e).__name__
    return text.splitlines()[0][:200]

