"""The station installs the runtime alone: importing it, and inspecting with it, must not need torch."""

import json
import subprocess
import sys

RUNTIME_MODULES = ["runtime", "runtime.cli", "runtime.bundle", "runtime.engine", "runtime.expert",
                   "runtime.inspect", "runtime.findings", "runtime.overlay", "runtime.preprocess",
                   "runtime.scoring", "runtime.imageio", "runtime.manifest"]


def test_import_runtime_does_not_import_torch():
    code = ("import importlib, sys\n"
            f"for m in {RUNTIME_MODULES!r}: importlib.import_module(m)\n"
            "bad = [m for m in ('torch', 'transformers', 'segment_anything', 'optimum') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inspect_runs_with_torch_unimportable(bundle_dir, synth):
    # sys.modules[name] = None makes any import of it raise ImportError
    code = ("import sys\n"
            "for m in ('torch', 'torchvision', 'transformers', 'onnx'): sys.modules[m] = None\n"
            "from runtime.cli import main\n"
            f"sys.exit(main(['inspect', {str(bundle_dir)!r}, {str(synth / 'test' / 'blob')!r}, '--json']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert len(results) == 2 and all("score" in x for x in results)
