"""The station installs the runtime alone: importing it, and inspecting with it, must not need torch."""

import json
import subprocess
import sys


def test_import_runtime_does_not_import_torch():
    # every module of the station (pipeline, server, protocol, store, clients included) and the CLI
    code = ("import importlib, pkgutil, sys\n"
            "import lineguard.runtime as rt\n"
            "mods = [m.name for m in pkgutil.walk_packages(rt.__path__, 'lineguard.runtime.')]\n"
            "assert len(mods) > 30, mods\n"
            "for m in mods + ['lineguard.cli.main']: importlib.import_module(m)\n"
            "bad = [m for m in ('torch', 'transformers', 'segment_anything', 'optimum') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inspect_runs_with_torch_unimportable(bundle_dir, synth):
    # sys.modules[name] = None makes any import of it raise ImportError
    code = ("import sys\n"
            "for m in ('torch', 'torchvision', 'transformers', 'onnx'): sys.modules[m] = None\n"
            "from lineguard.cli.main import main\n"
            f"sys.exit(main(['inspect', {str(bundle_dir)!r}, {str(synth / 'test' / 'blob')!r}, '--json']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert len(results) == 2 and all("score" in x for x in results)


def test_explain_runs_with_torch_unimportable(tmp_path):
    pytest = __import__("pytest")
    pytest.importorskip("transformers", reason="building the test model needs the export extra")
    from lineguard.export.llm.export import export_llm
    from lineguard.export.llm.tiny import build_tiny

    bundle, _ = export_llm(build_tiny(tmp_path / "m", "llama"), tmp_path / "b", ("int4",))
    findings = {"path": "f.png", "size": [90, 90], "score": 3.0, "score_norm": 0.9, "verdict": "defect",
                "defects": [{"box": [2, 2, 20, 20], "cell": "top-left", "area_frac": 0.04, "peak": 1.2}]}
    (tmp_path / "f.json").write_text(json.dumps([findings]))
    code = ("import sys\n"
            "for m in ('torch', 'torchvision', 'transformers', 'onnx'): sys.modules[m] = None\n"
            "from lineguard.cli.main import main\n"
            f"sys.exit(main(['explain', {str(bundle)!r}, '--findings', {str(tmp_path / 'f.json')!r}, '--json',"
            " '--max-new-tokens', '6']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (e,) = json.loads(r.stdout)
    assert e["precision"] == "int4" and 1 <= e["new_tokens"] <= 6 and "consistent" in e
