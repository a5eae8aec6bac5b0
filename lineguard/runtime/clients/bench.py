"""`lineguard bench`: does this bundle, on this machine, keep up with the line, at what latency?

Starts `lineguard serve` as a subprocess (or uses ``--connect``), drives it open loop at the
target rate with a mix of normal and defect frames, collects every result, and reports:
offered vs achieved verdict rate, drops and errors, verdict latency percentiles (send →
verdict), mask and explanation latency of flagged frames, queue vs compute time per stage,
mean batch size, the server's CPU and peak RSS, its engines' providers, PASS/FAIL.
``--sweep`` steps the rate up until the limit breaks: the throughput–latency curve.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from lineguard.runtime.clients.loadgen import Collector, Sample, image_pools, send_open_loop
from lineguard.runtime.errors import LineguardError
from lineguard.runtime.ports import free_ports

PCTS = (50, 90, 95, 99)


def _proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds so far, peak RSS MB) of a process, from /proc (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        hwm = next(int(x.split()[1]) for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if x.startswith("VmHWM:"))
        return cpu, hwm / 1024
    except (OSError, StopIteration, IndexError, ValueError):
        return float("nan"), float("nan")


def gpu_memory_mb(pid: int) -> float | None:
    """GPU memory the process holds (nvidia-smi), or None where there is no NVIDIA GPU or driver."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = []
    for line in out.splitlines():
        p, _, m = line.partition(",")
        try:
            if p.strip() == str(pid):
                used.append(float(m))
        except ValueError:  # "[N/A]" under MIG, vGPU or WSL: no figure rather than a crash
            continue
    return sum(used) if used else None


