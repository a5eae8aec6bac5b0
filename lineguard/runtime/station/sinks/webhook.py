"""Webhook: an HTTP POST of each result's JSON (with its ``topic``) to a URL.

A slow or failing receiver costs its own retries (``tries``, back-off doubling from
``backoff_s``) and then a counted failure; the sink's bounded queue drops what it cannot hold.
The station's threads never wait on it.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse

from lineguard.runtime.errors import LineguardError
from lineguard.runtime.station.sinks.base import Sink, log


class WebhookSink(Sink):
    kind = "webhook"

    def __init__(self, url: str, timeout_s: float = 2.0, tries: int = 3, backoff_s: float = 0.5,
                 queue_size: int = 1000, topics: tuple[str, ...] = ("verdict", "explanation", "error")) -> None:
        u = urlparse(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise LineguardError(f"--webhook {url}: expected an http:// or https:// URL")
        super().__init__(url, queue_size)
        self.url, self.timeout_s, self.tries, self.backoff_s, self.topics = url, timeout_s, tries, backoff_s, topics

    def offer(self, topic: str, body: dict[str, Any], png: bytes | None) -> None:
        if topic in self.topics:
            super().offer(topic, body, None)  # the mask travels on ZeroMQ and MQTT, not here

    def send(self, topic: str, body: dict[str, Any], png: bytes | None) -> None:
        data = json.dumps({"topic": topic} | body).encode()
        wait = self.backoff_s
        for attempt in range(1, self.tries + 1):
            req = urllib.request.Request(self.url, data, {"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    r.read()
                self.count("sent")
                return
            except urllib.error.HTTPError as e:
                why = f"HTTP {e.code}"
                if 400 <= e.code < 500 and e.code not in (408, 429):  # the receiver refuses it: no retry helps
                    break
            except (OSError, ValueError) as e:  # refused, reset, timed out
                why = str(getattr(e, "reason", e))
            if attempt < self.tries:
                self.count("retries")
                time.sleep(wait)
                wait *= 2
        self.count("failed")
        log.warning("webhook %s: %s %s of %s not delivered (%s)", self.url, topic, body.get("seq"),
                    body.get("camera"), why)
