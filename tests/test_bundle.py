"""Bundle loading refuses what it cannot trust, naming the file; writing is all-or-nothing."""

import json
import shutil
from pathlib import Path

import pytest

from lineguard.runtime.bundle import Bundle, BundleWriter
from lineguard.runtime.bundle.manifest import InputSpec
from lineguard.runtime.errors import BundleError


@pytest.fixture
def copy(bundle_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundle_dir, dst)
    return dst


def _edit(root: Path, fn) -> None:
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_load_verifies_and_describes(bundle_dir):
    b = Bundle.load(bundle_dir)
    spec = b.input_spec("expert")
    assert (spec.height, spec.width, spec.layout, spec.dtype, spec.color) == (128, 128, "NHWC", "uint8", "BGR")
    assert b.variant_path("expert", "fp32").is_file()
    stage = b.stage("expert")
    assert [o["name"] for o in stage["outputs"]] == ["anomaly_map", "score"]
    assert stage["outputs"][0]["shape"] == ["N", 1, 128, 128]
    assert stage["variants"]["fp32"]["parity"]["map_pearson"] >= 0.999
    assert b.thresholds == {} and b.normalization == {}
    assert "torch" in b.manifest["provenance"]["libraries"]
    assert any("random weights" in w for w in stage["warnings"])


def test_missing_file_is_named(copy):
    (copy / "expert" / "model.fp32.onnx").unlink()
    with pytest.raises(BundleError, match=r"model\.fp32\.onnx: missing"):
        Bundle.load(copy)


def test_changed_file_is_named(copy):
    f = copy / "expert" / "model.fp32.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte: only the hash can tell
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.fp32\.onnx: changed since it was written \(sha256"):
        Bundle.load(copy)


def test_unknown_format_version(copy):
    _edit(copy, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="format_version 99 is not supported"):
        Bundle.load(copy)


def test_malformed_json(copy):
    (copy / "manifest.json").write_text('{"format": "lineguard-bundle",')
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON \(line 1"):
        Bundle.load(copy)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.pop("stages"), "lacks 'stages'"),
        (lambda m: m["stages"]["expert"].pop("variants"), "stages.expert lacks 'variants'"),
        (lambda m: m["stages"]["expert"]["input_spec"].update(layout="CHW"), "input_spec.layout is 'CHW'"),
        (lambda m: m["files"]["expert/model.fp32.onnx"].pop("sha256"), "lacks its sha256"),
        (lambda m: m["stages"]["expert"]["variants"].update(int3={"file": "x.onnx"}), "unknown precision 'int3'"),
    ],
)
def test_incomplete_manifest(copy, edit, message):
    _edit(copy, edit)
    with pytest.raises(BundleError, match=message):
        Bundle.load(copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="manifest.json: missing"):
        Bundle.load(tmp_path)
    with pytest.raises(BundleError, match="no such bundle directory"):
        Bundle.load(tmp_path / "nope")


def test_interrupted_write_leaves_target_unchanged(copy):
    before = (copy / "manifest.json").read_bytes()
    with pytest.raises(RuntimeError, match="interrupted"), BundleWriter(copy, base=Bundle.load(copy)) as w:
        w.manifest["thresholds"]["image"] = 1.0
        w.path("extra.bin").write_bytes(b"x")
        w.add_file("extra.bin", role="test")
        raise RuntimeError("interrupted")
    assert (copy / "manifest.json").read_bytes() == before
    assert not (copy / "extra.bin").exists()
    assert [p.name for p in copy.parent.iterdir()] == ["b"]  # no temp dirs left behind


def test_rewriting_a_linked_file_never_touches_the_live_bundle(copy):
    # unchanged files are hard-linked into the writer's temp dir: writing one in place would
    # change the live bundle before the commit, and a failure after it would corrupt it
    rel = next(iter(Bundle.load(copy).manifest["files"]))
    before = (copy / rel).read_bytes()
    with pytest.raises(RuntimeError, match="failed later"), BundleWriter(copy, base=Bundle.load(copy)) as w:
        w.path(rel).write_bytes(b"new content")
        w.add_file(rel, role="expert")
        raise RuntimeError("failed later")
    assert (copy / rel).read_bytes() == before
    Bundle.load(copy)  # still verifies


def test_update_replaces_atomically(copy):
    with BundleWriter(copy, base=Bundle.load(copy)) as w:
        w.manifest["thresholds"]["image"] = 1.5
    b = Bundle.load(copy)
    assert b.thresholds["image"] == 1.5
    assert [p.name for p in copy.parent.iterdir()] == ["b"]


def test_input_spec_roundtrip_and_errors():
    spec = InputSpec("x", 64, 32, layout="NCHW", dtype="float32", color="RGB", normalize="runtime")
    assert InputSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(BundleError, match="input_spec lacks 'height'"):
        InputSpec.from_dict({"name": "x", "width": 3})
    with pytest.raises(BundleError, match="color is 'HSV'"):
        InputSpec.from_dict({**spec.to_dict(), "color": "HSV"})


def test_existing_returns_none_the_bundle_or_refuses_what_is_not_one(bundle_dir, tmp_path):
    import pytest as _pytest

    from lineguard.runtime.bundle import existing
    from lineguard.runtime.errors import BundleError

    assert existing(tmp_path / "none-yet") is None
    assert existing(bundle_dir).root == bundle_dir
    (tmp_path / "junk").mkdir()
    with _pytest.raises(BundleError, match="exists but is not a usable bundle .*manifest.json: missing"):
        existing(tmp_path / "junk")