class Served:
    """A `lineguard serve` subprocess on free loopback ports."""

    def __init__(self, bundle: str, serve_args: list[str], stderr: Any = None,
                 new_session: bool = False, http: str | None = None) -> None:
        """``http``: HOST:PORT for the web view (else its server, with /metrics and /healthz, on a free port).
        ``stderr``: where the station's log goes; by default a temporary file, not a pipe: nobody
        reads a pipe during a run, and a station that logs enough would block on a full one."""
        if stderr is None:
            stderr = self._own_log = tempfile.NamedTemporaryFile("w+", prefix="lineguard-serve-", suffix=".log")
        p = dict(zip(("ingest", "publish", "metrics"), free_ports(3)))
        self.ingest, self.publish = f"tcp://127.0.0.1:{p['ingest']}", f"tcp://127.0.0.1:{p['publish']}"
        self.metrics = int(http.rsplit(":", 1)[1]) if http else p["metrics"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lineguard", "serve", bundle, "--ingest", self.ingest, "--publish", self.publish,
             "--http", http or f"127.0.0.1:{self.metrics}", *serve_args], stdout=subprocess.PIPE, stderr=stderr,
            text=True,
            start_new_session=new_session)  # a new session: a terminal's Ctrl-C reaches only the caller
        line = self.proc.stdout.readline()
        if not line:
            err = (self.proc.stderr.read() if self.proc.stderr else self._log_tail(stderr)).strip().splitlines()
            raise LineguardError(f"lineguard serve did not start: {err[-1] if err else 'no output'}")
        self.ready = json.loads(line)

    @staticmethod
    def _log_tail(f: Any) -> str:
        try:
            return Path(f.name).read_text()[-2000:]
        except (AttributeError, OSError):
            return ""

    def health(self) -> dict[str, Any]:
        try:
            return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/healthz", timeout=5).read())
        except OSError:
            return {}

    def stop(self, timeout: float = 120.0) -> dict[str, Any]:
        """SIGTERM (the server drains its queues), then its summary; killed if it outlasts ``timeout``."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return {"killed": True}
        finally:
            if getattr(self, "_own_log", None) is not None:
                self._own_log.close()  # a temporary file: removed
        lines = [x for x in (out or "").splitlines() if x.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


def _pcts(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in PCTS} | {"max": None}
    a = np.array(values) * 1e3
    return {f"p{p}": round(float(np.percentile(a, p)), 2) for p in PCTS} | {"max": round(float(a.max()), 2)}


def summarize(samples: list[Sample], gen: dict[str, Any], duration: float) -> dict[str, Any]:
    verdicts = [s for s in samples if s.verdict_at is not None]
    dropped = [s for s in samples if s.error == "dropped"]
    errors = [s for s in samples if s.error and s.error != "dropped"]
    lost = [s for s in samples if s.verdict_at is None and not s.error]
    span = (max(s.verdict_at for s in verdicts) - gen["started"]) if verdicts else float("nan")
    stages: dict[str, list[float]] = {k: [] for k in ("decode", "expert_queue", "expert_compute", "publish")}
    for s in verdicts:
        t = s.server_ts
        for name, a, b in (("decode", "received", "decoded"), ("expert_queue", "decoded", "expert_start"),
                           ("expert_compute", "expert_start", "expert_done"), ("publish", "expert_done", "verdict")):
            if a in t and b in t:
                stages[name].append(t[b] - t[a])
    flagged = [s for s in verdicts if s.verdict == "defect"]
    return {
        "offered_fps": gen["offered_fps"], "generated_fps": gen["generated_fps"], "frames": len(samples),
        "achieved_verdict_fps": round(len(verdicts) / span, 2) if verdicts and span > 0 else 0.0,
        "verdicts": len(verdicts), "dropped": len(dropped), "errors": len(errors), "unaccounted": len(lost),
        # a decision at the deadline instead of the model's verdict (serve --deadline-ms)
        "deadline_missed": sum(s.deadline_missed for s in samples),
        "deadline_missed_share": round(sum(s.deadline_missed for s in samples) / len(samples), 4) if samples else 0.0,
        "send_failed": gen["send_failed"], "flagged": len(flagged),
        # the verdict is the line's contract; masks and explanations are best effort and counted here
        "masks_dropped": sum(s.late_error == "dropped_defects" for s in flagged),
        "explained": sum(s.explained_at is not None for s in flagged),
        "explanations_dropped": sum(s.late_error == "dropped_explanation" for s in flagged),
        "verdict_latency_ms": _pcts([s.verdict_at - s.sent for s in verdicts]),
        "mask_latency_ms": _pcts([s.masks_at - s.sent for s in flagged if s.masks_at]),
        "explanation_latency_ms": _pcts([s.explained_at - s.sent for s in flagged if s.explained_at]),
        "stage_ms_mean": {k: round(1e3 * float(np.mean(v)), 3) if v else None for k, v in stages.items()},
        "generator_late_ms_p99": gen["late_ms_p99"],
    }


def verdict_of(r: dict[str, Any], rate: float, max_latency_ms: float) -> tuple[bool, list[str]]:
    why = []
    if r["unaccounted"]:
        why.append(f"{r['unaccounted']} frames never answered")
    if r["dropped"] or r["send_failed"]:
        why.append(f"{r['dropped']} dropped, {r['send_failed']} not accepted by the transport")
    if r["achieved_verdict_fps"] < 0.97 * rate:
        why.append(f"verdicts at {r['achieved_verdict_fps']} fps < {rate}")
    p99 = r["verdict_latency_ms"]["p99"]
    if p99 is None or p99 > max_latency_ms:
        why.append(f"p99 verdict latency {p99} ms > {max_latency_ms}")
    return not why, why


def run_step(ctx: zmq.Context, ingest: str, publish: str, pools: tuple[list, list], rate: float, duration: float,
             defect_rate: float, grace_s: float, seed: int, prefix: str, pid: int | None,
             explained: bool = False, jpeg: int | None = None) -> tuple[dict, list[Sample]]:
    """One load level. ``explained``: the server explains, so the grace period also waits for the
    flagged frames' explanations (else they would land in the next step, uncounted)."""
    col = Collector(ctx, publish)
    col.start()
    time.sleep(0.5)  # PUB/SUB: the subscription must reach the server before the first frame
    try:
        cpu0, _ = _proc_stats(pid) if pid else (float("nan"), 0)
        w0, own0 = time.time(), time.process_time()
        gen = send_open_loop(ctx, ingest, col, pools[0], pools[1], rate, duration, defect_rate, seed, prefix, jpeg)
        if gen["generated_fps"] < 0.95 * rate:
            raise LineguardError(f"the load generator reached only {gen['generated_fps']} fps of the {rate} asked on "
                                 "this machine (lower --rate or use a faster sender); the station was not measured")
        end = time.monotonic() + grace_s
        while time.monotonic() < end:
            with col.lock:
                open_ = [s for s in col.samples.values() if s.verdict_at is None and not s.error]
                pending = [s for s in col.samples.values() if s.verdict == "defect" and s.late_error is None
                           and (s.masks_at is None or (explained and s.explained_at is None))]
            if not open_ and not pending:
                break
            time.sleep(0.05)
        cpu1, rss = _proc_stats(pid) if pid else (float("nan"), float("nan"))
    finally:
        col.close()
    samples = list(col.samples.values())
    rep = summarize(samples, gen, duration)
    wall = time.time() - w0
    rep |= {"server_cpu_percent": round(100 * (cpu1 - cpu0) / wall, 1) if pid else None,
            # the sender and collector share this machine with a local server: what they cost it
            "loadgen_cpu_percent": round(100 * (time.process_time() - own0) / wall, 1),
            "explanations_pending": sum(s.verdict == "defect" and s.late_error is None and s.explained_at is None
                                        for s in samples) if explained else 0,
            "server_peak_rss_mb": round(rss, 1) if pid else None,
            "server_gpu_memory_mb": gpu_memory_mb(pid) if pid else None}
    return rep, samples


