"""Where a session's nodes ran: ONNX Runtime's profiler names each node's provider; the note where a
GPU provider left nodes to the CPU EP."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .providers import Provider


def placement(engine: Any, run: Callable[[], Any]) -> dict[str, Any] | None:
    """Which provider ran each node: ``run`` once on a profiling twin of ``engine``'s session (ONNX
    Runtime's profiler names the provider of every node). Nodes without a CUDA kernel run on the CPU
    EP, their activations copied each way; a few shape nodes always do."""
    import tempfile
    from collections import Counter

    import onnxruntime as ort

    if not hasattr(engine, "session"):  # a native TensorRT engine: one engine, no nodes
        return None
    old = engine.session
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.enable_profiling, so.profile_file_prefix, so.log_severity_level = True, str(Path(tmp) / "ort"), 3
        opts = old.get_provider_options()
        twin = ort.InferenceSession(str(engine.path), so, providers=old.get_providers(),
                                    provider_options=[opts.get(p, {}) for p in old.get_providers()])
        engine.session = twin
        try:
            run()
        finally:
            engine.session = old
        events = json.loads(Path(twin.end_profiling()).read_text())
    ran = [e["args"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    by = Counter(a.get("provider") for a in ran)
    cpu = Counter(a.get("op_name") for a in ran if a.get("provider") == "CPUExecutionProvider")
    return {"kernels": len(ran), "by_provider": dict(by), "cpu_ops": dict(cpu.most_common())}


def on_cpu(where: dict[str, Any] | None, p: Provider) -> str | None:
    """A note where a GPU provider left nodes to the CPU EP."""
    if not where or p.device == "cpu" or not where["cpu_ops"]:
        return None
    ops = ", ".join(f"{op} ×{n}" for op, n in list(where["cpu_ops"].items())[:6])
    return f"{sum(where['cpu_ops'].values())} of {where['kernels']} kernels ran on the CPU EP: {ops}"
