"""`/metrics` (Prometheus text format) and `/healthz` (JSON: stage states, counters, queue depths).

A collector reads the pipeline's counters at scrape time, so the stages pay one locked
increment per event and nothing per scrape.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
            prov = GaugeMetricFamily("lineguard_stage_info", "stage state and engine provider", labels=["stage", "state"])
            for stage, state in p.health.items():
                prov.add_metric([stage, state], 1)
            yield prov

    return Collector()


class HealthServer:
    def __init__(self, port: int, pipeline: Pipeline, out_queue: Any, host: str = "127.0.0.1") -> None:
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        registry.register(_collector(pipeline))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.startswith("/metrics"):
                    body, ctype = generate_latest(registry), "text/plain; version=0.0.4"
                elif self.path.startswith("/healthz"):
                    states = pipeline.health
                    ok = all(not s.startswith("degraded") for s in states.values())
                    body = json.dumps({"status": "ok" if ok else "degraded", "stages": states,
                                       "queues": {"decode": pipeline.q_decode.qsize(), "defects": pipeline.q_defect.qsize(),
                                                  "explain": pipeline.q_llm.qsize(), "publish": out_queue.qsize()}}
                                      | pipeline.stats.snapshot()).encode()
                    ctype = "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # scrapes are not news
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
