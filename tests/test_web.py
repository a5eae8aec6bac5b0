"""The station's web view, end to end: `serve --http` as a subprocess, frames from the real camera
client, the pages driven in a real headless Chromium (Debian's `chromium` + `chromedriver`,
through Selenium). Screenshots go to the test's output folder."""

import json
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import Station, lg, wait_for

from lineguard.runtime.ports import free_ports

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def get(url: str, token: str | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def camera(st: Station, source: Path, name: str, fps: float, n: int) -> dict:
    """`lineguard camera`, the real client, sending ``n`` frames of a folder."""
    r = subprocess.run([sys.executable, "-m", "lineguard", "camera", "--source", str(source), "--connect", st.ingest,
                        "--name", name, "--fps", str(fps), "--max-frames", str(n)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("no chromium/chromedriver on PATH: apt-get install chromium chromium-driver (.ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the dev extra's selenium drives the browser")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def classed_bundle(full_bundle: Path, synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three-stage bundle with a defect classifier (types on the pages)."""
    b = tmp_path_factory.mktemp("web") / "bundle"
    shutil.copytree(full_bundle, b)
    r = lg("calibrate", b, "--dataset", synth, "--classes-only")
    assert r.returncode == 0, r.stderr
    return b


@pytest.fixture(scope="module")
def station(classed_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("station")
    st = Station(classed_bundle, tmp, "--artifacts", str(tmp / "artifacts"), http=True)
    yield st
    st.stop()




def shot(browser, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(out / f"{name}.png"))


def test_live_page_follows_the_line(station: Station, browser, synth: Path, tmp_path: Path) -> None:
    browser.get(station.http)
    wait_for(lambda: browser.execute_script("return document.getElementById('status').textContent") == "live",
             what="the live stream to connect")
    frames = sum(1 for p in (synth / "test").rglob("*.png"))
    sent = camera(station, synth / "test", "camA", fps=4, n=frames)
    assert sent["sent"] == frames
    msgs = station.collect(lambda g: sum(t == "verdict" and "update" not in b for t, b, _ in g) >= frames
                           and sum(t == "explanation" for t, _, _ in g) >= sum(
                               t == "verdict" and b.get("verdict") == "defect" and "update" not in b for t, b, _ in g))
    now = time.time()
    verdicts = [(b, now) for t, b, _ in msgs if t == "verdict" and "update" not in b]
    assert len(verdicts) == frames
    seen = wait_for(lambda: (s := browser.execute_script("return window.__seen")) and len(s) >= frames and s,
                    what="every verdict on the page")
    for b, _ in verdicts:  # shown within a second of its publication (the station's own clock: same machine)
        assert b["frame_id"] in seen
        assert seen[b["frame_id"]] / 1e3 - b["ts"]["verdict"] < 1.0, b["frame_id"]

    flagged = [b for b, _ in verdicts if b["verdict"] == "defect"]
    assert flagged, "the generated test parts include defects"

    def counter(name: str) -> str:
        return browser.execute_script(
            f"return document.querySelector('#cam-camA [data-counter={name}]')?.textContent")
    wait_for(lambda: counter("frames") == str(frames), what="the frame counter")
    assert counter("defects") == str(len(flagged))
    assert counter("errors") == "0"
    last = flagged[-1]
    text = next(b["explanation"]["text"] for t, b, _ in msgs if t == "explanation" and b["seq"] == last["seq"])
    wait_for(lambda: text in browser.execute_script(
        "return document.querySelector('#cam-camA .explanation')?.textContent || ''"), what="the explanation")
    # the mask outline is drawn on the last defect's frame: its opaque red pixels
    red = wait_for(lambda: browser.execute_script("""
        const c = document.querySelectorAll('#cam-camA canvas')[1];
        if (!c.width) return 0;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] === 255 && d[i + 1] === 40 && d[i + 2] === 40) n++;
        return n;"""), what="the mask outline")
    assert red > 0
    shot(browser, tmp_path, "live")


def test_history_filters_and_frame_page(station: Station, browser, synth: Path, tmp_path: Path) -> None:
    camera(station, synth / "test" / "good", "camB", fps=10, n=3)
    wait_for(lambda: len(rows(station, "camera = 'camB'")) == 3, what="camB's rows")
    all_rows = rows(station, "1=1")
    for query, where in (("verdict=defect", "status = 'verdict' AND verdict = 'defect'"),
                         ("camera=camB", "camera = 'camB'"),
                         ("camera=camA&verdict=good", "camera = 'camA' AND verdict = 'good'")):
        browser.get(f"{station.http}history?{query}")
        want = [r["seq"] for r in rows(station, where)]
        got = wait_for(lambda: browser.execute_script(
            "return [...document.querySelectorAll('#results tbody tr')].map(r => +r.dataset.seq)"),
            what=f"history rows for {query}")
        assert got == sorted(want, reverse=True), query
    # a defect type from the classifier: the rows whose findings name it
    types = {d.get("class") for r in all_rows if r["findings"] for d in json.loads(r["findings"]).get("defects", [])}
    kind = sorted(t for t in types if t)[0]
    browser.get(f"{station.http}history?defect_type={kind}")
    got = wait_for(lambda: browser.execute_script(
        "return [...document.querySelectorAll('#results tbody tr')].map(r => +r.dataset.seq)"), what="typed rows")
    want = [r["seq"] for r in all_rows if r["findings"] and any(
        d.get("class") == kind for d in json.loads(r["findings"]).get("defects", []))]
    assert got == sorted(want, reverse=True)
    shot(browser, tmp_path, "history")
    # a frame page opens from the history, with its image, findings and timings
    browser.find_element("css selector", "#results tbody tr td a").click()
    wait_for(lambda: "/frames/" in browser.current_url, what="the frame page")
    first = max(want)
    title = wait_for(lambda: browser.execute_script("return document.getElementById('title').textContent"),
                     what="the frame's title")
    assert f"seq {first}" in title
    wait_for(lambda: browser.execute_script("return document.getElementById('image').width > 0"), what="its image")
    assert browser.execute_script("return document.querySelectorAll('#findings tbody tr').length") >= 1
    assert browser.execute_script("return document.querySelectorAll('#timing tbody tr').length") >= 4
    shot(browser, tmp_path, "frame")
    browser.get(f"{station.http}bundle")
    wait_for(lambda: browser.execute_script("return document.querySelectorAll('#stages tbody tr').length") >= 3,
             what="the bundle's stages")
    shot(browser, tmp_path, "bundle")


def rows(st: Station, where: str) -> list[dict]:
    db = sqlite3.connect(f"file:{st.db}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(f"SELECT * FROM results WHERE {where} ORDER BY seq")]
    finally:
        db.close()


def test_api_answers_and_refuses(station: Station, synth: Path) -> None:
    camera(station, synth / "test" / "good", "camC", fps=20, n=2)
    wait_for(lambda: len(rows(station, "camera = 'camC'")) == 2, what="camC's rows")
    base = station.http
    code, body, _ = get(base + "api/results?camera=camC&limit=1")
    page = json.loads(body)
    assert code == 200 and len(page["results"]) == 1 and page["next_before"] is not None
    code, body, _ = get(base + f"api/results?camera=camC&before={page['next_before']}")
    assert [r["camera"] for r in json.loads(body)["results"]] == ["camC"]
    for bad, word in (("verdict=bad", "verdict"), ("limit=0", "limit"), ("since=yesterday", "since"),
                      ("colour=red", "colour"), ("ungrounded=maybe", "ungrounded"), ("before=x", "before")):
        code, body, _ = get(base + "api/results?" + bad)
        assert code == 400 and word in json.loads(body)["error"], bad
    code, body, _ = get(base + "api/frames/no-such-frame")
    assert code == 404 and "no-such-frame" in json.loads(body)["error"]
    code, body, headers = get(base + "api/results.csv?camera=camC")
    lines = body.decode().strip().splitlines()
    assert code == 200 and headers["content-type"].startswith("text/csv") and len(lines) == 3
    assert lines[0].startswith("seq,frame_id,camera")
    fid = json.loads(get(base + "api/results?camera=camC&limit=1")[1])["results"][0]["frame_id"]
    rec = json.loads(get(base + f"api/frames/{fid}")[1])
    assert rec["frame_id"] == fid and rec["camera"] == "camC" and "images" in rec
    for path, kind in (("metrics", "text/plain"), ("healthz", "application/json"), ("api/bundle", "application/json"),
                       ("", "text/html"), ("history", "text/html"), (f"frames/{fid}", "text/html")):
        code, _, headers = get(base + path)
        assert code == 200 and headers["content-type"].startswith(kind), path
    assert b"lineguard_web_errors_total 0.0" in get(base + "metrics")[1]
    health = json.loads(get(base + "healthz")[1])
    assert health["cameras"]["camC"]["frames"] == 2  # per-camera counters, as the live page shows them


def test_off_loopback_needs_a_token(classed_bundle: Path, browser, tmp_path: Path) -> None:
    port, ing, pub = free_ports(3)
    common = [sys.executable, "-m", "lineguard", "serve", str(classed_bundle), "--ingest", f"tcp://127.0.0.1:{ing}",
              "--publish", f"tcp://127.0.0.1:{pub}", "--no-explain"]
    r = subprocess.run([*common, "--http", f"0.0.0.0:{port}"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--http-token" in r.stderr.strip().splitlines()[-1]
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    proc = subprocess.Popen([*common, "--http", f"0.0.0.0:{port}", "--http-token-file", str(token_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        base = f"http://127.0.0.1:{port}/"
        assert ready["http"] == base
        for path in ("", "api/results", "healthz", "metrics", "static/live.js"):
            assert get(base + path)[0] == 401, path
            assert get(base + path, "wrong")[0] == 401, path
        assert get(base + "healthz", "s3cret-token")[0] == 200
        browser.get(base + "bundle")
        assert "needs its token" in browser.find_element("tag name", "body").text
        browser.get(base + "bundle?token=s3cret-token")  # sets the cookie the other pages then use
        wait_for(lambda: browser.execute_script("return document.querySelectorAll('#stages tbody tr').length") >= 1,
                 what="the bundle page with the token")
        browser.get(base + "history")
        wait_for(lambda: browser.execute_script("return document.getElementById('error').textContent"),
                 what="history without a store")
        assert "--db" in browser.execute_script("return document.getElementById('error').textContent")
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_live_feed_folds_what_the_station_published() -> None:
    """The live state from notes alone: the last defect outlives newer good frames and collects its
    masks and explanation; errors of a frame whose verdict is out do not enter the strip twice."""
    import numpy as np

    from lineguard.runtime.station.web.feed import STRIP, LiveFeed

    feed = LiveFeed()
    img = np.zeros((8, 8, 3), np.uint8)
    t0 = 1000.0

    def verdict(seq: int, v: str) -> dict:
        return {"seq": seq, "frame_id": f"c-{seq}", "camera": "c", "verdict": v, "score": 1.0 if v == "defect" else 0.1,
                "ts": {"received": t0 + seq, "verdict": t0 + seq + 0.02}}

    feed.frame("c", 1, img, True)
    feed.note("verdict", verdict(1, "defect"), None)
    feed.frame("c", 2, img, False)
    feed.note("verdict", verdict(2, "good"), None)
    feed.note("verdict", verdict(1, "defect") | {"update": "masks", "defects": [{"cell": "center"}]}, b"png")
    feed.note("explanation", {"seq": 1, "camera": "c", "explanation": {"text": "a hole"}}, None)
    feed.note("error", {"seq": 1, "camera": "c", "frame_id": "c-1", "code": "dropped_explanation",
                        "verdict_published": True}, None)
    feed.note("error", {"seq": 3, "camera": "c", "frame_id": "c-3", "code": "corrupt_image"}, None)
    feed.tick(now=t0 + 5)
    snap = feed.snapshot(now=t0 + 5)["cameras"]["c"]
    assert snap["latest"]["seq"] == 2 and snap["latest"]["has_image"]
    assert snap["defect"]["seq"] == 1 and snap["defect"]["has_mask"] and snap["defect"]["has_image"]
    assert snap["defect"]["explanation"]["text"] == "a hole" and snap["defect"]["defects"] == [{"cell": "center"}]
    assert [(s["seq"], s["verdict"]) for s in snap["strip"]] == [(1, "defect"), (2, "good"), (3, "error")]
    assert snap["window"]["verdicts"] == 2 and snap["window"]["p50_ms"] == 20.0
    assert feed.shown("c", "defect").encoded()[:2] == b"\xff\xd8"  # a JPEG, made when asked
    feed.tick(now=t0 + 120)  # a minute later the window is empty, the frames stay
    assert feed.snapshot(now=t0 + 120)["cameras"]["c"]["window"]["verdicts"] == 0
    for seq in range(10, 10 + 2 * STRIP):
        feed.note("verdict", verdict(seq, "good"), None)
    feed.tick(now=t0 + 130)
    assert len(feed.snapshot()["cameras"]["c"]["strip"]) == STRIP
