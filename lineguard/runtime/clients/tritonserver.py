"""`lineguard triton REPO`: a Triton Inference Server on a repository from `export triton`, for
development and tests.

A system ``tritonserver`` on PATH is used where there is one; else the server inside the
``nvidia-pytriton`` wheel (Triton with the Python backend, CPU-only here). That one needs its
libraries and, for the Python backend's stub, this interpreter's ``libpython`` on
``LD_LIBRARY_PATH``, and the stub built for this Python version in the backend folder: the
binaries are copied to a work folder with the right stub, as pytriton itself does. Triton's
embedded interpreter ignores PYTHONPATH for its own path, so the repository's ``model.py`` adds it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from lineguard.runtime.errors import LineguardError


def pytriton_dist() -> Path | None:
    """The ``tritonserver`` folder inside the installed nvidia-pytriton wheel (not imported: its
    Python package pins numpy < 2, the server binary needs nothing of it)."""
    for base in map(Path, {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}):
        if (base / "pytriton" / "tritonserver" / "bin" / "tritonserver").is_file():
            return base / "pytriton" / "tritonserver"
    return None


def prepare(work: Path) -> tuple[list[str], dict[str, str]]:
    """(the server command's start, its environment)."""
    env = dict(os.environ)
    paths = [str(Path(__file__).resolve().parents[3]), sysconfig.get_paths()["purelib"]]
    env["PYTHONPATH"] = os.pathsep.join(p for p in dict.fromkeys(paths + env.get("PYTHONPATH", "").split(os.pathsep))
                                        if p)
    system = shutil.which("tritonserver")
    if system:
        return [system], env
    dist = pytriton_dist()
    if dist is None:
        raise LineguardError("no Triton server here: install one (tritonserver on PATH) or the nvidia-pytriton "
                             "wheel (pip install --no-deps nvidia-pytriton)")
    stub = dist / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub"
    if not stub.is_file():
        raise LineguardError(f"nvidia-pytriton has no Python backend stub for Python {sys.version_info[:2]}")
    server = work / "tritonserver"
    if not server.exists():
        shutil.copytree(dist, server, ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy2(stub, server / "backends" / "python" / "triton_python_backend_stub")
    libs = [str(dist.parent.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs + [env.get("LD_LIBRARY_PATH", "")] if p)
    return [str(server / "bin" / "tritonserver"), "--backend-directory", str(server / "backends"),
            "--cache-directory", str(server / "caches")], env


def server_problem(work: Path | None = None) -> str | None:
    """Why no Triton server can start here (None: one can): none installed, or a binary that does not
    run on this machine (its libraries missing). Running ``--help`` loads every library the server links."""
    with tempfile.TemporaryDirectory(prefix="lineguard-triton-") as tmp:
        try:
            cmd, env = prepare(Path(work or tmp))
            r = subprocess.run([cmd[0], "--help"], env=env, capture_output=True, text=True, timeout=60)
        except (LineguardError, OSError, subprocess.TimeoutExpired) as e:
            return str(e)
    if "Usage: tritonserver" not in r.stdout + r.stderr:
        return f"{cmd[0]} does not run here: {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
    return None


class TritonServer:
    """A Triton server process on ``repo``; ``ready`` after its models have loaded."""

    def __init__(self, repo: str | Path, grpc_port: int, http_port: int, metrics_port: int,
                 log: Any = subprocess.DEVNULL, work: str | Path | None = None) -> None:
        self.repo = Path(repo).resolve()
        if not (self.repo / "lineguard.json").is_file():
            raise LineguardError(f"{self.repo}: not a repository from `lineguard export triton` (no lineguard.json)")
        self.work = Path(work or tempfile.mkdtemp(prefix="lineguard-triton-"))
        cmd, env = prepare(self.work)
        self.ports = {"grpc": grpc_port, "http": http_port, "metrics": metrics_port}
        self.proc = subprocess.Popen(
            [*cmd, "--model-repository", str(self.repo), "--grpc-port", str(grpc_port), "--http-port",
             str(http_port), "--metrics-port", str(metrics_port), "--exit-on-error", "true"],
            env=env, stdout=log, stderr=subprocess.STDOUT if log is not subprocess.DEVNULL else log)

    def wait_ready(self, timeout: float = 120.0) -> None:
        url = f"http://127.0.0.1:{self.ports['http']}/v2/health/ready"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise LineguardError(f"tritonserver exited ({self.proc.returncode}) before it was ready")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise LineguardError(f"tritonserver not ready within {timeout:.0f} s")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Triton's graceful stop: in-flight requests finish
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def run_triton(repo: str, grpc_port: int, http_port: int, metrics_port: int) -> int:
    """The command: start, say ready (one JSON line), serve until SIGTERM/SIGINT."""
    server = TritonServer(repo, grpc_port, http_port, metrics_port, log=sys.stderr)
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    try:
        server.wait_ready()
        info = json.loads((server.repo / "lineguard.json").read_text())
        print(json.dumps({"event": "ready", "grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_port}",
                          "metrics": f"127.0.0.1:{metrics_port}", "bundle_hash": info["bundle_hash"]}), flush=True)
        while not stop and server.proc.poll() is None:
            time.sleep(0.2)
    finally:
        code = server.stop()
    return 0 if stop else (code or 1)