def write_outputs(out: Path, report: dict[str, Any], samples: list[Sample], steps: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(out / "samples.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame_id", "defect_sent", "sent", "late_ms", "verdict", "verdict_ms", "mask_ms", "explanation_ms",
                    "error", "late_error"])
        for s in samples:
            ms = [round(1e3 * (t - s.sent), 2) if t else "" for t in (s.verdict_at, s.masks_at, s.explained_at)]
            w.writerow([s.frame_id, int(s.defect_sent), f"{s.sent:.6f}", round(1e3 * s.late, 3), s.verdict or "",
                        *ms, s.error or "", s.late_error or ""])
    if len(steps) > 1:
        steps = sorted(steps, key=lambda r: r["offered_fps"])  # refined steps come after the first failure
        with open(out / "curve.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["offered_fps", "achieved_fps", "p50_ms", "p99_ms", "dropped", "pass"])
            for r in steps:
                w.writerow([r["offered_fps"], r["achieved_verdict_fps"], r["verdict_latency_ms"]["p50"],
                            r["verdict_latency_ms"]["p99"], r["dropped"], int(r["pass"])])
        try:
            plot_curve(steps, out / "curve.png", report.get("max_latency_ms"))
        except ImportError:
            pass  # matplotlib is the report extra; the CSV holds the same numbers


def plot_curve(steps: list[dict[str, Any]], path: Path, max_latency_ms: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["offered_fps"] for r in steps]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(x, [r["achieved_verdict_fps"] for r in steps], "o-", label="achieved")
    a.plot(x, x, "--", color="#888", label="offered")
    a.set_xlabel("offered frames/s")
    a.set_ylabel("verdicts/s")
    a.legend()
    b.plot(x, [r["verdict_latency_ms"]["p50"] for r in steps], "o-", label="p50")
    b.plot(x, [r["verdict_latency_ms"]["p99"] for r in steps], "o-", label="p99")
    if max_latency_ms:
        b.axhline(max_latency_ms, color="r", ls=":", label="limit")
    b.set_xlabel("offered frames/s")
    b.set_ylabel("send → verdict, ms")
    b.set_yscale("log")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class RatePlan:
    """The rates a sweep tries: ×``step`` from ``start`` until a rate fails (÷``step`` where ``start``
    already fails, until one holds: each step down spends one of the ``refine``), then the interval between
    the last rate that held and the first that failed halved (geometrically) ``refine`` times, so the
    maximum is found within step^(1/2^refine) (3 halvings of ×1.5: 5 %) instead of a whole step below.
    A failing rate is run once more and fails only when it fails again: one latency spike on a shared
    machine must not end a sweep. Frames left unanswered fail at once (a broken server, not a spike).
    ``step=0``: one rate, no sweep."""

    def __init__(self, start: float, step: float, max_steps: int = 12, refine: int = 3) -> None:
        self.rate, self.step, self.climbs_left, self.refine = start, step, max_steps - 1, refine
        self.passed: float | None = None  # the highest rate that held
        self.failed: float | None = None  # the lowest rate that failed (twice)
        self.retrying = False  # whether the step being run repeats a failure

    def next(self, ok: bool, unanswered: bool = False) -> float | None:
        """The rate to run after the current one gave ``ok``; None when the sweep is over."""
        if not self.step:
            return None
        if not ok and not self.retrying and not unanswered:
            self.retrying = True
            return self.rate
        self.retrying = False
        if ok:
            self.passed = self.rate if self.passed is None else max(self.passed, self.rate)
        else:
            self.failed = self.rate if self.failed is None else min(self.failed, self.rate)
        if self.failed is None:  # still climbing
            if self.climbs_left <= 0:
                return None
            self.climbs_left -= 1
            self.rate = round(self.rate * self.step, 2)
            return self.rate
        if self.refine <= 0 or unanswered:
            return None
        if self.passed is None:  # the first rate was already too high: step down (a refinement each)
            self.refine -= 1
            self.rate = round(self.rate / self.step, 2)
            return self.rate
        self.refine -= 1
        mid = round((self.passed * self.failed) ** 0.5, 2)
        if not self.passed < mid < self.failed:  # the interval is below the rates' resolution
            return None
        self.rate = mid
        return mid


def run_bench(bundle: str | None, images: str, rate: float, duration: float = 10.0, defect_rate: float = 0.05,
              max_latency_ms: float = 250.0, sweep: bool = False, connect: tuple[str, str] | None = None,
              serve_args: list[str] | None = None, out: str | None = None, grace_s: float = 30.0,
              seed: int = 0, step: float = 1.5, max_steps: int = 12, refine: int = 3,
              warmup_s: float = 2.0, jpeg: int | None = None) -> tuple[bool, dict[str, Any]]:
    pools = image_pools(images, seed=seed)
    if defect_rate > 0 and not pools[1]:
        raise LineguardError(f"--images {images}: no defect images (MVTec test/<defect> folders) for --defect-rate "
                             f"{defect_rate}; use --defect-rate 0 or an MVTec-layout folder")
    served = None if connect else Served(str(bundle), serve_args or [])
    ingest, publish = connect if connect else (served.ingest, served.publish)
    pid = served.proc.pid if served else None
    ctx = zmq.Context()
    steps, samples = [], []
    try:
        # with --connect the server's stages are unknown here: explanations are not waited for
        explains = str(((served.ready.get("health") or {}) if served else {}).get("llm", "")).startswith("ok")
        if warmup_s > 0:  # first batches, lazy allocations, caches: not the line's steady state
            run_step(ctx, ingest, publish, pools, rate, warmup_s, defect_rate, grace_s, seed + 1000, "w-",
                     pid, explained=explains, jpeg=jpeg)  # its explanations finish before the first measured step
        start = served.health() if served else {}  # Triton's counters are cumulative: the steps' share is a difference
        plan = RatePlan(rate, step if sweep else 0.0, max_steps if sweep else 1, refine)
        r_now: float | None = rate
        generator_limit = None
        while r_now is not None:
            k = len(steps)
            try:
                rep, samples = run_step(ctx, ingest, publish, pools, r_now, duration, defect_rate, grace_s, seed + k,
                                        f"s{k}-", pid, explained=explains, jpeg=jpeg)
            except LineguardError as e:  # the load generator, not the station, is the limit here
                if not (sweep and steps):
                    raise
                generator_limit = f"at {r_now} fps: {e}"
                print(generator_limit, file=sys.stderr, flush=True)
                break
            ok, why = verdict_of(rep, r_now, max_latency_ms)
            rep |= {"pass": ok, "why": why, "retry": plan.retrying, "refining": plan.failed is not None}
            steps.append(rep)
            print(_line(rep), file=sys.stderr, flush=True)
            r_now = plan.next(ok, bool(rep["unaccounted"]))
        health = served.health() if served else {}
    finally:
        summary = served.stop() if served else {}
        ctx.destroy(0)
    first = steps[0]
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "bundle": bundle, "images": images, "target_fps": rate,
              "encoding": f"jpeg q{jpeg}" if jpeg else "raw",
              "duration_s": duration, "defect_rate": defect_rate, "max_latency_ms": max_latency_ms,
              "pass": first["pass"], "why": first["why"], "result": first,
              "providers": (served.ready.get("health") if served else None), "mean_batch": health.get("mean_batch"),
              "server_summary": summary}
    if health.get("models"):
        report["triton"] = triton_figures(start.get("models", {}).get("triton", {}), health["models"]["triton"])
    if sweep:
        good = [s["offered_fps"] for s in steps if s["pass"]]
        # a sweep the load generator ended: the station held every rate tried, its maximum is higher
        report |= {"max_sustainable_fps": max(good) if good else None, "steps": steps,
                   "load_generator_limit": generator_limit}
    if out:
        write_outputs(Path(out), report, samples, steps)
    return first["pass"], report


