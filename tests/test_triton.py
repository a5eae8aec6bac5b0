"""`export triton` and `lineguard triton`: the repository loads in a real Triton server (the one in
the nvidia-pytriton wheel, CPU-only, or a system tritonserver) and answers as the local engine does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import Station, lg, wait_for

from lineguard.runtime.bundle import Bundle
from lineguard.runtime.bundle.engine import Engine
from lineguard.runtime.clients.tritonserver import server_problem
from lineguard.runtime.imageio import list_images, read_image
from lineguard.runtime.ports import free_ports
from lineguard.runtime.stages.preprocess import to_batch
from lineguard.runtime.station.protocol import encode_frame

grpc = pytest.importorskip("tritonclient.grpc", reason="the Triton tests need tritonclient[grpc] (the dev extra)")


PROBLEM = server_problem()  # None where a Triton server can start here


@pytest.fixture(scope="module")
def repo(served_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    r = lg("export", "triton", served_bundle, "--out", out, "--max-batch", "4")
    assert r.returncode == 0, r.stderr
    return out


def test_the_repository_says_what_it_serves(repo: Path, served_bundle: Path, tmp_path: Path) -> None:
    info = json.loads((repo / "lineguard.json").read_text())
    assert info["bundle_hash"] == Bundle.load(served_bundle).content_hash()
    config = (repo / "lineguard_expert" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "max_batch_size: 4" in config and "dynamic_batching" in config
    assert info["bundle_hash"] in config
    version = repo / "lineguard_expert" / str(info["models"]["expert"]["version"])
    assert (version / "model.py").is_file() and Bundle.load(version / "bundle").manifest == Bundle.load(
        served_bundle).manifest
    # the onnxruntime backend: the graph and a config Triton's own backend reads (structure only here)
    ort = tmp_path / "ort"
    r = lg("export", "triton", served_bundle, "--out", ort, "--backend", "onnxruntime", "--gpu")
    assert r.returncode == 0, r.stderr
    config = (ort / "lineguard_expert" / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in config and "KIND_GPU" in config
    assert next((ort / "lineguard_expert").glob("*/model.onnx")).is_file()
    bad = lg("export", "triton", served_bundle, "--out", tmp_path / "x", "--precision", "int4")
    assert bad.returncode != 0 and "--precision int4" in bad.stderr.strip().splitlines()[-1]


class Triton:
    """`lineguard triton REPO` in a process group of its own (so a test can kill the server itself)."""

    def __init__(self, repo: Path, ports: tuple[int, int, int] | None = None) -> None:
        self.repo = repo
        self.ports = ports or tuple(free_ports(3))
        self.address = f"127.0.0.1:{self.ports[0]}"
        g, h, m = self.ports
        self.log = repo.parent / f"triton-{g}.log"  # a file, not a pipe: a pipe nobody reads would block the server
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "lineguard", "triton", str(repo), "--grpc-port",
                                          str(g), "--http-port", str(h), "--metrics-port", str(m)],
                                         stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        assert line, self.log.read_text()[-3000:]
        self.ready = json.loads(line)
        assert self.ready["event"] == "ready"

    def kill(self) -> None:
        """SIGKILL to the wrapper and the server: a crash, not a graceful stop."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.communicate(timeout=60)

    def stats(self) -> dict:
        client = grpc.InferenceServerClient(self.address)
        try:
            return client.get_inference_statistics("lineguard_expert", as_json=True)["model_stats"][0]
        finally:
            client.close()


needs_server = pytest.mark.skipif(PROBLEM is not None, reason=f"no Triton server can start here ({PROBLEM}): pip "
                                  "install --no-deps nvidia-pytriton (make test does) or put tritonserver on PATH")


@needs_server
def test_triton_answers_as_the_local_engine(repo: Path, served_bundle: Path, synth: Path) -> None:
    server = Triton(repo)  # `lineguard triton` said ready, naming the repository's bundle
    try:
        assert server.ready["bundle_hash"] == json.loads((repo / "lineguard.json").read_text())["bundle_hash"]
        bundle = Bundle.load(served_bundle)
        engine = Engine(bundle.variant_path("expert", "fp32"))
        spec = bundle.input_spec("expert")
        frames = [read_image(p) for p in list_images(synth / "test", recursive=True)[:3]]
        rng = np.random.default_rng(0)
        batches = [to_batch(frames, spec), rng.integers(0, 256, to_batch(frames, spec).shape).astype(np.uint8)]
        client = grpc.InferenceServerClient(server.address)
        for x in batches:  # real parts, then random pixels
            inp = grpc.InferInput(spec.name, list(x.shape), "UINT8" if x.dtype == np.uint8 else "FP32")
            inp.set_data_from_numpy(x)
            got = client.infer("lineguard_expert", [inp])
            want = engine.run({spec.name: x})
            for name, w in want.items():
                np.testing.assert_allclose(got.as_numpy(name).reshape(w.shape), w, atol=1e-5, rtol=0)
    finally:
        server.stop()
    assert server.proc.returncode == 0
    assert "Traceback" not in server.log.read_text(), server.log.read_text()[-2000:]


