"""The run: every step in order (the environment, the builds, each stage on each provider, LLM tokens/s,
the station's memory and served rate), then the report's fields and files."""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

from .bundles import DRY, REAL, Built, Sizes, build_steps
from .llm_tokens import LLM_NEW_TOKENS, nf4_tokens, ort_int4_tokens
from .machine import environment
from .providers import PROVIDERS, Provider, skip_reason
from .report import write
from .stage_rows import expert_row, llm_rows, sam_rows
from .station import served_rate, station_memory
from .steps import Check, Skip, one_line

BUDGET_S = 480  # the goal for one run on a fresh GPU machine, the install apart


def stage_steps(b: Built, sizes: Sizes, provs: list[Provider], a: argparse.Namespace,
                rows: list[dict[str, Any]], state: dict[str, Any]) -> list[tuple[str, Callable[[], Any]]]:
    """One step per stage group and provider; each adds its rows (measured, skipped or failed)."""
    reps = 5 if a.dry_run else a.repeats
    new_tokens = 16 if a.dry_run else LLM_NEW_TOKENS

    def frames() -> list[Any]:
        if "frames" not in state:
            from lineguard.runtime.imageio import list_images, read_image

            paths = list_images(b.data / "test", recursive=True)
            state["frames"] = [read_image(paths[i * len(paths) // 8]) for i in range(8)]
        return state["frames"]

    def group(kind: str, size: int | None, p: Provider) -> Callable[[], Any]:
        names = {"expert": ["expert"], "sam": ["SAM encoder", "SAM decoder"], "llm": ["LLM prefill", "LLM decode"]}
        base = {"size": size, "provider": p.label, "provider_key": p.key}

        def run() -> None:
            why = skip_reason(p, a.dry_run)
            try:
                if why:
                    raise Skip(why)
                try:
                    if kind == "expert":
                        got = [{"stage": "expert"} | expert_row(b.bundle, frames(), p, reps)]
                    elif kind == "sam":
                        got = sam_rows(b.sam_bundles[size], size, frames()[0], p, reps)
                    else:
                        got = llm_rows(b.bundle, p, reps, new_tokens)
                finally:
                    free_gpu()
                rows.extend(base | {"status": "ok"} | r for r in got)
            except Exception as e:
                status = "skipped" if isinstance(e, Skip) else "failed"
                rows.extend(base | {"stage": n, "status": status, "reason": str(e) if status == "skipped" else
                                    one_line(e)} for n in names[kind])
                raise
        return run

    out = []
    for p in provs:
        out.append((f"expert on {p.label}", group("expert", 256, p)))
        out += [(f"SAM {s} px on {p.label}", group("sam", s, p)) for s in sizes.sam_sizes]
        out.append((f"LLM on {p.label}", group("llm", None, p)))
    return out


def free_gpu() -> None:
    """Sessions and engines of a measured provider go before the next: their GPU memory would count
    against the next one and against the station's."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def run_check(a: argparse.Namespace) -> int:
    from lineguard.progress import bar

    t0 = time.perf_counter()
    sizes = DRY if a.dry_run else REAL
    keys = (["cpu"] if a.dry_run else []) + [k for k in a.providers.split(",") if k]  # the dry run: the CPU EP
    provs = [PROVIDERS[k] for k in dict.fromkeys(keys)]
    serve_dev = "cpu" if a.dry_run else a.serve_device
    serve_p = PROVIDERS[{"cpu": "cpu", "cuda": "cuda", "tensorrt": "trt-fp16"}[serve_dev]]
    ort_p = PROVIDERS["cuda"] if serve_p.device == "tensorrt" else serve_p  # the LLM never runs on TensorRT
    serve_args = ["--device", serve_dev]
    new_tokens = 16 if a.dry_run else LLM_NEW_TOKENS
    built, build = build_steps(a.work or a.out / ("work-dry" if a.dry_run else "work"), sizes)
    rows: list[dict[str, Any]] = []
    llm: list[dict[str, Any]] = []
    stages = stage_steps(built, sizes, provs, a, rows, {})

    def ready(p: Provider) -> None:
        why = skip_reason(p, a.dry_run)
        if why:
            raise Skip(why)

    def llm_step(engine: str, fn: Callable[[], dict[str, Any]]) -> Callable[[], None]:
        def run() -> None:
            try:
                llm.append({"status": "ok"} | fn())
            except Exception as e:
                skipped = isinstance(e, Skip)
                llm.append({"engine": engine, "status": "skipped" if skipped else "failed",
                            "reason": str(e) if skipped else one_line(e)})
                raise
        return run

    def ort_int4() -> dict[str, Any]:
        ready(ort_p)
        try:
            return ort_int4_tokens(built.bundle, built.llm, ort_p, new_tokens)
        finally:
            free_gpu()

    def nf4() -> dict[str, Any]:
        try:
            return nf4_tokens(built.llm, new_tokens, a.dry_run)
        finally:
            free_gpu()

    def memory() -> dict[str, Any]:
        ready(serve_p)
        return station_memory(built.bundle, built.data, serve_args, a.dry_run, a.out / "station_memory.log")

    def served() -> dict[str, Any]:
        ready(serve_p)
        # the sweep starts at --start of the expert's in-process frames/s on the serving provider (else on
        # the first provider measured)
        ok = [r for r in rows if r["stage"] == "expert" and r["status"] == "ok"]
        fps = next((r["throughput"] for r in ok if r["provider_key"] == serve_p.key), ok[0]["throughput"] if ok else 10.0)
        return served_rate(built, sizes, serve_args, round(max(1.0, a.start * fps), 2), a)

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("environment", lambda: environment(a.dry_run)), *build, *stages,
        (f"LLM tokens/s: ORT INT4 on {ort_p.label}", llm_step(f"ORT INT4 ({ort_p.label})", ort_int4)),
        ("LLM tokens/s: bitsandbytes NF4", llm_step("bitsandbytes NF4", nf4)),
        ("station memory, all stages", memory), ("served verdicts/s, all stages", served)]
    with bar(range(len(steps)), "gpu check", "step") as pbar:
        check = Check(pbar)
        results = {name: check.run(name, fn) for name, fn in steps}
    stage_names = {name for name, _ in stages}
    for st in check.steps:  # their rows are in the stage table; the steps table leaves out the skipped ones
        st["kind"] = "stage" if st["step"] in stage_names else "step"
    env = results["environment"] or {"versions": {}}
    if a.dry_run:
        print(env.get("install", ""), file=sys.stderr)
    failed = [s["step"] for s in check.steps if s["status"] == "failed"]
    mode = "dry run on the CPU EP, tiny models" if a.dry_run else \
        f"{sizes.backbone} PatchCore, SAM {sizes.sam_arch} at {'/'.join(map(str, sizes.sam_sizes))} px, {sizes.llm} INT4"
    rep = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "mode": mode, "dry_run": a.dry_run, "sizes": sizes.__dict__,
           "command": shlex.join(["python", "-m", "benchmarks.gpu", *sys.argv[1:]]), "environment": env,
           "serve_args": serve_args, "defect_rate": a.defect_rate, "max_latency_ms": a.max_latency_ms,
           "stages": rows, "llm_tokens": llm, "llm_new_tokens": new_tokens,
           "station_memory": results["station memory, all stages"], "served": results["served verdicts/s, all stages"],
           "steps": check.steps, "failed": failed,
           "seconds": round(time.perf_counter() - t0, 1)}
    write(rep, a.out)
    if not a.dry_run and rep["seconds"] > BUDGET_S:
        print(f"the check took {rep['seconds']:.0f} s, over its {BUDGET_S} s goal: the steps' seconds say where "
              "(a rerun reuses the bundles and the TensorRT engines)", file=sys.stderr)
    return 1 if failed else 0
