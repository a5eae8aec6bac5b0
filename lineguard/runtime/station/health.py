"""What `/metrics` (Prometheus text format) and `/healthz` (JSON: stage states, counters, queue
depths) say; the web server (``station/web``) serves them beside its pages.

A collector reads the pipeline's counters at scrape time, so the stages pay one locked
increment per event and nothing per scrape.
"""

from __future__ import annotations

from typing import Any

from lineguard.runtime.station.pipeline import Pipeline
from lineguard.runtime.station.stats import BUCKETS


def _collector(p: Pipeline) -> Any:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    class Collector:
        def collect(self) -> Any:
            st = p.stats
            with st.lock:
                counts, errors, verdicts = dict(st.counts), dict(st.errors), dict(st.verdicts)
                dropped = {c: dict(v) for c, v in st.dropped.items()}
                buckets = {k: list(v) for k, v in st.buckets.items()}
                sums = dict(st.latency_sum)
                batches = list(st.batches[-1000:])
            c = CounterMetricFamily("lineguard_frames", "frames by outcome", labels=["outcome"])
            for k in ("received", "verdicts", "errors", "dropped", "explanations", "repeated_ids"):
                c.add_metric([k], counts.get(k, 0))
            yield c
            w = CounterMetricFamily("lineguard_web_errors", "web view requests that failed (the station went on)")
            w.add_metric([], counts.get("web_errors", 0))
            yield w
            v = CounterMetricFamily("lineguard_verdicts", "verdicts by class", labels=["verdict"])
            for k, n in verdicts.items():
                v.add_metric([k], n)
            yield v
            e = CounterMetricFamily("lineguard_errors", "rejected frames by reason", labels=["reason"])
            for k, n in errors.items():
                e.add_metric([k], n)
            yield e
            d = CounterMetricFamily("lineguard_dropped", "frames or results dropped, by camera and stage",
                                    labels=["camera", "stage"])
            for cam, stages in dropped.items():
                for stage, n in stages.items():
                    d.add_metric([cam, stage], n)
            yield d
            q = GaugeMetricFamily("lineguard_queue_depth", "items waiting per stage queue", labels=["queue"])
            for name, qq in (("decode", p.q_decode), ("expert", p.q_expert), ("defects", p.q_defect),
                             ("explain", p.q_llm)):
                q.add_metric([name], qq.qsize())
            yield q
            b = GaugeMetricFamily("lineguard_mean_batch", "mean expert batch over the last 1000 batches")
            b.add_metric([], sum(batches) / len(batches) if batches else 0.0)
            yield b
            h = HistogramMetricFamily("lineguard_latency_seconds", "receive → stage done", labels=["stage"])
            for stage, counts_ in buckets.items():
                cum, acc = [], 0
                for le, n in zip([*map(str, BUCKETS), "+Inf"], counts_):
                    acc += n
                    cum.append((le, acc))
                h.add_metric([stage], cum, sums.get(stage, 0.0))
            yield h
            sk = CounterMetricFamily("lineguard_sink_messages", "results offered to each line output, by outcome",
                                     labels=["sink", "outcome"])
            for name, state in p.sink_states().items():
                for outcome, n in state.items():
                    if outcome in ("offered", "sent", "dropped", "failed", "retries"):
                        sk.add_metric([name, outcome], n)
            yield sk
            if p.models is not None:
                st = p.models.states()
                up = GaugeMetricFamily("lineguard_model_server_up", "1 while a Triton server is in the pool",
                                       labels=["server"])
                req = CounterMetricFamily("lineguard_model_server_requests", "expert requests to each Triton server "
                                          "by outcome", labels=["server", "outcome"])
                for addr, m in st["servers"].items():
                    up.add_metric([addr], m["state"] == "in")
                    req.add_metric([addr, "sent"], m["requests"])
                    req.add_metric([addr, "failed"], m["failures"])
                yield up
                yield req
            prov = GaugeMetricFamily("lineguard_stage_info", "stage state and engine provider", labels=["stage", "state"])
            for stage, state in p.health.items():
                prov.add_metric([stage, state], 1)
            yield prov

    return Collector()


def registry(p: Pipeline) -> Any:
    """A Prometheus registry holding the station's collector (``generate_latest`` renders it)."""
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    reg.register(_collector(p))
    return reg


def station_health(p: Pipeline, out_queue: Any) -> dict[str, Any]:
    """``/healthz``: stage states, queue depths and the counters (and the Triton pool, where the expert
    runs on one: each server's state and Triton's own statistics)."""
    ok = all(not s.startswith("degraded") for s in p.health.values())
    models = p.models.states() | {"triton": p.models.statistics()} if p.models is not None else None
    ok = ok and (models is None or models["in"] > 0)
    return {"status": "ok" if ok else "degraded", "stages": dict(p.health),
            "queues": {"decode": p.q_decode.qsize(), "defects": p.q_defect.qsize(), "explain": p.q_llm.qsize(),
                       "publish": out_queue.qsize()},
            "sinks": p.sink_states()} | ({"models": models} if models else {}) | p.stats.snapshot()