# ---- stations on Triton (serve --models triton://…) -------------------------------------------------------------

@pytest.fixture(scope="module")
def triton(repo: Path) -> Triton:
    if PROBLEM is not None:
        pytest.skip(f"no Triton server can start here: {PROBLEM}")
    t = Triton(repo)
    yield t
    t.stop()


def _frames(synth: Path) -> list[np.ndarray]:
    return [read_image(p) for p in list_images(synth / "test", recursive=True)]


def _local_scores(bundle: Path, frames: list[np.ndarray]) -> list[float]:
    from lineguard.runtime.stages.expert import Expert

    return [r.score for r in Expert(Bundle.load(bundle))(frames)]


def _health(st: Station) -> dict:
    return json.loads(urllib.request.urlopen(st.http + "healthz", timeout=10).read())


@needs_server
def test_two_stations_share_one_triton_which_batches_across_them(triton: Triton, served_bundle: Path, synth: Path,
                                                                 tmp_path: Path) -> None:
    frames = _frames(synth)
    want = _local_scores(served_bundle, frames)
    before = triton.stats()
    # one frame per request, two requests in flight per station: what Triton batches is theirs together
    args = ("--models", f"triton://{triton.address}", "--max-batch", "1", "--expert-workers", "2")
    stations = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        stations.append(Station(served_bundle, tmp_path / name, *args))
    try:
        rounds = 4
        for st, cam in zip(stations, ("camA", "camB")):
            for k in range(rounds):
                for i, img in enumerate(frames):
                    st.send(encode_frame(f"{cam}-{k}-{i}", cam, image=img))
        n = rounds * len(frames)
        for st, cam in zip(stations, ("camA", "camB")):
            got = [b for t, b, _ in st.collect(lambda g: sum(t == "verdict" and "update" not in b for t, b, _ in g)
                                               >= n, 120) if t == "verdict" and "update" not in b]
            assert len(got) == n, f"{cam}: {len(got)} of {n} verdicts"
            for b in got:
                i = int(b["frame_id"].rsplit("-", 1)[1])
                assert b["served_by"] == triton.address
                assert b["score"] == pytest.approx(want[i], rel=1e-5, abs=1e-5), b["frame_id"]
            health = _health(st)
            assert health["models"]["in"] == 1 and health["models"]["servers"][triton.address]["requests"] == n
        after = triton.stats()
        # (Triton's JSON leaves out counters that are still 0)
        assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 2 * n
        batched = [b for b in after["batch_stats"] if int(b["batch_size"]) > 1]
        assert batched, f"Triton never batched two requests: {after['batch_stats']}"
        assert int(after["execution_count"]) - int(before.get("execution_count", 0)) < 2 * n
    finally:
        codes = [st.stop()[0] for st in stations]
    assert codes == [0, 0]


@needs_server
def test_a_failed_triton_is_taken_out_retried_elsewhere_and_taken_back_in(repo: Path, served_bundle: Path,
                                                                           synth: Path, tmp_path: Path) -> None:
    frames = _frames(synth)
    one, two = Triton(repo), Triton(repo)
    st = Station(served_bundle, tmp_path, "--models", f"triton://{one.address},{two.address}", "--max-batch", "1",
                 "--expert-workers", "2", "--models-timeout", "5", "--deadline-ms", "3000")
    results: list[tuple[str, dict, bytes | None]] = []
    sent = 0

    def send(n: int, fps: float = 20.0) -> None:
        nonlocal sent
        for _ in range(n):
            st.send(encode_frame(f"f{sent}", "camA", image=frames[sent % len(frames)]))
            sent += 1
            time.sleep(1 / fps)

    def answered() -> int:
        results.extend(st.collect(lambda g: False, 0.3))  # what came in the last 0.3 s
        return len({b["seq"] for t, b, _ in results if t in ("verdict", "error")})

    def server(addr: str) -> dict:
        return _health(st)["models"]["servers"][addr]

    try:
        send(20)
        wait_for(lambda: answered() >= sent, 60, "the first 20 frames")
        assert {b.get("served_by") for t, b, _ in results if t == "verdict"} == {one.address, two.address}
        one.kill()  # mid-stream: requests in flight on it, and the next ones sent to it, go to the other
        send(30)
        wait_for(lambda: answered() >= sent, 60, "the frames sent while one server was dead")
        assert server(one.address)["state"] == "out"
        restarted = Triton(repo, one.ports)  # on the same ports: the station finds it again by itself
        wait_for(lambda: server(one.address)["state"] == "in", 30, "the restarted server taken back in")
        mark = len(results)
        send(20)
        wait_for(lambda: answered() >= sent, 60, "the frames after the restart")
        later = {b.get("served_by") for t, b, _ in results[mark:] if t == "verdict"}
        assert one.address in later, later
        health = _health(st)
        # a failed request is retried on the other server: every frame got its verdict, none an error
        verdicts = [b for t, b, _ in results if t == "verdict" and "update" not in b]
        assert len(verdicts) == sent and not [b for t, b, _ in results if t == "error"]
        assert health["models"]["retried"] == health["models"]["servers"][one.address]["failures"]
        assert health["models"]["servers"][one.address]["taken_out"] == 1
        # no server left: each frame gets an error at once and the fail-safe at its deadline (never lost,
        # never hanging), and the station says it is degraded
        restarted.kill()
        two.kill()
        wait_for(lambda: _health(st)["models"]["in"] == 0, 30, "both servers out")
        mark = len(results)
        send(3)
        wait_for(lambda: answered() and sum(t == "verdict" for t, _, _ in results[mark:]) >= 3, 30,
                 "the fail-safe verdicts")
        errors = [b for t, b, _ in results[mark:] if t == "error"]
        assert len(errors) == 3 and {b["code"] for b in errors} == {"models_unreachable"}
        assert "no Triton server answered" in errors[0]["reason"]
        failsafe = [b for t, b, _ in results[mark:] if t == "verdict"]
        assert {b["seq"] for b in failsafe} == {b["seq"] for b in errors}
        assert {(b["verdict"], b["reason"]) for b in failsafe} == {("defect", "deadline")}
        assert _health(st)["status"] == "degraded"
    finally:
        code, summary = st.stop()
        for t in (one, two):
            t.stop()
    assert code == 0 and summary["counts"]["received"] == sent


