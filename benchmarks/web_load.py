"""What the web view costs the verdict path: one served station under one open-loop load, the
live page closed or open in headless Chromium, in alternating segments of one run (this machine's
timing drifts by more than the effect; alternating spreads the drift over every condition):

- ``closed``: the browser on ``about:blank`` (no page, no stream);
- ``served``: what the station serves an open page — the event stream, each new latest frame as
  JPEG, each new defect's frame and mask — fetched by a small client process at the lowest CPU
  priority, as a browser on the operator's own machine would fetch it: the station's own cost;
- ``chromium``: the live page in headless Chromium on the station's own 2 cores (rendering,
  JPEG decoding, the mask outline), the worst case.

    python -m benchmarks.web_load [--bundle B] [--images DIR] [--rate 60] [--seconds 30]
                                  [--segments 6] [--out runs/web_load]

Each condition gets ``--seconds`` of load in ``--segments`` pieces. Defaults: the demo's default
bundle (all three stages, built if missing) and its line's parts, 5 % defects. Writes
``web_load.json`` and ``web_load.png`` (latency distributions) to ``--out``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import time
from typing import Any

import zmq

from benchmarks.under_load import options, plot, pooled, resolve
from lineguard.runtime.clients.bench import Served, run_step
from lineguard.runtime.clients.loadgen import image_pools
from lineguard.runtime.ports import free_ports


def browser():  # noqa: ANN201 (selenium's driver)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=opts)


def page_like(url: str, stop: Any) -> None:
    """In its own process, at nice 19: the requests the live page makes, without the rendering."""
    import os
    import urllib.request

    os.nice(19)
    shown: dict[tuple[str, str], int] = {}
    with urllib.request.urlopen(url + "api/stream", timeout=10) as stream:
        while not stop.is_set():
            line = stream.readline()
            if not line.startswith(b"data: "):
                continue
            for cam, c in json.loads(line[6:])["cameras"].items():
                for which in ("latest", "defect"):
                    rec = c.get(which)
                    if not rec or shown.get((cam, which)) == rec["seq"] or not rec["has_image"]:
                        continue
                    shown[(cam, which)] = rec["seq"]
                    files = ["frame.jpg"] + (["mask.png"] if which == "defect" and rec["has_mask"] else [])
                    for f in files:
                        try:
                            urllib.request.urlopen(f"{url}api/cameras/{cam}/{which}/{f}?seq={rec['seq']}",
                                                   timeout=10).read()
                        except OSError:  # that frame was already replaced: the page skips it too
                            pass


def main() -> None:
    a = options(__doc__, rate=60.0, segments=6, out="runs/web_load").parse_args()
    bundle, images, out = resolve(a)
    pools = image_pools(images, seed=0)
    served = Served(str(bundle), [], http=f"127.0.0.1:{free_ports(1)[0]}")
    url = served.ready["http"]
    ctx = zmq.Context()
    names = ("closed", "served", "chromium")
    reps: dict[str, list] = {n: [] for n in names}
    lat: dict[str, list] = {n: [] for n in names}
    missed: dict[str, int] = {n: 0 for n in names}
    drv = browser()
    seg = a.seconds / a.segments
    try:
        run_step(ctx, served.ingest, served.publish, pools, a.rate, 3.0, a.defect_rate, 30.0, 99, "w-",
                 served.proc.pid, explained=True)  # warm-up, not recorded
        for k in range(a.segments):
            for name in names:
                client = None
                if name != "chromium":
                    drv.get("about:blank")
                if name == "served":
                    stop = mp.Event()
                    client = mp.Process(target=page_like, args=(url, stop), daemon=True)
                    client.start()
                elif name == "chromium":
                    drv.get(url)
                    end = time.monotonic() + 20
                    while drv.execute_script("return document.getElementById('status').textContent") != "live":
                        if time.monotonic() > end:
                            raise RuntimeError("the live page did not connect")
                        time.sleep(0.1)
                time.sleep(1.0)  # the page settles
                rep, got = run_step(ctx, served.ingest, served.publish, pools, a.rate, seg, a.defect_rate, 30.0,
                                    10 * k + len(reps[name]), f"{name}{k}-", served.proc.pid, explained=True)
                if client is not None:
                    stop.set()
                    client.join(5)
                    client.kill()
                if name == "chromium":  # every frame of the segment, as the page itself counted it
                    time.sleep(1.0)
                    seen = drv.execute_script("return window.__seen")
                    missed[name] += sum(1 for s in got if s.verdict_at is not None and s.frame_id not in seen)
                reps[name].append(rep)
                lat[name] += [1e3 * (s.verdict_at - s.sent) for s in got if s.verdict_at is not None]
                r = rep["verdict_latency_ms"]
                print(f"{k} {name:19s} p50 {r['p50']} ms  p99 {r['p99']} ms  dropped {rep['dropped']}  "
                      f"unaccounted {rep['unaccounted']}", flush=True)
        health = served.health()
    finally:
        drv.quit()
        served.stop()
        ctx.destroy(0)
    runs = {n: pooled(reps[n], lat[n]) | ({"not_shown_by_page": missed[n]} if n == "chromium" else {}) for n in names}
    base = runs["closed"]["verdict_latency_ms"]["p99"]
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "bundle": str(bundle), "images": images, "rate": a.rate,
           "seconds_per_condition": a.seconds, "segments": a.segments, "defect_rate": a.defect_rate, "runs": runs,
           "p99_served_vs_closed": round(runs["served"]["verdict_latency_ms"]["p99"] / base, 3),
           "p99_chromium_vs_closed": round(runs["chromium"]["verdict_latency_ms"]["p99"] / base, 3),
           "web_errors": (health.get("counts") or {}).get("web_errors", 0)}
    (out / "web_load.json").write_text(json.dumps(res, indent=2) + "\n")
    plot({f"page {k}": v for k, v in lat.items()}, out / "web_load.png",
         f"verdict latency at {a.rate:g} frames/s, live page closed / open")
    print(json.dumps({k: res[k] for k in ("p99_served_vs_closed", "p99_chromium_vs_closed", "web_errors")}))


if __name__ == "__main__":
    main()
