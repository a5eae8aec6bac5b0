"""`lineguard bench`: open-loop load against a real served bundle; every frame accounted; clear failures."""

from __future__ import annotations

import csv
import json
import shutil

import zmq
from helpers import lg

from lineguard.runtime.clients.bench import RatePlan


def _run_plan(plan: RatePlan, limit: float, spikes: set[float] = frozenset()) -> list[float]:
    """The rates a sweep runs against a station that holds up to ``limit`` (a rate in ``spikes``
    fails once, as a latency spike would)."""
    rates, r, seen = [], plan.rate, set()
    while r is not None:
        rates.append(r)
        ok = r <= limit and not (r in spikes and r not in seen)
        seen.add(r)
        r = plan.next(ok)
    return rates


def test_a_sweep_climbs_then_narrows_the_limit_down():
    rates = _run_plan(RatePlan(100, 1.5, refine=3), limit=1000)
    assert rates[:7] == [100, 150, 225, 337.5, 506.25, 759.38, 1139.07]
    assert rates[7] == 1139.07  # the first failure repeats before it counts
    refined = rates[8:]
    # three halvings; a refined rate that fails is repeated too
    assert len(set(refined)) == 3 and all(759.38 < r < 1139.07 for r in refined)
    assert max(r for r in rates if r <= 1000) >= 1000 / 1.5 ** (1 / 8)  # within 5 %, not a whole step below
    # a spike on a climbing step costs one repeat, not the sweep
    assert _run_plan(RatePlan(10, 2, refine=0), limit=100, spikes={40})[:5] == [10, 20, 40, 40, 80]
    # a start above the limit steps down until a rate holds, then narrows the limit down
    down = _run_plan(RatePlan(10, 2, refine=3), limit=3)
    assert down[:5] == [10, 10, 5, 5, 2.5] and 2.5 < down[5] < 5  # two steps down, one halving left
    assert _run_plan(RatePlan(10, 2, refine=1), limit=1) == [10, 10, 5, 5]  # none held: no maximum
    assert _run_plan(RatePlan(10, 2, refine=0), limit=1) == [10, 10]
    assert _run_plan(RatePlan(10, 0), limit=1) == [10]


def test_bench_reports_every_frame_and_writes_its_files(served_bundle, synth, tmp_path):
    out = tmp_path / "report"
    r = lg("bench", served_bundle, "--images", synth, "--rate", "5", "--duration", "2", "--defect-rate", "0.5",
           "--out", out, "--json")
    assert r.returncode in (0, 3), r.stderr  # PASS or FAIL depends on this machine's speed, not on correctness
    rep = json.loads(r.stdout)
    res = rep["result"]
    assert res["frames"] == 10 and res["unaccounted"] == 0 and res["verdicts"] + res["dropped"] + res["errors"] == 10
    assert rep["pass"] == (r.returncode == 0) and rep["pass"] == (not rep["why"])
    assert set(res["verdict_latency_ms"]) == {"p50", "p90", "p95", "p99", "max"}
    assert res["verdict_latency_ms"]["p50"] <= res["verdict_latency_ms"]["p99"] <= res["verdict_latency_ms"]["max"]
    assert res["stage_ms_mean"]["expert_compute"] > 0 and res["server_peak_rss_mb"] > 0
    assert res["loadgen_cpu_percent"] > 0
    if shutil.which("nvidia-smi") is None:  # no GPU here: no GPU figure, rather than a zero
        assert res["server_gpu_memory_mb"] is None
    assert rep["providers"]["expert"].startswith("ok") and rep["mean_batch"] >= 1
    # no LLM in this bundle: no explanation is expected, and none may be counted as dropped
    assert res["explained"] == res["explanations_dropped"] == 0 and res["masks_dropped"] == 0
    rows = list(csv.DictReader(open(out / "samples.csv")))
    assert len(rows) == 10 and sum(int(x["defect_sent"]) for x in rows) >= 1 and "late_error" in rows[0]
    assert json.loads((out / "report.json").read_text())["result"] == res


def test_an_impossible_latency_limit_fails_with_the_reason(served_bundle, synth, tmp_path):
    r = lg("bench", served_bundle, "--images", synth, "--rate", "4", "--duration", "1", "--max-latency-ms", "0.001",
           "--sweep", "--refine", "0", "--json")
    assert r.returncode == 3, r.stderr
    rep = json.loads(r.stdout)
    assert rep["pass"] is False and any("p99 verdict latency" in w for w in rep["why"])
    # the failing step ran once more (a failure must repeat), then the sweep stopped
    assert rep["max_sustainable_fps"] is None and [s["retry"] for s in rep["steps"]] == [False, True]


def test_bad_inputs_are_one_line(served_bundle, synth, tmp_path):
    (tmp_path / "empty").mkdir()
    r = lg("bench", served_bundle, "--images", tmp_path / "empty", "--rate", "5")
    assert r.returncode == 1 and "no image files" in r.stderr and r.stderr.count("\n") == 1
    r = lg("bench", served_bundle, "--images", synth / "test" / "good", "--rate", "5", "--defect-rate", "0.1")
    assert r.returncode == 1 and "no defect images" in r.stderr
    r = lg("bench", "--images", synth, "--rate", "5")
    assert r.returncode == 1 and "--connect" in r.stderr


def test_a_server_that_never_answers_gives_a_partial_report_and_exit_4(synth, tmp_path):
    ctx = zmq.Context()
    sink = ctx.socket(zmq.PULL)  # takes frames, publishes nothing
    port = sink.bind_to_random_port("tcp://127.0.0.1")
    pub = ctx.socket(zmq.PUB)
    pport = pub.bind_to_random_port("tcp://127.0.0.1")
    try:
        r = lg("bench", "--connect", f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{pport}", "--images", synth,
               "--rate", "10", "--duration", "0.5", "--grace", "1", "--json")
    finally:
        sink.close(0)
        pub.close(0)
        ctx.term()
    assert r.returncode == 4, r.stderr
    rep = json.loads(r.stdout)
    assert rep["result"]["unaccounted"] == rep["result"]["frames"] == 5 and "never answered" in rep["why"][0]
