"""`make gpu-check`'s script in its dry run: every step on the CPU EP with tiny models, as a user runs it,
so that it works the first time it meets a GPU (benchmarks/gpu/)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the GPU check builds its bundle: it needs the export extra (torch)")

REPO = Path(__file__).resolve().parents[1]
STAGES = ("expert", "SAM encoder", "SAM decoder", "LLM prefill", "LLM decode")
GPU_PROVIDERS = ("CUDA EP", "TensorRT EP fp16", "TensorRT EP int8", "TensorRT native fp16", "TensorRT native int8")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "out"
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--dry-run", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    return r, out


@pytest.mark.slow
def test_dry_run_measures_every_stage_on_the_cpu_and_skips_the_gpu_providers(dry_run):
    r, out = dry_run
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "gpu_check.json").read_text())
    assert rep["dry_run"] and not rep["failed"]
    rows = rep["stages"]
    for stage in STAGES:
        cpu = [x for x in rows if x["stage"] == stage and x["provider"] == "CPU EP"]
        assert cpu and all(x["status"] == "ok" and x["median_ms"] > 0 and x["throughput"] > 0 for x in cpu), stage
        assert all(x["engine"] == "CPUExecutionProvider" for x in cpu)
        for prov in GPU_PROVIDERS:
            (x,) = [x for x in rows if x["stage"] == stage and x["provider"] == prov and x["size"] == cpu[0]["size"]]
            assert x["status"] == "skipped" and x["reason"].startswith("dry run: no GPU"), x
    # SAM at both sizes, from its own bundle at the second
    assert {x["size"] for x in rows if x["stage"] == "SAM encoder" and x["status"] == "ok"} == set(rep["sizes"]["sam_sizes"])
    expert = next(x for x in rows if x["stage"] == "expert" and x["status"] == "ok")
    assert expert["batch"] == 8 and expert["placement"]["by_provider"] == {"CPUExecutionProvider":
                                                                             expert["placement"]["kernels"]}
    # the steps that need CUDA say so; the install is printed, not run
    (ort,) = [x for x in rep["llm_tokens"] if x["status"] == "ok"]
    assert ort["tok_s"] > 0 and "CPUExecutionProvider" in ort["engine"]
    (nf4,) = [x for x in rep["llm_tokens"] if "NF4" in x["engine"]]
    assert nf4["status"] == "skipped" and "dry run" in nf4["reason"]
    assert "would run `pip install" in r.stderr and "pypi.nvidia.com" in r.stderr


@pytest.mark.slow
def test_dry_run_serves_all_stages_and_measures_the_station(dry_run):
    _, out = dry_run
    rep = json.loads((out / "gpu_check.json").read_text())
    mem = rep["station_memory"]
    assert mem["peak_rss_mb"] > 0 and mem["gpu_memory_mb"] is None and "dry run" in mem["gpu_memory_skipped"]
    assert mem["health"]["expert"].startswith("ok") and mem["health"]["sam"] == "ok" and mem["health"]["llm"] == "ok"
    assert mem["flagged"] > 0 and mem["explained"] > 0 and mem["unaccounted"] == 0
    served = rep["served"]
    assert served["max_sustainable_fps"] > 0 and served["unaccounted_at_max"] == 0
    assert (out / "served_all_stages" / "report.json").is_file()  # lineguard bench's own report, beside


@pytest.mark.slow
def test_dry_run_writes_the_table_and_the_plot(dry_run):
    r, out = dry_run
    md = (out / "gpu_check.md").read_text()
    assert md.strip() in r.stdout  # what it prints is what it writes
    for name in (*STAGES, *GPU_PROVIDERS, "CPU EP", "served verdicts/s", "GPU memory", "bitsandbytes NF4"):
        assert name in md, name
    assert "dry run: no GPU" in md
    assert (out / "gpu_check.png").stat().st_size > 10_000