@needs_server
def test_a_station_is_refused_a_repository_of_another_bundle(triton: Triton, bundle_dir: Path) -> None:
    # bundle_dir is served_bundle before calibration: other files, another hash
    r = lg("serve", bundle_dir, "--models", f"triton://{triton.address}")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert f"triton://{triton.address}" in last and "exported from bundle" in last, last


def test_bad_models_arguments_are_refused_in_one_line(served_bundle: Path) -> None:
    for spec, why in (("http://h:1", "triton://HOST:PORT"), ("triton://h", "not HOST:PORT"),
                      ("triton://h:1,h:1", "named twice")):
        r = lg("serve", served_bundle, "--models", spec)
        assert r.returncode != 0 and why in r.stderr.strip().splitlines()[-1], r.stderr


@needs_server
def test_sam_on_triton_gives_the_local_stations_masks(full_bundle: Path, synth: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    r = lg("export", "triton", full_bundle, "--out", repo)
    assert r.returncode == 0, r.stderr
    models = json.loads((repo / "lineguard.json").read_text())["models"]
    assert {m["name"] for m in models.values()} == {"lineguard_expert", "lineguard_sam_encoder", "lineguard_sam_decoder"}
    assert "max_batch_size: 0" in (repo / "lineguard_sam_decoder" / "config.pbtxt").read_text()
    server = Triton(repo)
    frames = [read_image(p) for p in list_images(synth / "test", recursive=True)]
    runs = {}
    try:
        for name, extra in (("local", ()), ("triton", ("--models", f"triton://{server.address}"))):
            (tmp_path / name).mkdir()
            st = Station(full_bundle, tmp_path / name, "--no-explain", *extra)
            try:
                assert st.ready["health"]["sam"] == ("ok (triton)" if extra else "ok")
                for i, img in enumerate(frames):
                    st.send(encode_frame(f"f{i}", "camA", image=img))
                got = st.collect(lambda g: sum(t == "verdict" and "update" not in b for t, b, _ in g) >= len(frames)
                                 and sum(b.get("update") == "masks" for t, b, _ in g) >= sum(
                                     b.get("verdict") == "defect" and "update" not in b for t, b, _ in g), 120)
                runs[name] = {b["frame_id"]: (b, png) for t, b, png in got if b.get("update") == "masks"}
            finally:
                st.stop()
    finally:
        server.stop()
    assert runs["local"] and runs["local"].keys() == runs["triton"].keys()
    for fid, (local, png) in runs["local"].items():
        remote, rpng = runs["triton"][fid]
        assert [d["mask_source"] for d in remote["defects"]] == [d["mask_source"] for d in local["defects"]]
        assert "sam" in {d["mask_source"] for d in local["defects"]}
        a, b = (cv2.imdecode(np.frombuffer(x, np.uint8), cv2.IMREAD_GRAYSCALE) > 0 for x in (png, rpng))
        assert (a & b).sum() / max(1, (a | b).sum()) > 0.99, fid  # ONNX Runtime in both: the same masks


@needs_server
def test_bench_on_a_triton_station_reports_tritons_queue_and_compute(triton: Triton, served_bundle: Path,
                                                                     synth: Path, tmp_path: Path) -> None:
    r = lg("bench", served_bundle, "--images", synth, "--rate", "5", "--duration", "2", "--warmup", "1",
           "--serve-args", f"--models triton://{triton.address}", "--out", tmp_path, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    t = report["triton"][triton.address]
    assert report["result"]["unaccounted"] == 0 and t["frames"] >= report["result"]["verdicts"]
    assert t["requests"] > 0 and t["compute_ms_mean"] > 0 and t["queue_ms_mean"] >= 0 and t["mean_batch"] >= 1
    assert json.loads((tmp_path / "report.json").read_text())["triton"] == report["triton"]