def triton_figures(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each Triton server's share of the measured steps (from its statistics API): requests, frames,
    its mean batch, and mean queue and compute ms per request. A server shared by several stations
    counts all of them."""
    out = {}
    for addr, s in after.items():
        d = {k: v - before.get(addr, {}).get(k, 0) for k, v in s.items()}
        if d["requests"] < 0:  # restarted during the run: its counters began again
            d = dict(s)
        n = d["requests"]
        out[addr] = {"requests": n, "frames": d["inferences"],
                     "mean_batch": round(d["inferences"] / d["executions"], 2) if d["executions"] else None,
                     "queue_ms_mean": round(d["queue_ms"] / n, 2) if n else None,
                     "compute_ms_mean": round(d["compute_ms"] / n, 2) if n else None}
    return out


def _line(r: dict[str, Any]) -> str:
    lat = r["verdict_latency_ms"]
    return (f"offered {r['offered_fps']:>7} fps  verdicts {r['achieved_verdict_fps']:>7} fps  p50 {lat['p50']} ms  "
            f"p99 {lat['p99']} ms  dropped {r['dropped']}  errors {r['errors']}  unaccounted {r['unaccounted']}  "
            + (f"deadline missed {r['deadline_missed']}  " if r.get("deadline_missed") else "")
            + f"{'PASS' if r['pass'] else 'FAIL'}")


def table(report: dict[str, Any]) -> str:
    r = report["result"]
    lat, m, e = r["verdict_latency_ms"], r["mask_latency_ms"], r["explanation_latency_ms"]
    rows = [
        ("verdict", f"{r['achieved_verdict_fps']} fps of {r['offered_fps']} offered "
                    f"({r['verdicts']}/{r['frames']} frames, {r['dropped']} dropped, {r['errors']} errors, "
                    f"{r['unaccounted']} unaccounted)"),
        ("verdict latency", " ".join(f"{k} {v} ms" for k, v in lat.items())),
        ("mask latency", f"{r['flagged']} flagged, {r['masks_dropped']} masks dropped: " + " ".join(f"{k} {v}" for k, v in m.items() if k in ("p50", "p99"))),
        ("explanation latency", f"{r['explained']} explained, {r['explanations_dropped']} dropped: "
                                + " ".join(f"{k} {v}" for k, v in e.items() if k in ("p50", "p99"))),
        ("per stage (mean ms)", " ".join(f"{k} {v}" for k, v in r["stage_ms_mean"].items())),
        ("mean batch", str(report.get("mean_batch"))),
        ("server", f"CPU {r['server_cpu_percent']}% (of one core), peak RSS {r['server_peak_rss_mb']} MB"
                   + (f", GPU memory {r['server_gpu_memory_mb']} MB" if r.get("server_gpu_memory_mb") else "") + "; "
                   f"load generator CPU {r.get('loadgen_cpu_percent')}%"),
        ("engines", json.dumps(report.get("providers"))),
    ]
    for addr, t in (report.get("triton") or {}).items():
        rows.append((f"triton {addr}", f"{t['requests']} requests, {t['frames']} frames, mean batch {t['mean_batch']}, "
                                       f"queue {t['queue_ms_mean']} ms, compute {t['compute_ms_mean']} ms per request"))
    if "max_sustainable_fps" in report:
        rows.append(("max sustainable", f"{report['max_sustainable_fps']} fps (p99 ≤ {report['max_latency_ms']} ms, no drops)"))
    w = max(len(k) for k, _ in rows)
    verdict = "PASS" if report["pass"] else "FAIL: " + "; ".join(report["why"])
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows) + f"\n{'result':<{w}}  {verdict}"
