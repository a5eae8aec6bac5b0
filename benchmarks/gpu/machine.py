"""The machine and the install: the GPU extras' pip command, the GPU libraries on the loader's path
(LD_LIBRARY_PATH, a re-exec), nvidia-smi, and what the run has (versions, providers, the GPU)."""

from __future__ import annotations

import glob
import os
import shlex
import site
import subprocess
import sys
from pathlib import Path
from typing import Any

from .providers import PROVIDERS, unavailable

REPO = Path(__file__).resolve().parents[2]
# onnxruntime and onnxruntime-gpu install the same module: the GPU venv gets [gpu] and never [cpu].
# TensorRT's library wheels are on NVIDIA's index (PyPI holds placeholders that fetch them from there).
INSTALL = ["--extra-index-url", "https://pypi.nvidia.com", "-e", ".[gpu,export,report]"]


def install() -> int:
    """pip-installs the GPU extras into this interpreter's environment (the repository, editable)."""
    cmd = [sys.executable, "-m", "pip", "install", *INSTALL]
    print(shlex.join(cmd), flush=True)
    return subprocess.call(cmd, cwd=REPO)


def library_dirs() -> list[str]:
    """The CUDA, cuDNN and TensorRT libraries of the pip wheels: onnxruntime-gpu's providers and the
    station's process load them by name, and nothing in a venv puts them on the loader's path."""
    dirs: list[str] = []
    for sp in site.getsitepackages():
        for pattern in ("nvidia/*/lib", "tensorrt_libs", "tensorrt*_libs"):
            dirs += [d for d in sorted(glob.glob(os.path.join(sp, pattern))) if glob.glob(os.path.join(d, "*.so*"))]
    return list(dict.fromkeys(dirs))


def with_library_path() -> None:
    """Re-executes this run with ``library_dirs()`` on LD_LIBRARY_PATH (read by the loader at start only),
    so this process and the station it starts find the GPU libraries."""
    have = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    missing = [d for d in library_dirs() if d not in have]
    if not missing or os.environ.get("LINEGUARD_GPU_CHECK_REEXEC"):
        return
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(missing + have), LINEGUARD_GPU_CHECK_REEXEC="1")
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.gpu", *sys.argv[1:]], env)


def environment(dry: bool) -> dict[str, Any]:
    """What this run has: versions, providers, the GPU. In a real run, both ONNX Runtime builds
    installed together fail the step (they shadow each other's module)."""
    from importlib import metadata

    versions = {}
    for dist in ("onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-cu13", "bitsandbytes", "torch"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    import onnxruntime as ort

    env = {"versions": versions, "ort_providers": ort.get_available_providers(), "gpu": gpu_name(),
           "library_dirs": library_dirs() if not dry else [],
           "providers_here": {k: unavailable(p) or "available" for k, p in PROVIDERS.items()}}
    if dry:
        env["install"] = f"dry run: would run `pip install {shlex.join(INSTALL)}` in a fresh venv (make gpu-check)"
        return env
    if "onnxruntime" in versions and "onnxruntime-gpu" in versions:
        raise RuntimeError("both onnxruntime and onnxruntime-gpu are installed and share one module: "
                           "use a venv without the cpu extra (make gpu-check makes .venv-gpu)")
    return env


def gpu_name() -> str | None:
    """The first GPU and its driver (nvidia-smi), or None."""
    out = nvidia_smi("--query-gpu=name,driver_version,memory.total")
    return out[0] if out else None


def nvidia_smi(query: str) -> list[str]:
    try:
        r = subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [x.strip() for x in r.stdout.splitlines() if x.strip()] if r.returncode == 0 else []


def device_memory_used_mb() -> float | None:
    """Memory in use on the first GPU (every process): the fallback where nvidia-smi cannot see the
    station's pid (a container's own pid namespace)."""
    out = nvidia_smi("--query-gpu=memory.used")
    try:
        return float(out[0]) if out else None
    except ValueError:
        return None
