"""One import package: the wheel holds `lineguard` and its metadata, nothing else at the top level."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import lineguard

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_lineguard_alone(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools (the build backend)")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("lineguard-*.whl")
    assert wheel.name.startswith(f"lineguard-{lineguard.__version__}-")  # the version, defined once
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"lineguard", f"lineguard-{lineguard.__version__}.dist-info"}, tops
    names = zipfile.ZipFile(wheel).namelist()
    assert "lineguard/runtime/inspection.py" in names and not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_python_m_lineguard_is_the_command():
    r = subprocess.run([sys.executable, "-m", "lineguard", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"lineguard {lineguard.__version__}"
    r = subprocess.run([sys.executable, "-m", "lineguard", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and all(c in r.stdout for c in ("serve", "inspect", "calibrate", "demo", "ddqa"))
